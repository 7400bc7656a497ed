//! Plumbing the services share: logging, signals, topics, the HTTP server
//! and its error answer, and the loop that feeds deliveries to a handler.
//!
//! Nothing here knows about orders or stock; what each topic keeps comes
//! from [`crate::events::topic_config`].

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tidings_client::{Client, Delivery, Subscriber};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::events::topic_config;

/// The broker both services use unless told otherwise.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:50051";

/// Logs to standard error, filtered by `directive` (such as `info`).
///
/// # Errors
/// When the directive is not a valid filter or a logger is installed.
pub fn init_tracing(directive: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directive)
        .map_err(|err| format!("invalid --log directive {directive:?}: {err}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|err| format!("cannot install the logger: {err}"))
}

/// A token cancelled on the first SIGINT or SIGTERM. The handlers are
/// installed before this returns, so an early signal is not lost.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!(signal = name, "shutting down");
        cancel.cancel();
    });
    Ok(token)
}

/// Creates each topic that does not exist yet, as [`topic_config`] says.
/// A topic that exists is left as it is.
///
/// # Errors
/// When the broker refuses for another reason than ALREADY_EXISTS.
pub async fn ensure_topics(client: &Client, topics: &[&str]) -> tidings_client::Result<()> {
    for topic in topics {
        match client.create_topic_with(topic_config(topic)).await {
            Ok(_) => info!(topic, "created topic"),
            Err(err) if err.code() == tonic::Code::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Binds `addr` for HTTP.
///
/// # Errors
/// When the address cannot be bound, with a hint for a busy port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        let hint = if err.kind() == std::io::ErrorKind::AddrInUse {
            "; another process uses it: stop it or choose another --listen"
        } else {
            ""
        };
        std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}{hint}"))
    })
}

/// Prints `listening on <addr>` to standard output (the readiness line
/// that scripts and tests wait for), then serves `router` until `shutdown`.
///
/// # Errors
/// When the listener fails.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "ready");
    println!("listening on {addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// An HTTP error, answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct HttpError {
    /// The status to answer.
    pub status: StatusCode,
    /// What went wrong, for the client to read.
    pub message: String,
}

impl HttpError {
    /// A `400 Bad Request` saying what is wrong with the request.
    pub fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    /// A `500 Internal Server Error` with a short message (log the details
    /// where the error happened).
    pub fn internal(message: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// Feeds each delivery of `subscriber` to `handle`, one at a time, until
/// `shutdown`; then closes the subscriber, flushing its acknowledgements.
/// The handler settles each delivery (ack or nack).
///
/// # Errors
/// The first error of `handle` (the loop stops: a handler fails only when
/// the service cannot go on), or the subscription's error when its stream
/// ends with one.
pub async fn consume<E: From<tidings_client::Error>>(
    mut subscriber: Subscriber,
    shutdown: &CancellationToken,
    mut handle: impl AsyncFnMut(Delivery) -> Result<(), E>,
) -> Result<(), E> {
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = subscriber.next() => next,
        };
        match next {
            Some(Ok(delivery)) => handle(delivery).await?,
            Some(Err(err)) => return Err(err.into()),
            // The stream ends on its own only when the subscriber closed.
            None => return Err(tidings_client::Error::Closed.into()),
        }
    }
    subscriber.close().await?;
    Ok(())
}
