//! `tidings.v1.PublisherService` over the broker: converts a `Publish`
//! request, checks that the caller may publish there, appends it, returns
//! the offsets; `PublishStream` does the same per request (see
//! `publish_stream`). No broker logic lives here.

use std::time::Instant;

use futures::{Stream, StreamExt as _};
use tidings::v1;
use tidings::v1::publisher_service_server::PublisherService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use super::caller::caller;
use super::convert::{CallCommand, PublishCommand, ReplyCommand, commit_spec, publish_message};
use super::publish_stream::{PublishStream, PublishStreamResponses};
use super::wire;
use crate::auth::{Authorizer, Resource};
use crate::broker::SharedEngine;
use crate::metrics::Telemetry;

/// The gRPC adapter of the publisher service.
#[derive(Clone)]
pub struct Publisher {
    broker: SharedEngine,
    telemetry: Telemetry,
    auth: Authorizer,
    /// Cancelled when the broker starts shutting down: `PublishStream`s
    /// end.
    stop: CancellationToken,
}

impl Publisher {
    /// An adapter over `broker`, timing publishes into `telemetry`, serving
    /// whom `auth` allows.
    pub fn new(broker: SharedEngine, telemetry: Telemetry, auth: Authorizer) -> Self {
        Self {
            broker,
            telemetry,
            auth,
            stop: CancellationToken::new(),
        }
    }

    /// Ends its `PublishStream`s, gracefully, once `stop` is cancelled.
    #[must_use]
    pub fn stopping_on(self, stop: CancellationToken) -> Self {
        Self { stop, ..self }
    }

    /// `PublishStream` over requests as the broker decodes them.
    ///
    /// # Errors
    /// UNAUTHENTICATED as [`caller`] says.
    #[instrument(name = "PublishStream", skip_all)]
    pub(super) fn open_publish_stream<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<PublishStreamResponses>, Status>
    where
        S: Stream<Item = Result<wire::PublishRequest, Status>> + Send + Unpin + 'static,
    {
        let caller = caller(&self.auth, &request)?;
        debug!("opening stream");
        let stream = PublishStream {
            broker: self.broker.clone(),
            telemetry: self.telemetry.clone(),
            caller,
            stop: self.stop.clone(),
        };
        Ok(Response::new(stream.serve(request.into_inner())))
    }

    /// `Publish` of a request as the broker decodes it.
    ///
    /// # Errors
    /// As `Publish` says in the proto.
    #[instrument(
        name = "Publish",
        skip_all,
        fields(topic = %request.get_ref().topic, messages = request.get_ref().messages.len())
    )]
    pub(super) async fn publish_request(
        &self,
        request: Request<wire::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        debug!("publish");
        let started = Instant::now();
        let caller = caller(&self.auth, &request)?;
        let command = PublishCommand::try_from(request.into_inner())?;
        caller.publish(command.topic.as_str())?;
        let published = self
            .broker
            .publish(&command.topic, command.messages)
            .await?;
        self.telemetry.publish_took(started.elapsed());
        debug!(
            first_offset = published.offsets.first(),
            last_offset = published.offsets.last(),
            "published"
        );
        Ok(Response::new(v1::PublishResponse {
            offsets: published.offsets,
            duplicates: published.duplicates,
        }))
    }
}

/// Over gRPC, `Publish` and `PublishStream` reach the methods above
/// through `routes.rs`; these serve the HTTP bus and anyone else holding
/// the generated types.
#[tonic::async_trait]
impl PublisherService for Publisher {
    type PublishStreamStream = PublishStreamResponses;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let requests =
            request.map(|requests| requests.map(|read| read.map(wire::PublishRequest::from)));
        self.open_publish_stream(requests)
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        self.publish_request(request.map(wire::PublishRequest::from))
            .await
    }

    #[instrument(
        name = "Commit",
        skip_all,
        fields(publishes = request.get_ref().publishes.len(), acks = request.get_ref().acks.len())
    )]
    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let spec = commit_spec(request.into_inner())?;
        for (topic, _) in &spec.publishes {
            caller.publish(topic.as_str())?;
        }
        for acks in &spec.acks {
            caller.subscribe(Resource::Subscription(acks.subscription.as_str()))?;
        }
        let published = self.broker.commit(spec).await?;
        debug!(publishes = published.len(), "committed");
        Ok(Response::new(v1::CommitResponse {
            publishes: published
                .into_iter()
                .map(|p| v1::PublishResponse {
                    offsets: p.offsets,
                    duplicates: p.duplicates,
                })
                .collect(),
        }))
    }

    #[instrument(name = "Call", skip_all, fields(topic = %request.get_ref().topic))]
    async fn call(
        &self,
        request: Request<v1::CallRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let command = CallCommand::try_from(request.into_inner())?;
        caller.publish(command.topic.as_str())?;
        let answer = self
            .broker
            .call(&command.topic, command.message, command.timeout)
            .await?;
        debug!(offset = answer.offset, "answered");
        Ok(Response::new(v1::CallResponse {
            reply: Some(publish_message(answer.reply)),
            offset: answer.offset,
        }))
    }

    #[instrument(name = "Reply", skip_all)]
    async fn reply(
        &self,
        request: Request<v1::ReplyRequest>,
    ) -> Result<Response<v1::ReplyResponse>, Status> {
        // The reply token is the permission: whoever holds it may answer.
        caller(&self.auth, &request)?;
        let command = ReplyCommand::try_from(request.into_inner())?;
        self.broker
            .reply(&command.reply_to, command.message)
            .await?;
        Ok(Response::new(v1::ReplyResponse {}))
    }
}
