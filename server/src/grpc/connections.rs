//! What a gRPC request learns of its connection (`crate::accept`): a
//! connection over `--max-connections` has every request answered
//! RESOURCE_EXHAUSTED naming the limit; on others, the client's TLS
//! certificate, if it showed one, goes into each request's extensions as a
//! [`ClientCertificate`](crate::tls::ClientCertificate).

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::transport::server::Connected;
use tower::{Layer, Service};

use crate::accept::{Connection, ConnectionInfo, over_limit_message};

/// tonic puts a clone of this into every request's extensions.
impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info().clone()
    }
}

/// Answers the requests of a connection over the limit, and hands on the
/// client certificate of the others.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionGate;

impl<S> Layer<S> for ConnectionGate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated { inner }
    }
}

/// The service [`ConnectionGate`] makes.
#[derive(Debug, Clone)]
pub(super) struct Gated<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Gated<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let info = request.extensions().get::<ConnectionInfo>();
        if let Some(limit) = info.and_then(|info| info.refused) {
            let status = Status::resource_exhausted(over_limit_message(limit));
            return Either::Left(ready(Ok(status.into_http())));
        }
        if let Some(certificate) = info.and_then(|info| info.client_certificate.clone()) {
            request.extensions_mut().insert(certificate);
        }
        Either::Right(self.inner.call(request))
    }
}
