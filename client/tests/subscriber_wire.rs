//! The `Subscriber` against a stand-in broker that plays scripted
//! `Subscribe` streams and records every call it gets: what goes on the
//! wire. Settlements name a delivery by its ack_id, or by its offset when
//! the broker gave none; leases are extended on a timer; a stream that
//! ends early with OK is reopened without the topic, so a deleted
//! subscription ends the subscriber with NOT_FOUND instead of being
//! created again.
//!
//! The stand-in lets a test choose what today's broker cannot show:
//! ack_ids, a stream that ends with OK. The subscriber against the real
//! broker is tested in `tests/tests/client_subscriber.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::stream::{self, BoxStream, StreamExt as _};
use tidings_client::v1::admin_service_server::{AdminService, AdminServiceServer};
use tidings_client::v1::subscriber_service_server::{SubscriberService, SubscriberServiceServer};
use tidings_client::v1::{
    AckRequest, AckResponse, CreateSubscriptionRequest, CreateSubscriptionResponse,
    CreateTopicRequest, CreateTopicResponse, DeleteSubscriptionRequest, DeleteSubscriptionResponse,
    DeleteTopicRequest, DeleteTopicResponse, GetSubscriptionRequest, GetSubscriptionResponse,
    GetTopicRequest, GetTopicResponse, ListSubscriptionsRequest, ListSubscriptionsResponse,
    ListTopicsRequest, ListTopicsResponse, ModifyAckDeadlineRequest, ModifyAckDeadlineResponse,
    NackRequest, NackResponse, ReceivedMessage, SubscribeRequest, SubscribeResponse, Subscription,
    UpdateSubscriptionRequest, UpdateSubscriptionResponse,
};
use tidings_client::{Client, Delivery, Subscriber};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// How long a test waits for an event before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// An ack deadline no test outlives: no automatic extension is sent.
const LONG_DEADLINE: u32 = 600;

/// Awaits `future` under [`EVENT_TIMEOUT`].
async fn within<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(EVENT_TIMEOUT, future)
        .await
        .map_err(|_| anyhow::anyhow!("nothing happened within {EVENT_TIMEOUT:?}"))
}

/// A call the stand-in received.
#[derive(Debug, Clone)]
enum Call {
    Subscribe(SubscribeRequest),
    Ack(AckRequest),
    Nack(NackRequest),
    Extend(ModifyAckDeadlineRequest),
}

/// A settlement call: its kind and the deliveries it names.
#[derive(Debug, PartialEq, Eq)]
struct Named {
    kind: &'static str,
    offsets: Vec<u64>,
    ack_ids: Vec<String>,
}

impl Named {
    fn new(kind: &'static str, offsets: &[u64], ack_ids: &[&str]) -> Self {
        Self {
            kind,
            offsets: offsets.to_vec(),
            ack_ids: ack_ids.iter().map(|id| (*id).to_owned()).collect(),
        }
    }
}

impl Call {
    /// What a settlement call names; `None` for `Subscribe`.
    fn named(&self) -> Option<Named> {
        let (kind, offsets, ack_ids) = match self {
            Self::Subscribe(_) => return None,
            Self::Ack(r) => ("ack", &r.offsets, &r.ack_ids),
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
    fn names(&self, kind: &str, ack_id: &str) -> bool {
        self.named()
            .is_some_and(|n| n.kind == kind && n.ack_ids.iter().any(|id| id == ack_id))
    }
}

/// The settlement calls among `calls`, in order.
fn settlements(calls: &[Call]) -> Vec<Named> {
    calls.iter().filter_map(Call::named).collect()
}

/// What a `Subscribe` call answers: a stream of frames, or a refusal.
type Opened = Result<BoxStream<'static, Result<SubscribeResponse, Status>>, Status>;

/// Decides the answer to the `n`-th `Subscribe` call (from 1).
type Script = Box<dyn Fn(&SubscribeRequest, u32) -> Opened + Send + Sync>;

/// The stand-in broker: `Subscribe` follows the script, settlements are
/// recorded and answered OK, `GetSubscription` reports the ack deadline.
struct StandIn {
    calls_tx: mpsc::UnboundedSender<Call>,
    script: Script,
    opened: AtomicU32,
    ack_deadline_seconds: u32,
}

impl StandIn {
    fn record(&self, call: Call) {
        let _ = self.calls_tx.send(call);
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
        self.record(Call::Subscribe(request.clone()));
        let n = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        (self.script)(&request, n).map(Response::new)
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.record(Call::Ack(request.into_inner()));
        Ok(Response::new(AckResponse {}))
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
async fn stand_in(
    ack_deadline_seconds: u32,
    script: impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Call>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let stand_in = Arc::new(StandIn {
        calls_tx,
        script: Box::new(script),
        opened: AtomicU32::new(0),
        ack_deadline_seconds,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubscriberServiceServer::from_arc(Arc::clone(&stand_in)))
            .add_service(AdminServiceServer::from_arc(stand_in))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Ok((Client::connect(url).await?, calls_rx))
}

/// A message at `offset` named `ack_id` (empty: none).
fn message(offset: u64, ack_id: &str) -> ReceivedMessage {
    ReceivedMessage {
        offset,
        payload: format!("m{offset}").into(),
        delivery_attempt: 1,
        ack_id: ack_id.to_owned(),
        ..Default::default()
    }
}

fn frame(messages: Vec<ReceivedMessage>) -> Result<SubscribeResponse, Status> {
    Ok(SubscribeResponse { messages })
}

/// Sends `messages` in one frame, then stays open until the client leaves.
fn stay_open(messages: Vec<ReceivedMessage>) -> Opened {
    Ok(stream::iter([frame(messages)])
        .chain(stream::pending())
        .boxed())
}

/// Sends `messages` in one frame, then ends the stream with OK.
fn end_with_ok(messages: Vec<ReceivedMessage>) -> Opened {
    Ok(stream::iter([frame(messages)]).boxed())
}

/// Sends `messages` in one frame, then ends the stream once `cue` is
/// notified: with OK, or with the status of `end`. (A stream that breaks
/// takes its unread deliveries along, so a test reads them first.)
fn end_on_cue(
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

/// The next delivery, under [`EVENT_TIMEOUT`].
async fn next(subscriber: &mut Subscriber) -> anyhow::Result<Delivery> {
    match within(subscriber.next()).await? {
        Some(delivery) => Ok(delivery?),
        None => anyhow::bail!("the subscriber's stream ended"),
    }
}

/// Every call received so far.
fn drain(calls_rx: &mut mpsc::UnboundedReceiver<Call>) -> Vec<Call> {
    std::iter::from_fn(|| calls_rx.try_recv().ok()).collect()
}

/// Receives calls until one satisfies `wanted`; returns them all, that one
/// last.
async fn wait_for_call(
    calls_rx: &mut mpsc::UnboundedReceiver<Call>,
    wanted: impl Fn(&Call) -> bool,
) -> anyhow::Result<Vec<Call>> {
    let mut calls = Vec::new();
    within(async {
        while let Some(call) = calls_rx.recv().await {
            let done = wanted(&call);
            calls.push(call);
            if done {
                return Ok(());
            }
        }
        anyhow::bail!("the stand-in stopped")
    })
    .await
    .with_context(|| format!("waiting for a call; got {calls:?}"))??;
    Ok(calls)
}

/// Delivers offsets 0, 1 and 2 named `ack_ids`, acks the first, nacks the
/// second and extends the third; returns the calls made until the
/// subscriber closed.
async fn ack_nack_extend(ack_ids: [&'static str; 3]) -> anyhow::Result<Vec<Call>> {
    let messages: Vec<ReceivedMessage> = (0..3).map(|i| message(i, ack_ids[i as usize])).collect();
    let (client, mut calls_rx) =
        stand_in(LONG_DEADLINE, move |_, _| stay_open(messages.clone())).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    let third = next(&mut subscriber).await?;
    for (delivery, (offset, ack_id)) in [&first, &second, &third]
        .into_iter()
        .zip((0..).zip(ack_ids))
    {
        assert_eq!((delivery.offset(), delivery.ack_id()), (offset, ack_id));
    }
    first.ack();
    second.nack();
    third.extend();
    // close() waits until every queued settlement was answered.
    within(subscriber.close()).await??;
    drop(third);
    Ok(drain(&mut calls_rx))
}

#[tokio::test(flavor = "multi_thread")]
async fn settlements_carry_the_ack_ids_and_no_offsets() -> anyhow::Result<()> {
    let calls = ack_nack_extend(["ack-a", "ack-b", "ack-c"]).await?;
    assert_eq!(
        settlements(&calls),
        [
            Named::new("ack", &[], &["ack-a"]),
            Named::new("nack", &[], &["ack-b"]),
            Named::new("extend", &[], &["ack-c"]),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ack_ids_settlements_carry_offsets() -> anyhow::Result<()> {
    let calls = ack_nack_extend(["", "", ""]).await?;
    assert_eq!(
        settlements(&calls),
        [
            Named::new("ack", &[0], &[]),
            Named::new("nack", &[1], &[]),
            Named::new("extend", &[2], &[]),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn held_deliveries_are_extended_on_a_timer_under_their_ack_id() -> anyhow::Result<()> {
    // A 1 s deadline: an extension every third of a second. Only that they
    // come is checked, not when: a slow machine sends fewer, later.
    let (client, mut calls_rx) = stand_in(1, |_, _| stay_open(vec![message(0, "held")])).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let held = next(&mut subscriber).await?;
    for _ in 0..3 {
        let calls = wait_for_call(&mut calls_rx, |c| c.names("extend", "held")).await?;
        let Some(Call::Extend(extension)) = calls.last() else {
            unreachable!("wait_for_call ends on an extension");
        };
        assert_eq!(extension.ack_deadline_seconds, 1);
        assert!(extension.offsets.is_empty(), "{extension:?}");
    }
    held.ack();
    within(subscriber.close()).await??;
    Ok(())
}

/// After a reconnect the stale delivery of an offset and the fresh one are
/// both held: the fresh lease is extended under the fresh ack_id, the
/// stale delivery neither nacks nor extends, and its ack goes out under
/// its own ack_id.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_and_a_fresh_delivery_of_one_offset_each_use_their_own_ack_id() -> anyhow::Result<()>
{
    let cue = Arc::new(Notify::new());
    let break_cue = Arc::clone(&cue);
    let script = move |_: &SubscribeRequest, n| match n {
        1 => end_on_cue(
            vec![message(5, "old-5"), message(6, "old-6")],
            &break_cue,
            Err(Status::unavailable("restarting")),
        ),
        _ => stay_open(vec![message(5, "new-5"), message(6, "new-6")]),
    };
    // A 1 s deadline: the fresh leases are extended every third of a second.
    let (client, mut calls_rx) = stand_in(1, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    let stale_5 = next(&mut subscriber).await?;
    let stale_6 = next(&mut subscriber).await?;
    cue.notify_one();
    let fresh_5 = next(&mut subscriber).await?;
    let fresh_6 = next(&mut subscriber).await?;
    assert_eq!(
        [stale_5.ack_id(), fresh_5.ack_id()],
        ["old-5", "new-5"],
        "the same offset, two deliveries"
    );

    // Rounds go one at a time: from the first one that extends a fresh
    // lease on, every call was made after the reconnect.
    let before = wait_for_call(&mut calls_rx, |c| c.names("extend", "new-5")).await?;
    let opened = before
        .iter()
        .filter(|c| matches!(c, Call::Subscribe(r) if r.subscription == "s"))
        .count();
    assert_eq!(opened, 2, "opened, then reopened once");
    let mut after = before.last().cloned().into_iter().collect::<Vec<_>>();
    stale_5.extend();
    stale_5.nack();
    stale_6.ack();
    after.extend(wait_for_call(&mut calls_rx, |c| c.names("ack", "old-6")).await?);
    after.extend(wait_for_call(&mut calls_rx, |c| c.names("extend", "new-6")).await?);
    fresh_5.ack();
    fresh_6.ack();
    within(subscriber.close()).await??;
    after.extend(drain(&mut calls_rx));

    let named = settlements(&after);
    for call in &named {
        assert!(call.offsets.is_empty(), "{call:?}");
        assert!(!call.ack_ids.iter().any(|id| id == "old-5"), "{call:?}");
        if call.kind == "extend" {
            assert!(!call.ack_ids.iter().any(|id| id == "old-6"), "{call:?}");
        }
    }
    let mut acked: Vec<&str> = named
        .iter()
        .filter(|call| call.kind == "ack")
        .flat_map(|call| call.ack_ids.iter().map(String::as_str))
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, ["new-5", "new-6", "old-6"]);
    Ok(())
}

/// The script of a subscription deleted under its first stream (on `cue`)
/// by a broker that then ends the stream with OK instead of NOT_FOUND:
/// reopening without a topic is NOT_FOUND, while a `Subscribe` carrying
/// the topic would create the subscription again and replay the topic.
fn deleted_under_the_first_stream(
    cue: Arc<Notify>,
) -> impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static {
    move |request, n| {
        let topic = vec![message(0, "a0"), message(1, "a1")];
        if n == 1 {
            end_on_cue(topic, &cue, Ok(()))
        } else if request.topic.is_empty() {
            Err(Status::not_found("subscription \"s\" does not exist"))
        } else {
            stay_open(topic)
        }
    }
}

/// Reads a subscription deleted under its first stream; checks it ends
/// with NOT_FOUND, once, and was created by the first `Subscribe` only.
async fn read_a_deleted_subscription(max_messages: Option<u32>) -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let script = deleted_under_the_first_stream(Arc::clone(&cue));
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut builder = client
        .subscriber("s")
        .topic("t")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    if let Some(max) = max_messages {
        builder = builder.max_messages(max);
    }
    let mut subscriber = builder.subscribe().await?;
    for offset in 0..2 {
        let delivery = next(&mut subscriber).await?;
        assert_eq!(delivery.offset(), offset);
        delivery.ack();
    }
    cue.notify_one();
    let err = match within(subscriber.next()).await? {
        Some(Err(err)) => err,
        other => anyhow::bail!("expected NOT_FOUND, got {other:?}"),
    };
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    within(subscriber.close()).await??;

    let creating: Vec<SubscribeRequest> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(request) if !request.topic.is_empty() => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(creating.len(), 1, "only the first open names the topic");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_subscription_ends_with_not_found_and_is_not_created_again() -> anyhow::Result<()>
{
    read_a_deleted_subscription(None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_max_messages_a_deleted_subscription_ends_with_not_found_too() -> anyhow::Result<()> {
    read_a_deleted_subscription(Some(10)).await
}

/// A stream that ends with OK before `max_messages` were delivered (a
/// proxy cut it, or a broker lost its final status) is not the end: the
/// subscriber reopens it, without the topic, for the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ended_early_with_ok_is_reopened_for_the_rest() -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let first_cue = Arc::clone(&cue);
    let script = move |request: &SubscribeRequest, n| match (n, request.max_messages) {
        (1, 2) => end_on_cue(vec![message(0, "a0")], &first_cue, Ok(())),
        (_, 1) => end_with_ok(vec![message(1, "a1")]),
        _ => Err(Status::invalid_argument(format!("unexpected {request:?}"))),
    };
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .max_messages(2)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    assert_eq!(first.offset(), 0);
    first.ack();
    cue.notify_one();
    let second = next(&mut subscriber).await?;
    assert_eq!(second.offset(), 1);
    second.ack();
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    within(subscriber.close()).await??;

    let opens: Vec<(String, u32)> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(r) => Some((r.topic, r.max_messages)),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [("t".to_owned(), 2), (String::new(), 1)]);
    Ok(())
}

/// `max_messages` counts what the application got: deliveries still
/// buffered when a stream breaks go back with it, so the reopened stream
/// asks for them again.
#[tokio::test(flavor = "multi_thread")]
async fn max_messages_counts_what_was_handed_out_across_a_break() -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let break_cue = Arc::clone(&cue);
    let script = move |request: &SubscribeRequest, n| match (n, request.max_messages) {
        (1, 3) => end_on_cue(
            vec![message(0, "a0"), message(1, "a1")],
            &break_cue,
            Err(Status::unavailable("restarting")),
        ),
        (_, 2) => stay_open(vec![message(1, "b1"), message(2, "b2")]),
        _ => Err(Status::invalid_argument(format!("unexpected {request:?}"))),
    };
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_messages(3)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    // Offset 1 arrives too, and waits in the buffer while the stream
    // breaks: the reopening shows the break was seen.
    let is_subscribe = |c: &Call| matches!(c, Call::Subscribe(_));
    wait_for_call(&mut calls_rx, is_subscribe).await?;
    let first = next(&mut subscriber).await?;
    cue.notify_one();
    let calls = wait_for_call(&mut calls_rx, is_subscribe).await?;
    let Some(Call::Subscribe(reopened)) = calls.last() else {
        unreachable!("wait_for_call ends on a Subscribe");
    };
    assert_eq!(reopened.max_messages, 2, "the two not handed out");
    let mut got = vec![(first.offset(), first.ack_id().to_owned())];
    for _ in 0..2 {
        let delivery = next(&mut subscriber).await?;
        got.push((delivery.offset(), delivery.ack_id().to_owned()));
        delivery.ack();
    }
    let expected = [(0, "a0"), (1, "b1"), (2, "b2")].map(|(o, id)| (o, id.to_owned()));
    assert_eq!(got, expected);
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    first.ack();
    within(subscriber.close()).await??;
    Ok(())
}
