//! `--max-connections`: the gRPC listener counts its open connections.
//! A connection accepted while the broker holds its limit takes no place
//! and answers every request on it with RESOURCE_EXHAUSTED naming the
//! limit, so its client learns why instead of hanging in the accept queue;
//! the places come back as connections close.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::transport::server::Connected;
use tower::{Layer, Service};

/// The broker's open gRPC connections, against a limit.
#[derive(Debug, Clone)]
pub(super) struct Connections {
    open: Arc<AtomicUsize>,
    limit: Option<usize>,
}

impl Connections {
    pub(super) fn new(limit: Option<usize>) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Counts a newly accepted connection, when there is room for it.
    pub(super) fn admit(&self, io: TcpStream) -> Counted {
        let limit = self.limit;
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                limit.is_none_or(|limit| n < limit).then_some(n + 1)
            })
            .is_ok();
        Counted {
            io,
            place: admitted.then(|| Arc::clone(&self.open)),
            refused: (!admitted).then_some(limit.unwrap_or_default()),
        }
    }
}

/// An accepted connection, holding its place until it closes.
#[derive(Debug)]
pub(super) struct Counted {
    io: TcpStream,
    place: Option<Arc<AtomicUsize>>,
    /// The limit it was over, if it was.
    refused: Option<usize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(open) = &self.place {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a request knows of its connection.
#[derive(Debug, Clone)]
pub(super) struct CountedInfo {
    /// The limit the connection was over, if it was.
    pub(super) refused: Option<usize>,
}

impl Connected for Counted {
    type ConnectInfo = CountedInfo;

    fn connect_info(&self) -> CountedInfo {
        CountedInfo {
            refused: self.refused,
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Answers the requests of a connection over the limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct RefuseOverLimit;

impl<S> Layer<S> for RefuseOverLimit {
    type Service = Refusing<S>;

    fn layer(&self, inner: S) -> Refusing<S> {
        Refusing { inner }
    }
}

/// The service [`RefuseOverLimit`] makes.
#[derive(Debug, Clone)]
pub(super) struct Refusing<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Refusing<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = request
            .extensions()
            .get::<CountedInfo>()
            .and_then(|info| info.refused);
        match refused {
            Some(limit) => Either::Left(ready(Ok(Status::resource_exhausted(format!(
                "the broker serves {limit} connections, its limit (--max-connections); \
                 share a connection, close idle ones, or reconnect later"
            ))
            .into_http()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}
