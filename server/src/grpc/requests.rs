//! Counts gRPC requests by method and status code, for
//! `tidings_grpc_requests_total`.
//!
//! The code of a call is in its response headers when the call failed
//! before answering (a trailers-only response), otherwise in the trailers
//! at the end of the body, so the body is watched to its end; a call whose
//! body is dropped first (the client left) counts as CANCELLED. A method
//! the server does not have answers UNIMPLEMENTED and is counted as
//! `unknown`, so clients cannot grow the label set.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::Telemetry;

/// Wraps the services to count their requests.
#[derive(Debug, Clone)]
pub(super) struct CountRequests {
    telemetry: Telemetry,
}

impl CountRequests {
    pub(super) fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for CountRequests {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service [`CountRequests`] makes.
#[derive(Debug, Clone)]
pub(super) struct Counting<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Counting<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Watched<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let telemetry = self.telemetry.clone();
        let answered = self.inner.call(request);
        Box::pin(async move {
            let response = answered.await?;
            let mut call = Call {
                method: Some(method),
                telemetry,
            };
            if let Some(code) = code_in(response.headers()) {
                call.done(code);
            }
            Ok(response.map(|body| Watched {
                inner: Box::pin(body),
                call,
            }))
        })
    }
}

/// A call not yet counted.
struct Call {
    /// Taken when counted.
    method: Option<String>,
    telemetry: Telemetry,
}

impl Call {
    fn done(&mut self, code: Code) {
        if let Some(method) = self.method.take() {
            let method = if code == Code::Unimplemented {
                "unknown".to_owned()
            } else {
                method
            };
            self.telemetry.grpc_request(method, code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.done(Code::Cancelled);
    }
}

/// A response body that counts its call when its trailers pass.
pub(super) struct Watched<B> {
    inner: Pin<Box<B>>,
    call: Call,
}

impl<B: Body<Data = Bytes>> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    this.call.done(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.done(Code::Internal),
            // Ended without a status: tonic always sends one, so this is
            // a transport that cut it.
            Poll::Ready(None) => this.call.done(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` among `headers`, if there is one.
fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(telemetry: &Telemetry, method: &str) -> Call {
        Call {
            method: Some(method.to_owned()),
            telemetry: telemetry.clone(),
        }
    }

    #[test]
    fn each_call_counts_once_and_methods_the_server_lacks_are_unknown() {
        let telemetry = Telemetry::default();
        let mut answered = call(&telemetry, "/tidings.v1.PublisherService/Publish");
        answered.done(Code::Ok);
        answered.done(Code::Internal);
        drop(answered);
        call(&telemetry, "/tidings.v1.PublisherService/Made_up").done(Code::Unimplemented);
        drop(call(&telemetry, "/tidings.v1.SubscriberService/Subscribe"));
        let text = telemetry.text();
        for line in [
            "tidings_grpc_requests_total{method=\"/tidings.v1.PublisherService/Publish\",code=\"Ok\"} 1",
            "tidings_grpc_requests_total{method=\"unknown\",code=\"Unimplemented\"} 1",
            "tidings_grpc_requests_total{method=\"/tidings.v1.SubscriberService/Subscribe\",code=\"Cancelled\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("Made_up") && !text.contains("Internal"),
            "{text}"
        );
    }
}
