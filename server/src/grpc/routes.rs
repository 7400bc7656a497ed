//! The publisher service as the transport serves it: `Publish` and
//! `PublishStream` decode their requests into the broker's own types
//! (`wire.rs`: ids stay slices of the request, as payloads do) and go
//! straight to [`Publisher`]'s methods; every other method goes to the
//! generated server. Same paths, same wire format, same limits; the one
//! answer that differs is to an id that is not UTF-8, which is
//! INVALID_ARGUMENT naming the message where the generated decoding failed
//! the whole call with INTERNAL.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tidings::v1;
use tidings::v1::publisher_service_server::{self, PublisherServiceServer};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use tower::Service;

use super::PublishStreamResponses;
use super::publisher::Publisher;
use super::wire::PublishRequest;

/// The path of `Publish`.
const PUBLISH: &str = "/tidings.v1.PublisherService/Publish";
/// The path of `PublishStream`.
const PUBLISH_STREAM: &str = "/tidings.v1.PublisherService/PublishStream";

/// The publisher service, its publishes decoded by the broker.
#[derive(Clone)]
pub(super) struct PublisherRoutes {
    publisher: Publisher,
    generated: PublisherServiceServer<Publisher>,
    /// The largest request message decoded, in bytes.
    limit: usize,
}

impl PublisherRoutes {
    /// Serves `publisher`, decoding request messages of at most `limit`
    /// bytes.
    pub(super) fn new(publisher: Publisher, limit: usize) -> Self {
        Self {
            generated: PublisherServiceServer::new(publisher.clone())
                .max_decoding_message_size(limit),
            publisher,
            limit,
        }
    }

    /// A call handler decoding into the broker's types, with the limit the
    /// generated server has.
    fn grpc<Answer>(&self) -> Grpc<ProstCodec<Answer, PublishRequest>>
    where
        Answer: prost::Message + Send + 'static,
    {
        Grpc::new(ProstCodec::default()).apply_max_message_size_config(Some(self.limit), None)
    }
}

impl NamedService for PublisherRoutes {
    const NAME: &'static str = publisher_service_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for PublisherRoutes
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            PUBLISH => {
                let mut grpc = self.grpc::<v1::PublishResponse>();
                let method = Publish(self.publisher.clone());
                Box::pin(async move { Ok(grpc.unary(method, request).await) })
            }
            PUBLISH_STREAM => {
                let mut grpc = self.grpc::<v1::PublishStreamResponse>();
                let method = OpenPublishStream(self.publisher.clone());
                Box::pin(async move { Ok(grpc.streaming(method, request).await) })
            }
            _ => self.generated.call(request),
        }
    }
}

/// `Publish` as a call handler.
struct Publish(Publisher);

impl Service<Request<PublishRequest>> for Publish {
    type Response = Response<v1::PublishResponse>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<PublishRequest>) -> Self::Future {
        let publisher = self.0.clone();
        Box::pin(async move { publisher.publish_request(request).await })
    }
}

/// `PublishStream` as a call handler.
struct OpenPublishStream(Publisher);

impl Service<Request<Streaming<PublishRequest>>> for OpenPublishStream {
    type Response = Response<PublishStreamResponses>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<PublishRequest>>) -> Self::Future {
        std::future::ready(self.0.open_publish_stream(request))
    }
}
