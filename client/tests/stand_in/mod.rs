//! A stand-in broker for the client's tests: it plays scripted
//! `Subscribe` streams, answers `Ack` and `Reject` as told (at once, late,
//! or with a refusal), records every call it gets (and the end of every stream it
//! served), and reports a subscription's ack deadline. It lets a test
//! choose what today's broker cannot show: ack_ids, a stream that ends
//! with OK, refused or slow acks.
//!
//! Shared by `subscriber_wire.rs` and `cli.rs`; each uses part of it.
#![allow(dead_code, unreachable_pub)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::{self, BoxStream, StreamExt as _};
use tidings_client::Client;
use tidings_client::v1::admin_service_server::{AdminService, AdminServiceServer};
use tidings_client::v1::subscriber_service_server::{SubscriberService, SubscriberServiceServer};
use tidings_client::v1::{
    AckRequest, AckResponse, CreateSubscriptionRequest, CreateSubscriptionResponse,
    CreateTopicRequest, CreateTopicResponse, DeleteSubscriptionRequest, DeleteSubscriptionResponse,
    DeleteTopicRequest, DeleteTopicResponse, GetSubscriptionRequest, GetSubscriptionResponse,
    GetTopicRequest, GetTopicResponse, ListSubscriptionsRequest, ListSubscriptionsResponse,
    ListTopicsRequest, ListTopicsResponse, ModifyAckDeadlineRequest, ModifyAckDeadlineResponse,
    NackRequest, NackResponse, ReceivedMessage, RejectRequest, RejectResponse, SubscribeRequest,
    SubscribeResponse, Subscription, UpdateSubscriptionRequest, UpdateSubscriptionResponse,
    UpdateTopicRequest, UpdateTopicResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A call the stand-in received.
#[derive(Debug, Clone)]
pub(crate) enum Call {
    Subscribe(SubscribeRequest),
    Ack(AckRequest),
    Reject(RejectRequest),
    Nack(NackRequest),
    Extend(ModifyAckDeadlineRequest),
    /// The `n`-th stream served (from 1) ended: the client left, or the
    /// script ended it.
    StreamEnded(u32),
}

/// A settlement call: its kind and the deliveries it names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Named {
    pub(crate) kind: &'static str,
    pub(crate) offsets: Vec<u64>,
    pub(crate) ack_ids: Vec<String>,
}

impl Named {
    pub(crate) fn new(kind: &'static str, offsets: &[u64], ack_ids: &[&str]) -> Self {
        Self {
            kind,
            offsets: offsets.to_vec(),
            ack_ids: ack_ids.iter().map(|id| (*id).to_owned()).collect(),
        }
    }
}

impl Call {
    /// What a settlement call names; `None` for `Subscribe`.
    pub(crate) fn named(&self) -> Option<Named> {
        let (kind, offsets, ack_ids) = match self {
            Self::Subscribe(_) | Self::StreamEnded(_) => return None,
            Self::Ack(r) => ("ack", &r.offsets, &r.ack_ids),
            Self::Reject(r) => ("reject", &r.offsets, &r.ack_ids),
            Self::Nack(r) => ("nack", &r.offsets, &r.ack_ids),
            Self::Extend(r) => ("extend", &r.offsets, &r.ack_ids),
        };
        Some(Named {
            kind,
            offsets: offsets.clone(),
            ack_ids: ack_ids.clone(),
        })
    }

    /// Whether this is a settlement of `kind` naming `ack_id`.
    pub(crate) fn names(&self, kind: &str, ack_id: &str) -> bool {
        self.named()
            .is_some_and(|n| n.kind == kind && n.ack_ids.iter().any(|id| id == ack_id))
    }
}

/// The settlement calls among `calls`, in order.
pub(crate) fn settlements(calls: &[Call]) -> Vec<Named> {
    calls.iter().filter_map(Call::named).collect()
}

/// What a `Subscribe` call answers: a stream of frames, or a refusal.
pub(crate) type Opened = Result<BoxStream<'static, Result<SubscribeResponse, Status>>, Status>;

/// Decides the answer to the `n`-th `Subscribe` call (from 1).
pub(crate) type Script = Box<dyn Fn(&SubscribeRequest, u32) -> Opened + Send + Sync>;

/// How the stand-in answers the `n`-th `Ack` call (from 1), and the
/// `n`-th `Reject` call (counted apart): after how long, and with what.
pub(crate) type AckScript = Box<dyn Fn(u32) -> (Duration, Result<(), Status>) + Send + Sync>;

/// Answers every `Ack` and `Reject` at once with OK.
pub(crate) fn acks_ok() -> AckScript {
    Box::new(|_| (Duration::ZERO, Ok(())))
}

/// Refuses every `Ack` and `Reject` at once with `status`.
pub(crate) fn acks_refused(status: Status) -> AckScript {
    Box::new(move |_| (Duration::ZERO, Err(status.clone())))
}

/// The stand-in broker: `Subscribe` follows the script, `Ack` and
/// `Reject` the ack script, other settlements are recorded and answered OK,
/// `GetSubscription` reports the ack deadline.
struct StandIn {
    calls_tx: mpsc::UnboundedSender<Call>,
    script: Script,
    acks: AckScript,
    opened: AtomicU32,
    acked: AtomicU32,
    rejected: AtomicU32,
    ack_deadline_seconds: u32,
}

/// A served stream that records its end when dropped.
struct Tracked {
    inner: BoxStream<'static, Result<SubscribeResponse, Status>>,
    n: u32,
    calls_tx: mpsc::UnboundedSender<Call>,
}

impl Stream for Tracked {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.calls_tx.send(Call::StreamEnded(self.n));
    }
}

impl StandIn {
    fn record(&self, call: Call) {
        let _ = self.calls_tx.send(call);
    }

    /// Answers the `n`-th call of a kind as the ack script says, after
    /// its delay (a slow broker: the client's request timeout may give up
    /// first).
    async fn answer_as_scripted(&self, n: u32) -> Result<(), Status> {
        let (delay, answer) = (self.acks)(n);
        tokio::time::sleep(delay).await;
        answer
    }
}

#[tonic::async_trait]
impl SubscriberService for StandIn {
    type SubscribeStream = BoxStream<'static, Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        // Numbered before recorded: a test that waits for this call to be
        // recorded, then makes another, knows the other is numbered after.
        let n = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        self.record(Call::Subscribe(request.clone()));
        let calls_tx = self.calls_tx.clone();
        (self.script)(&request, n)
            .map(|inner| Response::new(Tracked { inner, n, calls_tx }.boxed()))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        // Numbered before recorded: a test that waits for this call to be
        // recorded, then makes another, knows the other is numbered after.
        let n = self.acked.fetch_add(1, Ordering::SeqCst) + 1;
        self.record(Call::Ack(request.into_inner()));
        self.answer_as_scripted(n)
            .await
            .map(|()| Response::new(AckResponse {}))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        self.record(Call::Nack(request.into_inner()));
        Ok(Response::new(NackResponse {}))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<ModifyAckDeadlineRequest>,
    ) -> Result<Response<ModifyAckDeadlineResponse>, Status> {
        self.record(Call::Extend(request.into_inner()));
        Ok(Response::new(ModifyAckDeadlineResponse {}))
    }

    async fn read_topic(
        &self,
        _: Request<tidings_client::v1::ReadTopicRequest>,
    ) -> Result<Response<tidings_client::v1::ReadTopicResponse>, Status> {
        Err(Status::unimplemented("the stand-in reads no topic"))
    }

    async fn seek(
        &self,
        _: Request<tidings_client::v1::SeekRequest>,
    ) -> Result<Response<tidings_client::v1::SeekResponse>, Status> {
        Err(Status::unimplemented("the stand-in does not seek"))
    }

    async fn pull(
        &self,
        _: Request<tidings_client::v1::PullRequest>,
    ) -> Result<Response<tidings_client::v1::PullResponse>, Status> {
        Err(Status::unimplemented("the stand-in does not pull"))
    }

    async fn reject(
        &self,
        request: Request<RejectRequest>,
    ) -> Result<Response<RejectResponse>, Status> {
        // Numbered before recorded: a test that waits for this call to be
        // recorded, then makes another, knows the other is numbered after.
        let n = self.rejected.fetch_add(1, Ordering::SeqCst) + 1;
        self.record(Call::Reject(request.into_inner()));
        self.answer_as_scripted(n)
            .await
            .map(|()| Response::new(RejectResponse {}))
    }
}

/// Only `GetSubscription`, which `subscribe()` asks for the ack deadline.
#[tonic::async_trait]
impl AdminService for StandIn {
    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<GetSubscriptionResponse>, Status> {
        let subscription = Subscription {
            name: request.into_inner().name,
            topic: "t".to_owned(),
            ack_deadline_seconds: self.ack_deadline_seconds,
            ..Default::default()
        };
        Ok(Response::new(GetSubscriptionResponse {
            subscription: Some(subscription),
        }))
    }

    async fn create_topic(
        &self,
        _: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn update_topic(
        &self,
        _: Request<UpdateTopicRequest>,
    ) -> Result<Response<UpdateTopicResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn get_topic(
        &self,
        _: Request<GetTopicRequest>,
    ) -> Result<Response<GetTopicResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn create_subscription(
        &self,
        _: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<CreateSubscriptionResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn update_subscription(
        &self,
        _: Request<UpdateSubscriptionRequest>,
    ) -> Result<Response<UpdateSubscriptionResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn redrive(
        &self,
        _: Request<tidings_client::v1::RedriveRequest>,
    ) -> Result<Response<tidings_client::v1::RedriveResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn list_subscriptions(
        &self,
        _: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn delete_subscription(
        &self,
        _: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
}

/// Serves a stand-in on a free port; returns a client of it and the calls
/// it receives.
pub(crate) async fn stand_in(
    ack_deadline_seconds: u32,
    script: impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Call>)> {
    stand_in_with(ack_deadline_seconds, script, acks_ok()).await
}

/// As [`stand_in`], answering `Ack` calls as `acks` says.
pub(crate) async fn stand_in_with(
    ack_deadline_seconds: u32,
    script: impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static,
    acks: AckScript,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Call>)> {
    let (url, calls_rx) = serve(ack_deadline_seconds, script, acks).await?;
    Ok((Client::connect(url).await?, calls_rx))
}

/// Serves a stand-in on a free port; returns its URL and the calls it
/// receives.
pub(crate) async fn serve(
    ack_deadline_seconds: u32,
    script: impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static,
    acks: AckScript,
) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Call>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let stand_in = Arc::new(StandIn {
        calls_tx,
        script: Box::new(script),
        acks,
        opened: AtomicU32::new(0),
        acked: AtomicU32::new(0),
        rejected: AtomicU32::new(0),
        ack_deadline_seconds,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubscriberServiceServer::from_arc(Arc::clone(&stand_in)))
            .add_service(AdminServiceServer::from_arc(stand_in))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Ok((url, calls_rx))
}

/// A message at `offset` named `ack_id` (empty: none).
pub(crate) fn message(offset: u64, ack_id: &str) -> ReceivedMessage {
    ReceivedMessage {
        offset,
        payload: format!("m{offset}").into(),
        delivery_attempt: 1,
        ack_id: ack_id.to_owned(),
        ..Default::default()
    }
}

pub(crate) fn frame(messages: Vec<ReceivedMessage>) -> Result<SubscribeResponse, Status> {
    Ok(SubscribeResponse { messages })
}

/// Sends `messages` in one frame, then stays open until the client leaves.
pub(crate) fn stay_open(messages: Vec<ReceivedMessage>) -> Opened {
    Ok(stream::iter([frame(messages)])
        .chain(stream::pending())
        .boxed())
}

/// Sends `messages` in one frame, then ends the stream with OK.
pub(crate) fn end_with_ok(messages: Vec<ReceivedMessage>) -> Opened {
    Ok(stream::iter([frame(messages)]).boxed())
}

/// Sends `messages` in one frame, then ends the stream once `cue` is
/// notified: with OK, or with the status of `end`. (A stream that breaks
/// takes its unread deliveries along, so a test reads them first.)
pub(crate) fn end_on_cue(
    messages: Vec<ReceivedMessage>,
    cue: &Arc<Notify>,
    end: Result<(), Status>,
) -> Opened {
    let cue = Arc::clone(cue);
    let end = stream::once(async move {
        cue.notified().await;
        end.err()
    })
    .filter_map(|status| async move { status.map(Err) });
    Ok(stream::iter([frame(messages)]).chain(end).boxed())
}
