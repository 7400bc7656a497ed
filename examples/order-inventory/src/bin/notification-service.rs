//! `notification-service`: tells each customer, once, that their order is
//! reserved. It consumes nothing itself: the broker POSTs every
//! `stock.reserved` event to `POST /push/stock-reserved`, through a push
//! subscription that the service creates (or points back at itself) when
//! it starts. `GET /notifications` lists what it told.
//!
//! Pushes come at least once: a push whose answer was lost, or that came
//! while a notification was being recorded, comes again. The service
//! answers 2xx only once the notification is in its journal, ignores a
//! push for an order it notified already (by order id), and answers 5xx
//! when it cannot record one, so that the broker tries again. A push
//! without the shared token in its `authorization` header is 401, which
//! the broker also retries: a wrong token shows as retries, not as loss.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use clap::Parser;
use order_inventory::events::{Decision, Outcome, STOCK_RESERVED};
use order_inventory::notifications::{
    self, Notification, NotificationReport, Notifications, Notified, NotifyError,
};
use order_inventory::push::{self, Ensured, PushedMessage};
use order_inventory::service::{self, DEFAULT_BROKER, HttpError};
use tidings_client::{Client, PushConfig, RetryPolicy, SubscriptionConfig};
use tracing::{error, info, warn};

/// Where the broker pushes `stock.reserved`, below `--public-url`.
const PUSH_PATH: &str = "/push/stock-reserved";
/// POSTs the broker keeps in flight at once. The service records one
/// notification at a time, so more would only wait.
const MAX_OUTSTANDING: u32 = 8;
/// The first wait before a failed push is tried again; it doubles with
/// each failure, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between tries of a failed push (the broker's default
/// is 60 s): once the service is back, it hears of what it missed within
/// this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest token accepted.
const MAX_TOKEN_LEN: usize = 256;

/// Tells customers that their order is reserved, from events the broker
/// pushes over HTTP.
#[derive(Debug, Parser)]
#[command(name = "notification-service", version, about)]
struct Args {
    /// URL of the Tidings broker.
    #[arg(long, env = "NOTIFIER_BROKER", default_value = DEFAULT_BROKER)]
    broker: String,
    /// Address to serve HTTP on. Port 0 picks a free port; the address is
    /// printed as `listening on <addr>` once the service is ready.
    #[arg(long, env = "NOTIFIER_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The URL the broker reaches this service at, such as
    /// `http://notifier.internal:8082`; the push endpoint is this plus
    /// `/push/stock-reserved`. By default `http://` and the address
    /// listened on (a wildcard address read as loopback): right when the
    /// broker runs on this machine.
    #[arg(long, env = "NOTIFIER_PUBLIC_URL", value_parser = parse_public_url)]
    public_url: Option<String>,
    /// The secret the broker must send as `authorization: Bearer <token>`;
    /// it is stored in the push subscription. Prefer the environment
    /// variable: other users can see a process's flags.
    #[arg(long, env = "NOTIFIER_TOKEN", hide_env_values = true, value_parser = parse_token)]
    token: String,
    /// Directory of the notification journal; created when missing.
    #[arg(long, env = "NOTIFIER_DATA_DIR", default_value = "./notifier-data")]
    data_dir: PathBuf,
    /// What to log (to standard error): `info`, `debug`, `warn`, ...
    #[arg(long, env = "NOTIFIER_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = service::init_tracing(&args.log) {
        eprintln!("notification-service: {err}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("notification-service: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = service::shutdown_on_signal().context("cannot handle signals")?;
    let notifications = Notifications::open(&args.data_dir).await?;
    let client = Client::connect(args.broker).await?;
    service::ensure_topics(&client, &[STOCK_RESERVED]).await?;
    // Bound before the subscription points here: pushes that come before
    // the server runs wait in the listener's queue.
    let listener = service::bind(args.listen).await?;
    let base = match args.public_url {
        Some(url) => url,
        None => default_public_url(listener.local_addr()?),
    };
    let endpoint = format!("{base}{PUSH_PATH}");
    let push = PushConfig::new(&endpoint)
        .header(AUTHORIZATION.as_str(), format!("Bearer {}", args.token))
        .max_outstanding(MAX_OUTSTANDING);
    let config = SubscriptionConfig::new(notifications::SUBSCRIPTION, STOCK_RESERVED)
        .retry_policy(RetryPolicy::new(MIN_BACKOFF, MAX_BACKOFF));
    let subscription = notifications::SUBSCRIPTION;
    match push::ensure_push_subscription(&client, config, push).await? {
        Ensured::Created => info!(subscription, %endpoint, "created the push subscription"),
        Ensured::Updated => info!(subscription, %endpoint, "pointed the push subscription here"),
        Ensured::Unchanged => info!(subscription, %endpoint, "the push subscription points here"),
    }
    let app = App {
        notifications,
        token: args.token.into(),
        unauthorized: Arc::default(),
    };
    service::serve_http(listener, router(app), shutdown)
        .await
        .context("HTTP server failed")?;
    info!("stopped");
    Ok(())
}

/// `http://` and `addr`, with a wildcard IP (`0.0.0.0`, `::`) read as the
/// loopback address of its family: the broker cannot connect to a
/// wildcard.
fn default_public_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Parses `--public-url`: an `http://` or `https://` URL, without a
/// trailing `/`. (The broker checks the rest when it gets the endpoint.)
fn parse_public_url(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match host {
        Some(host) if !host.is_empty() && !url.contains(['?', '#']) => Ok(url.to_owned()),
        _ => Err(format!(
            "{text:?} is not a base URL such as http://notifier.internal:8082"
        )),
    }
}

/// Parses `--token`: 1 to 256 visible ASCII characters (it goes in a
/// header).
fn parse_token(text: &str) -> Result<String, String> {
    if (1..=MAX_TOKEN_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "the token must be 1 to {MAX_TOKEN_LEN} visible ASCII characters, without spaces"
        ))
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    notifications: Notifications,
    token: Arc<str>,
    /// Pushes refused for their token since start.
    unauthorized: Arc<AtomicU64>,
}

impl App {
    /// Whether `headers` carry `authorization: Bearer <the token>`. The
    /// comparison takes as long whichever byte differs.
    fn is_authorized(&self, headers: &HeaderMap) -> bool {
        let sent = (headers.get(AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        sent.is_some_and(|sent| {
            let (sent, token) = (sent.as_bytes(), self.token.as_bytes());
            sent.len() == token.len()
                && sent
                    .iter()
                    .zip(token)
                    .fold(0, |diff, (a, b)| diff | (a ^ b))
                    == 0
        })
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route(PUSH_PATH, post(receive_push))
        .route("/notifications", get(list_notifications))
        .with_state(app)
}

/// `POST /push/stock-reserved`, called by the broker: notifies the order's
/// customer unless that was done, and answers 204 once the notification is
/// recorded. 401 without the token, 400 for a body that is not a push (the
/// broker retries both: someone must look), 500 when the notification
/// cannot be recorded (the broker retries: the disk may recover). An event
/// that is not a reservation cannot become one by being pushed again: it
/// is skipped, with a warning, and acknowledged.
async fn receive_push(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if !app.is_authorized(&headers) {
        app.unauthorized.fetch_add(1, Ordering::Relaxed);
        warn!(
            "refusing a push without the right token; check the authorization header of the push subscription"
        );
        let body = Json(serde_json::json!({"error": "send authorization: Bearer <token>"}));
        return (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            body,
        )
            .into_response();
    }
    match notify(&app.notifications, &body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => err.into_response(),
    }
}

/// Decodes one push and makes its notification.
async fn notify(notifications: &Notifications, body: &[u8]) -> Result<(), HttpError> {
    let pushed = PushedMessage::from_json(body).map_err(|err| {
        warn!(error = %err, "refusing a body that is not a push");
        HttpError::bad_request(err.to_string())
    })?;
    let (offset, attempt) = (pushed.offset, pushed.delivery_attempt);
    let decision = match serde_json::from_slice::<Decision>(&pushed.payload) {
        Ok(decision) if decision.outcome == Outcome::Reserved => decision,
        Ok(decision) => {
            let order = decision.order_id;
            warn!(offset, %order, "skipping a pushed decision that is not a reservation");
            return Ok(());
        }
        Err(err) => {
            warn!(offset, error = %err, "skipping a pushed event that is not a decision");
            return Ok(());
        }
    };
    let order = decision.order_id.clone();
    let notification = Notification::of_reservation(decision, offset, attempt);
    let text = notification.text.clone();
    match notifications.notify(notification).await {
        Ok(Notified::New) => info!(%order, offset, attempt, text, "notified the customer"),
        Ok(Notified::Repeat) => {
            info!(%order, offset, attempt, "ignoring a repeated push: the customer was notified")
        }
        Err(NotifyError::Journal(err)) => {
            error!(%order, error = %err, "cannot record a notification; the broker will push it again");
            return Err(HttpError::internal("cannot record the notification"));
        }
        Err(NotifyError::Stopped) => {
            return Err(HttpError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the notifier is stopping".to_owned(),
            });
        }
    }
    Ok(())
}

/// `GET /notifications`: every notification, oldest first, and the pushes
/// ignored or refused since start.
async fn list_notifications(State(app): State<App>) -> Json<NotificationReport> {
    Json(NotificationReport {
        notifications: app.notifications.list(),
        repeats_ignored: app.notifications.repeats(),
        unauthorized: app.unauthorized.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_advertised_as_loopback() {
        let url = |addr: &str| default_public_url(addr.parse().expect("an address"));
        assert_eq!(url("0.0.0.0:8082"), "http://127.0.0.1:8082");
        assert_eq!(url("[::]:8082"), "http://[::1]:8082");
        assert_eq!(url("10.1.2.3:41000"), "http://10.1.2.3:41000");
    }

    #[test]
    fn a_public_url_is_a_base_url() {
        let parsed = parse_public_url("https://notifier.internal:8082/");
        assert_eq!(parsed.as_deref(), Ok("https://notifier.internal:8082"));
        assert!(parse_public_url("notifier.internal:8082").is_err());
        assert!(parse_public_url("http://").is_err());
        assert!(parse_public_url("http://h/x?y=1").is_err());
    }

    #[tokio::test]
    async fn only_the_token_as_a_bearer_is_authorized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = App {
            notifications: Notifications::open(dir.path()).await.expect("open"),
            token: "s3cret".into(),
            unauthorized: Arc::default(),
        };
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().expect("a header value"));
            app.is_authorized(&headers)
        };
        assert!(with("Bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!with("Bearer s3cret2"));
        assert!(!with("Bearer S3cret"));
        assert!(!with("s3cret"));
        assert!(!app.is_authorized(&HeaderMap::new()));
        assert!(parse_token("s3cret").is_ok());
        assert!(parse_token("").is_err());
        assert!(parse_token("two words").is_err());
    }
}
