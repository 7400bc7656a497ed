//! The gRPC front door: the only module that names tonic, but the HTTP bus
//! (`crate::http`), which calls these adapters with JSON turned into their
//! requests.
//!
//! Each service is a thin adapter holding the engine
//! ([`SharedEngine`]): it converts
//! the request (`convert.rs`, where validation lives), calls the broker and
//! converts the result; broker errors become statuses in one place
//! (`status.rs`). [`serve`] assembles the tidings services with health and
//! reflection on one transport and runs the shutdown sequence; a request
//! over the transport limit answers RESOURCE_EXHAUSTED (`limits.rs`).
//! `Publish` and `PublishStream` decode into the broker's own request
//! types, which keep ids as slices of the request (`wire.rs`,
//! `routes.rs`); every other call uses the generated ones.
//! Nothing here decides delivery, leases or storage.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tidings::v1::admin_service_server::{self, AdminServiceServer};
use tidings::v1::publisher_service_server;
use tidings::v1::subscriber_service_server::{self, SubscriberServiceServer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::ServeError;
use crate::accept::Incoming;
use crate::auth::Authorizer;
use crate::broker::SharedEngine;
use crate::config::Config;
use crate::metrics::Telemetry;
use connections::ConnectionGate;
use health::HealthSwitch;
use limits::RequestLimit;
use requests::CountRequests;
use routes::PublisherRoutes;

mod admin;
mod caller;
mod connections;
mod convert;
mod health;
mod limits;
mod publish_stream;
mod publisher;
mod requests;
mod routes;
mod status;
mod subscriber;
mod wire;

pub use admin::Admin;
pub(crate) use caller::AUTHORIZATION;
pub(crate) use convert::MAX_ERROR_BYTES;
pub use publish_stream::PublishStreamResponses;
pub use publisher::Publisher;
pub(crate) use status::error_chain;
pub use subscriber::{SubscribeStream, Subscriber};

/// The services whose health is reported (besides `""`, the server as a
/// whole).
const TIDINGS_SERVICES: [&str; 3] = [
    publisher_service_server::SERVICE_NAME,
    subscriber_service_server::SERVICE_NAME,
    admin_service_server::SERVICE_NAME,
];

/// How often an idle HTTP/2 connection is pinged, and how long the answer
/// may take before the connection is dropped.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow-control windows. Fixed and generous rather than adaptive:
/// h2 caps the number of small DATA frames a connection may buffer at half
/// the connection window, and with adaptive windows (which start small)
/// a burst of a few hundred small unary calls on one connection — acks,
/// say — exhausted that budget and the connection was torn down.
const HTTP2_STREAM_WINDOW: u32 = 2 << 20;
const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Serves the tidings services, health and reflection on the connections
/// of `incoming` (TLS or not, counted against `--max-connections`: see
/// `crate::accept`) until `shutdown` resolves, then shuts down in order:
///
/// 1. health turns NOT_SERVING (health `Watch` streams report it and end) and no new
///    connection is accepted;
/// 2. [`Engine::begin_shutdown`](crate::broker::Engine::begin_shutdown) ends open `Subscribe` streams with
///    UNAVAILABLE; open `PublishStream`s stop reading, answer what they
///    started and end with UNAVAILABLE;
/// 3. in-flight requests drain, for at most `config.shutdown_timeout`
///    (beyond that, a warning is logged and remaining connections are left
///    to the runtime).
///
/// The tidings services serve whom `auth` allows; health and reflection
/// serve everyone. Closing the broker is the caller's job. Prints
/// `listening on <addr>` to standard output once serving.
///
/// # Errors
/// [`ServeError::Grpc`] when the reflection service cannot be built or the
/// transport fails.
pub async fn serve(
    incoming: Incoming,
    broker: SharedEngine,
    telemetry: &Telemetry,
    auth: &Authorizer,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local_addr = incoming.local_addr();
    let (health, health_service) = HealthSwitch::new(&TIDINGS_SERVICES);
    let request_limit = config.max_request_bytes();
    // Ends `PublishStream`s as the broker's shutdown ends `Subscribe`s.
    let streams_stop = CancellationToken::new();
    let router = Server::builder()
        // Outermost, so that refused connections' calls are counted too.
        .layer(CountRequests::new(telemetry.clone()))
        .layer(ConnectionGate)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
        .add_service(health_service)
        .add_service(reflection_builder().build_v1().map_err(grpc_error)?)
        .add_service(reflection_builder().build_v1alpha().map_err(grpc_error)?)
        .add_service(RequestLimit::new(
            PublisherRoutes::new(
                Publisher::new(broker.clone(), telemetry.clone(), auth.clone())
                    .stopping_on(streams_stop.clone()),
                request_limit,
            ),
            request_limit,
        ))
        .add_service(RequestLimit::new(
            SubscriberServiceServer::new(Subscriber::new(broker.clone(), auth.clone()))
                .max_decoding_message_size(request_limit),
            request_limit,
        ))
        .add_service(RequestLimit::new(
            AdminServiceServer::new(Admin::new(broker.clone(), auth.clone()))
                .max_decoding_message_size(request_limit),
            request_limit,
        ));
    let incoming = incoming.into_stream();

    health.serving();
    info!(addr = %local_addr, data_dir = %config.data_dir.display(), "serving");
    announce(local_addr);

    let (draining_tx, draining_rx) = oneshot::channel();
    let signal = begin_shutdown(shutdown, health, broker, streams_stop, draining_tx);
    let drain_deadline = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(config.shutdown_timeout).await,
            // The signal never fired: the server ended on its own.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, signal) => {
            served.map_err(grpc_error)?;
            info!("all connections closed");
        }
        () = drain_deadline => warn!(
            timeout = ?config.shutdown_timeout,
            "connections still open after the shutdown timeout; no longer waiting for them",
        ),
    }
    Ok(())
}

/// Waits for `shutdown`, then turns health NOT_SERVING (health watches
/// end), ends the broker's streams and `PublishStream`s (cancelling
/// `streams_stop`) and reports that draining has begun. Resolving lets the
/// transport stop accepting and drain.
async fn begin_shutdown(
    shutdown: impl Future<Output = ()>,
    health: HealthSwitch,
    broker: SharedEngine,
    streams_stop: CancellationToken,
    draining_tx: oneshot::Sender<()>,
) {
    shutdown.await;
    info!("shutting down: refusing new connections and ending open streams");
    health.shutting_down();
    broker.begin_shutdown();
    streams_stop.cancel();
    // The receiver is gone only when serving already ended.
    let _ = draining_tx.send(());
}

/// Reflection over the tidings API and the health service, so tools such as
/// grpcurl need no proto files.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tidings::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Tells whoever started the process where it listens: black-box tests
/// start the binary on port 0 and read this line.
fn announce(addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // Nobody may be reading standard output; that is not an error.
    let _ = writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush());
}

fn grpc_error(err: impl std::error::Error + Send + Sync + 'static) -> ServeError {
    ServeError::Grpc(Box::new(err))
}
