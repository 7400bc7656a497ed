//! How the `publish` and `e2e` workloads send their own requests: as unary
//! `Publish` calls (the default, the shape every figure before
//! `PublishStream` was measured with) or as requests on one long-lived
//! `PublishStream` call per connection (`--stream`).
//!
//! It only sends; the workloads time and count.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tidings_client::v1::PublishRequest;
use tidings_client::{Client, PublishStream};

/// The calls that carry a connection's requests.
pub(super) enum Rpc {
    /// A `Publish` call per request.
    Unary(Client),
    /// Every request on one `PublishStream` call.
    Stream(PublishStream),
}

impl Rpc {
    /// Requests over `client`: on a stream of its own when `stream`.
    pub(super) fn new(client: &Client, stream: bool) -> Self {
        if stream {
            Self::Stream(client.publish_stream())
        } else {
            Self::Unary(client.clone())
        }
    }

    /// Sends `request` once the future is first polled; it resolves, once
    /// the request is stored, to whether any of its messages was a
    /// duplicate.
    pub(super) fn publish(
        &self,
        request: PublishRequest,
    ) -> BoxFuture<'static, anyhow::Result<bool>> {
        match self {
            Self::Unary(client) => {
                let mut service = client.publisher_service();
                async move {
                    let answer = service.publish(request).await?.into_inner();
                    Ok(answer.duplicates.contains(&true))
                }
                .boxed()
            }
            Self::Stream(stream) => {
                let stream = stream.clone();
                async move {
                    let published = stream
                        .publish_batch(&request.topic, request.messages)
                        .await?;
                    Ok(published.iter().any(|p| p.duplicate))
                }
                .boxed()
            }
        }
    }
}

/// What a `RESULT` or `LATENCY` name says of the transport: nothing for
/// unary calls, so that their names stay those of earlier runs, and
/// ` rpc=stream` on `PublishStream`.
pub(super) fn label(stream: bool) -> &'static str {
    if stream { " rpc=stream" } else { "" }
}
