//! `tidings.v1.SubscriberService` over the broker: opens `Subscribe`
//! streams and forwards acks, nacks and lease changes, each once the
//! caller's `subscribe` grant on the subscription is checked (a stream is
//! checked when it opens).
//!
//! A stream is the broker's bounded channel of frames, mapped to responses;
//! the broker's task does the delivering, this only translates. No broker
//! logic lives here.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tidings::v1;
use tidings::v1::subscriber_service_server::SubscriberService;
use tonic::{Request, Response, Status};
use tracing::{Span, debug, info_span, instrument, trace};

use super::caller::caller;
use super::convert::{
    AckCommand, DeadlineCommand, NackCommand, ReadTopicCommand, RejectCommand, SeekCommand,
    read_topic_response, subscribe_frame,
};
use crate::auth::{Authorizer, Resource};
use crate::broker::{DeliveryStream, PullSpec, SharedEngine, SubscribeSpec};
use crate::names::SubscriptionName;

/// The response stream of `Subscribe`.
pub type SubscribeStream = BoxStream<'static, Result<v1::SubscribeResponse, Status>>;

/// The gRPC adapter of the subscriber service.
#[derive(Clone)]
pub struct Subscriber {
    broker: SharedEngine,
    auth: Authorizer,
}

impl Subscriber {
    /// An adapter over `broker`, serving whom `auth` allows.
    pub fn new(broker: SharedEngine, auth: Authorizer) -> Self {
        Self { broker, auth }
    }
}

#[tonic::async_trait]
impl SubscriberService for Subscriber {
    type SubscribeStream = SubscribeStream;

    #[instrument(name = "Subscribe", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let caller = caller(&self.auth, &request)?;
        let spec = SubscribeSpec::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(spec.subscription.as_str()))?;
        // Naming the topic may create the subscription on it.
        if let Some(topic) = &spec.topic {
            caller.subscribe(Resource::Topic(topic.as_str()))?;
        }
        debug!(topic = ?spec.topic, start = ?spec.start, "opening stream");
        let subscription = spec.subscription.clone();
        let deliveries = self.broker.subscribe(spec).await?;
        Ok(Response::new(response_stream(deliveries, &subscription)))
    }

    #[instrument(name = "Ack", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::AckResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = AckCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(command.subscription.as_str()))?;
        debug!(
            offsets = command.offsets.len(),
            ack_ids = command.ack_ids.len(),
            "ack"
        );
        self.broker
            .ack(&command.subscription, &command.offsets, &command.ack_ids)
            .await?;
        Ok(Response::new(v1::AckResponse {}))
    }

    #[instrument(name = "Nack", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn nack(
        &self,
        request: Request<v1::NackRequest>,
    ) -> Result<Response<v1::NackResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = NackCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(command.subscription.as_str()))?;
        debug!(offsets = command.offsets.len(), ack_ids = command.ack_ids.len(), delay = ?command.delay, "nack");
        self.broker
            .nack(
                &command.subscription,
                &command.offsets,
                &command.ack_ids,
                command.delay,
                &command.error,
            )
            .await?;
        Ok(Response::new(v1::NackResponse {}))
    }

    #[instrument(name = "Reject", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn reject(
        &self,
        request: Request<v1::RejectRequest>,
    ) -> Result<Response<v1::RejectResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = RejectCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(command.subscription.as_str()))?;
        debug!(
            offsets = command.offsets.len(),
            ack_ids = command.ack_ids.len(),
            "reject"
        );
        self.broker
            .reject(
                &command.subscription,
                &command.offsets,
                &command.ack_ids,
                &command.error,
            )
            .await?;
        Ok(Response::new(v1::RejectResponse {}))
    }

    #[instrument(
        name = "ModifyAckDeadline",
        skip_all,
        fields(subscription = %request.get_ref().subscription)
    )]
    async fn modify_ack_deadline(
        &self,
        request: Request<v1::ModifyAckDeadlineRequest>,
    ) -> Result<Response<v1::ModifyAckDeadlineResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = DeadlineCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(command.subscription.as_str()))?;
        debug!(offsets = command.offsets.len(), ack_ids = command.ack_ids.len(), deadline = ?command.deadline, "modify ack deadline");
        self.broker
            .modify_ack_deadline(
                &command.subscription,
                &command.offsets,
                &command.ack_ids,
                command.deadline,
            )
            .await?;
        Ok(Response::new(v1::ModifyAckDeadlineResponse {}))
    }

    #[instrument(name = "Seek", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn seek(
        &self,
        request: Request<v1::SeekRequest>,
    ) -> Result<Response<v1::SeekResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = SeekCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(command.subscription.as_str()))?;
        debug!(position = ?command.position, "seek");
        self.broker
            .seek(&command.subscription, command.position)
            .await?;
        Ok(Response::new(v1::SeekResponse {}))
    }

    #[instrument(name = "Pull", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn pull(
        &self,
        request: Request<v1::PullRequest>,
    ) -> Result<Response<v1::PullResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let spec = PullSpec::try_from(request.into_inner())?;
        caller.subscribe(Resource::Subscription(spec.subscription.as_str()))?;
        debug!(max = spec.max_messages, wait = ?spec.wait, "pull");
        let pulled = self.broker.pull(spec).await?;
        debug!(messages = pulled.len(), "pulled");
        Ok(Response::new(v1::PullResponse {
            messages: pulled.into_iter().map(v1::ReceivedMessage::from).collect(),
        }))
    }

    #[instrument(name = "ReadTopic", skip_all, fields(topic = %request.get_ref().topic))]
    async fn read_topic(
        &self,
        request: Request<v1::ReadTopicRequest>,
    ) -> Result<Response<v1::ReadTopicResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = ReadTopicCommand::try_from(request.into_inner())?;
        caller.subscribe(Resource::Topic(command.topic.as_str()))?;
        debug!(
            from = command.from,
            max = command.max_messages,
            "read topic"
        );
        let read = self
            .broker
            .read_topic(&command.topic, command.from, command.max_messages)
            .await?;
        Ok(Response::new(read_topic_response(read)))
    }
}

/// Maps the broker's frames to responses; an error frame becomes the status
/// that ends the stream.
fn response_stream(deliveries: DeliveryStream, subscription: &SubscriptionName) -> SubscribeStream {
    let mut log = StreamLog {
        span: info_span!("subscribe_stream", subscription = %subscription),
        delivered: 0,
    };
    log.span.in_scope(|| debug!("stream open"));
    deliveries
        .map(move |frame| {
            let _entered = log.span.enter();
            match frame {
                Ok(frame) => {
                    log.delivered += frame.len() as u64;
                    trace!(messages = frame.len(), "frame");
                    Ok(subscribe_frame(frame))
                }
                Err(err) => {
                    debug!(error = %err, "stream ended by the broker");
                    Err(Status::from(err))
                }
            }
        })
        .boxed()
}

/// The span of one stream, and what it delivered; logs the stream's end
/// when the transport drops it.
struct StreamLog {
    span: Span,
    delivered: u64,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        self.span
            .in_scope(|| debug!(delivered = self.delivered, "stream closed"));
    }
}
