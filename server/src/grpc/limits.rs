//! [`RequestLimit`]: wraps a tidings service so that a request over the
//! transport limit answers RESOURCE_EXHAUSTED with a message naming the
//! request's size, the limit and `--max-message-bytes`.
//!
//! tonic refuses a request message over `max_decoding_message_size` itself,
//! before any handler runs: it reads the length prefix, answers
//! OUT_OF_RANGE ("Error, decoded message length too large: found N bytes,
//! the limit is: L bytes") and reads no more of the body. For unary and
//! server-streaming calls (all the tidings RPCs) that status travels in the
//! response headers, a trailers-only response, which is where this wrapper
//! looks. A client-streaming or bidirectional call (`PublishStream`) meets
//! the error only when its handler reads the stream: [`read_failure`] is
//! its mapping.
//!
//! This only rewrites that one status, recognised by its code, exact text
//! and limit; it must not touch any other response, buffer requests, or
//! change the limit.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;
use tracing::debug;

/// The pieces of tonic's text for a request message over the limit.
const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";
const TONIC_MIDDLE: &str = " bytes, the limit is: ";
const TONIC_SUFFIX: &str = " bytes";

/// A tidings service whose over-limit requests answer RESOURCE_EXHAUSTED.
#[derive(Debug, Clone)]
pub(super) struct RequestLimit<S> {
    inner: S,
    /// The `max_decoding_message_size` the inner service was given.
    limit: usize,
}

impl<S> RequestLimit<S> {
    /// Wraps `inner`, whose decoding limit is `limit` bytes.
    pub(super) fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: NamedService> NamedService for RequestLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, Request, Body> Service<Request> for RequestLimit<S>
where
    S: Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let limit = self.limit;
        let answered = self.inner.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            rewrite_over_limit(&mut response, limit);
            Ok(response)
        })
    }
}

/// Turns tonic's OUT_OF_RANGE for a request over `limit` into
/// RESOURCE_EXHAUSTED; leaves every other response as it is.
fn rewrite_over_limit<B>(response: &mut http::Response<B>, limit: usize) {
    let Some(size) = over_limit_size(response.headers(), limit) else {
        return;
    };
    debug!(size, limit, "request over the transport limit");
    let status = over_limit(size, limit);
    let mut status_headers = http::HeaderMap::new();
    // Fails only for a message that cannot be a header value; ours is ASCII.
    if status.add_header(&mut status_headers).is_ok() {
        // Replaces grpc-status and grpc-message.
        response.headers_mut().extend(status_headers);
        response.extensions_mut().insert(status);
    }
}

/// What the broker answers for a request of `size` bytes over `limit`.
fn over_limit(size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "request of {size} bytes is over the broker's limit of {limit} bytes per request \
         (derived from --max-message-bytes); split the batch into smaller requests \
         or raise --max-message-bytes"
    ))
}

/// The status a client-streaming handler ends with when reading its
/// stream failed with `status`: tonic's over-limit status becomes the
/// broker's (as [`RequestLimit`] does for the other calls), any other
/// status stays as it is.
pub(super) fn read_failure(status: Status) -> Status {
    match tonic_over_limit(&status) {
        Some((size, limit)) => over_limit(size, limit),
        None => status,
    }
}

/// The request size in tonic's over-limit status, when `headers` carry
/// that status for this `limit`.
fn over_limit_size(headers: &http::HeaderMap, limit: usize) -> Option<usize> {
    // Most responses carry their status in trailers; of those in headers,
    // only OUT_OF_RANGE is worth decoding.
    let code = headers.get("grpc-status")?;
    if Code::from_bytes(code.as_bytes()) != Code::OutOfRange {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    let (size, stated_limit) = tonic_over_limit(&status)?;
    (stated_limit == limit).then_some(size)
}

/// The request size and the limit stated in tonic's over-limit status;
/// `None` for any other status.
fn tonic_over_limit(status: &Status) -> Option<(usize, usize)> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let numbers = status
        .message()
        .strip_prefix(TONIC_PREFIX)?
        .strip_suffix(TONIC_SUFFIX)?;
    let (size, limit) = numbers.split_once(TONIC_MIDDLE)?;
    Some((size.parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4_194_304;

    /// A trailers-only response carrying `status`, as tonic answers a call
    /// that failed before its handler ran.
    fn answered_with(status: Status) -> http::Response<()> {
        status.into_http()
    }

    fn tonic_over_limit(size: usize, limit: usize) -> Status {
        Status::out_of_range(format!(
            "Error, decoded message length too large: found {size} bytes, \
             the limit is: {limit} bytes"
        ))
    }

    fn status_of(response: &http::Response<()>) -> Status {
        Status::from_header_map(response.headers()).expect("the response carries a status")
    }

    #[test]
    fn tonic_over_limit_status_becomes_resource_exhausted() {
        let mut response = answered_with(tonic_over_limit(20_971_683, LIMIT));
        rewrite_over_limit(&mut response, LIMIT);
        let status = status_of(&response);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request of 20971683 bytes is over the broker's limit of 4194304 bytes per \
             request (derived from --max-message-bytes); split the batch into smaller \
             requests or raise --max-message-bytes"
        );
        let carried = response.extensions().get::<Status>().expect("an extension");
        assert_eq!(carried.code(), Code::ResourceExhausted);
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
    }

    #[test]
    fn other_responses_are_left_alone() {
        let untouched = [
            // The broker's own statuses, whatever their code.
            Status::out_of_range("offset 9 is past the end of topic \"t\""),
            Status::invalid_argument(
                "message 0 is 2000 bytes (payload, key and attributes); the limit is \
                 1024 bytes (--max-message-bytes)",
            ),
            // tonic's text for a response over the sending limit.
            Status::out_of_range(format!(
                "Error, encoded message length too large: found 9 bytes, the limit is: \
                 {LIMIT} bytes"
            )),
            // tonic's text with another service's limit.
            tonic_over_limit(5_000_000, 4_000_000),
            // Not tonic's exact text.
            Status::out_of_range(format!(
                "Error, decoded message length too large: found 5000000 bytes, the \
                 limit is: {LIMIT} bytes!"
            )),
        ];
        for original in untouched {
            let mut response = answered_with(original.clone());
            rewrite_over_limit(&mut response, LIMIT);
            let status = status_of(&response);
            assert_eq!(status.code(), original.code(), "{original:?}");
            assert_eq!(status.message(), original.message(), "{original:?}");
        }
    }

    #[test]
    fn response_without_a_status_in_headers_is_left_alone() {
        let mut response = http::Response::new(());
        rewrite_over_limit(&mut response, LIMIT);
        assert!(response.headers().is_empty());
        assert!(response.extensions().get::<Status>().is_none());
    }
}
