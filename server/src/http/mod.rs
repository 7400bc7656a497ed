//! The HTTP event bus (`--http-listen`): JSON over HTTP/1.1 for services
//! that do not speak gRPC.
//!
//! Each route reads its body as the request message of a gRPC method
//! (proto3 JSON, `json.rs`), calls that method's adapter in [`crate::grpc`]
//! and writes the response the same way. So validation, limits, errors and
//! durability are those of gRPC by construction: this module only moves
//! JSON and maps a gRPC status to an HTTP one (`error.rs`).
//!
//! | route | gRPC method |
//! |---|---|
//! | `POST /v1/topics/{topic}:publish` | `PublisherService.Publish` |
//! | `POST /v1/subscriptions/{subscription}:pull` | `SubscriberService.Pull` |
//! | `POST /v1/subscriptions/{subscription}:ack` | `SubscriberService.Ack` |
//! | `POST /v1/subscriptions/{subscription}:nack` | `SubscriberService.Nack` |
//!
//! The `Authorization` header travels to the adapter as the gRPC
//! `authorization` metadata, so the auth file's decisions (and their 401
//! and 403) are those of gRPC too.

use std::io::Write as _;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use tidings::v1;
use tidings::v1::publisher_service_server::PublisherService as _;
use tidings::v1::subscriber_service_server::SubscriberService as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::ServeError;
use crate::accept::{ConnectionInfo, Incoming, over_limit_message};
use crate::auth::Authorizer;
use crate::broker::SharedEngine;
use crate::config::Config;
use crate::grpc::{AUTHORIZATION, Publisher, Subscriber};
use crate::metrics::Telemetry;
use crate::tls::ClientCertificate;
use error::HttpError;
use json::JsonCodec;

mod body;
mod error;
mod json;
mod push;

pub use push::run as push;

/// What every handler shares.
#[derive(Clone)]
struct Bus {
    publisher: Publisher,
    subscriber: Subscriber,
    json: JsonCodec,
    /// The largest body a request may have.
    body_limit: usize,
}

/// Serves the HTTP bus on the connections of `incoming` (TLS or not,
/// counted against `--max-connections`: see `crate::accept`), to whom
/// `auth` allows, until
/// `shutdown` is cancelled, then
/// stops accepting and lets requests in progress finish, for at most
/// `config.shutdown_timeout`. The broker itself is shut down and closed by
/// the caller; a pull waiting when it shuts down answers 503.
///
/// # Errors
/// [`ServeError::Http`] when the descriptors do not load or serving fails.
pub async fn serve(
    incoming: Incoming,
    broker: SharedEngine,
    telemetry: &Telemetry,
    auth: &Authorizer,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = incoming.local_addr();
    let json = JsonCodec::new().map_err(|err| ServeError::Http(Box::new(err)))?;
    let bus = Bus {
        publisher: Publisher::new(broker.clone(), telemetry.clone(), auth.clone()),
        subscriber: Subscriber::new(broker, auth.clone()),
        json,
        body_limit: config.max_request_bytes(),
    };
    let app = router(bus);
    info!(%addr, "serving the HTTP bus");
    let app = app.into_make_service_with_connect_info::<ConnectionInfo>();
    let server =
        axum::serve(incoming, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        served = server => served.map_err(|err| ServeError::Http(Box::new(err)))?,
        () = drain_deadline => warn!(
            timeout = ?config.shutdown_timeout,
            "HTTP requests still open after the shutdown timeout; no longer waiting for them",
        ),
    }
    Ok(())
}

/// The routes, each answering 405 to other methods, and 404 elsewhere;
/// bodies over the bus's `body_limit` are 413 (`body.rs`).
fn router(bus: Bus) -> Router {
    Router::new()
        .route(
            "/v1/topics/{target}",
            post(topic_action).fallback(method_not_allowed),
        )
        .route(
            "/v1/subscriptions/{target}",
            post(subscription_action).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn(connection_gate))
        .with_state(bus)
}

/// Answers the requests of a connection over `--max-connections` with 429
/// naming the limit; hands on the client certificate of the others, as
/// gRPC does: a [`ClientCertificate`](crate::tls::ClientCertificate) in
/// the request's extensions.
async fn connection_gate(mut request: HttpRequest, next: Next) -> Response {
    let info = request
        .extensions()
        .get::<ConnectInfo<ConnectionInfo>>()
        .map(|ConnectInfo(info)| info);
    if let Some(limit) = info.and_then(|info| info.refused) {
        return HttpError::from(Status::resource_exhausted(over_limit_message(limit)))
            .into_response();
    }
    if let Some(certificate) = info.and_then(|info| info.client_certificate.clone()) {
        request.extensions_mut().insert(certificate);
    }
    next.run(request).await
}

/// `POST /v1/topics/{topic}:{action}`.
async fn topic_action(
    State(bus): State<Bus>,
    Path(target): Path<String>,
    headers: HeaderMap,
    certificate: Option<Extension<ClientCertificate>>,
    body: Body,
) -> Result<Response, HttpError> {
    let body = body::read(&headers, body, bus.body_limit).await?;
    let (topic, action) = split_target(&target)?;
    match action {
        "publish" => {
            let mut request: v1::PublishRequest =
                bus.json.decode("tidings.v1.PublishRequest", &body)?;
            request.topic = named("topic", topic, request.topic)?;
            let response = bus
                .publisher
                .publish(grpc_request(&headers, certificate.as_ref(), request))
                .await?;
            bus.answer("tidings.v1.PublishResponse", response.get_ref())
        }
        _ => Err(HttpError::no_route(&format!("/v1/topics/{target}"))),
    }
}

/// `POST /v1/subscriptions/{subscription}:{action}`.
async fn subscription_action(
    State(bus): State<Bus>,
    Path(target): Path<String>,
    headers: HeaderMap,
    certificate: Option<Extension<ClientCertificate>>,
    body: Body,
) -> Result<Response, HttpError> {
    let body = body::read(&headers, body, bus.body_limit).await?;
    let (subscription, action) = split_target(&target)?;
    match action {
        "pull" => {
            let mut request: v1::PullRequest = bus.json.decode("tidings.v1.PullRequest", &body)?;
            request.subscription = named("subscription", subscription, request.subscription)?;
            let response = bus
                .subscriber
                .pull(grpc_request(&headers, certificate.as_ref(), request))
                .await?;
            bus.answer("tidings.v1.PullResponse", response.get_ref())
        }
        "ack" => {
            let mut request: v1::AckRequest = bus.json.decode("tidings.v1.AckRequest", &body)?;
            request.subscription = named("subscription", subscription, request.subscription)?;
            let response = bus
                .subscriber
                .ack(grpc_request(&headers, certificate.as_ref(), request))
                .await?;
            bus.answer("tidings.v1.AckResponse", response.get_ref())
        }
        "nack" => {
            let mut request: v1::NackRequest = bus.json.decode("tidings.v1.NackRequest", &body)?;
            request.subscription = named("subscription", subscription, request.subscription)?;
            let response = bus
                .subscriber
                .nack(grpc_request(&headers, certificate.as_ref(), request))
                .await?;
            bus.answer("tidings.v1.NackResponse", response.get_ref())
        }
        _ => Err(HttpError::no_route(&format!("/v1/subscriptions/{target}"))),
    }
}

impl Bus {
    /// A 200 with `message` as JSON.
    fn answer<T: Message>(&self, name: &str, message: &T) -> Result<Response, HttpError> {
        let body = self.json.encode(name, message)?;
        Ok(json_response(StatusCode::OK, body))
    }
}

/// `message` as a gRPC request, with the `Authorization` header as its
/// `authorization` metadata and the client certificate, if any, in its
/// extensions. A header that is not ASCII is left out: with an auth file
/// the call is then UNAUTHENTICATED, without one it does not matter.
fn grpc_request<T>(
    headers: &HeaderMap,
    certificate: Option<&Extension<ClientCertificate>>,
    message: T,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(Extension(certificate)) = certificate {
        request.extensions_mut().insert(certificate.clone());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<MetadataValue<_>>().ok());
    if let Some(value) = value {
        request.metadata_mut().insert(AUTHORIZATION, value);
    }
    request
}

/// Splits `name:action` at its last colon.
fn split_target(target: &str) -> Result<(&str, &str), HttpError> {
    target.rsplit_once(':').ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route for {target}: add the action after a colon, as in {target}:publish"),
        )
    })
}

/// The resource name of a request: the path's. The body may repeat it but
/// not name another.
fn named(field: &str, from_path: &str, in_body: String) -> Result<String, HttpError> {
    if !in_body.is_empty() && in_body != from_path {
        return Err(HttpError::from(Status::invalid_argument(format!(
            "{field} is \"{in_body}\" in the body but \"{from_path}\" in the path; \
             leave it out of the body"
        ))));
    }
    Ok(from_path.to_owned())
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::no_route(uri.path())
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        format!("{} does not take {method}; use POST", uri.path()),
    )
}

/// Tells whoever started the process where the HTTP bus listens:
/// `http listening on <addr>` on standard output.
pub(crate) fn announce(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        let mut stdout = std::io::stdout().lock();
        // Nobody may be reading standard output; that is not an error.
        let _ = writeln!(stdout, "http listening on {addr}").and_then(|()| stdout.flush());
    }
}
