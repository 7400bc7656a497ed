//! `--metrics-listen`: `GET /metrics` in the Prometheus text format.
//!
//! The figures are read from the engine at each scrape, through the same
//! listings the admin API serves (so any engine has them, and a deleted
//! topic's or subscription's series are gone at the next scrape). Labels
//! are names only, never offsets or ids.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ServeError;
use crate::broker::{Page, SharedEngine, SubscriptionInfo, TopicInfo};

/// What the front doors measure as they serve, for `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Telemetry {
    publish_duration: Histogram,
    grpc_requests: Family<Vec<(&'static str, String)>, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            // 100 µs doubling to about 3.3 s.
            publish_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            grpc_requests: Family::default(),
        }
    }
}

impl Telemetry {
    /// A publish (gRPC or HTTP) was answered after `elapsed`.
    pub(crate) fn publish_took(&self, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
    }

    /// A gRPC call to `method` ended with `code`.
    pub(crate) fn grpc_request(&self, method: String, code: tonic::Code) {
        let code = format!("{code:?}");
        self.grpc_requests
            .get_or_create(&vec![("method", method), ("code", code)])
            .inc();
    }

    /// What `GET /metrics` shows of these alone.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("encodes");
        text
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tidings_grpc_requests",
            "gRPC calls by method and status code (methods the server lacks count as unknown).",
            self.grpc_requests.clone(),
        );
        registry.register(
            "tidings_publish_duration_seconds",
            "Time from a Publish request's arrival to its answer, for those stored.",
            self.publish_duration.clone(),
        );
    }
}

/// Names fetched per listing call.
const PAGE: usize = 1000;

/// Reads the engine's topics and subscriptions at each scrape.
#[derive(Debug)]
struct EngineCollector {
    engine: EngineRef,
}

/// The engine, for the collector (which must be `Debug`).
struct EngineRef(SharedEngine);

impl std::fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("engine")
    }
}

impl EngineCollector {
    fn topics(&self) -> Vec<TopicInfo> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let Page { items, next_after } = self.engine.0.list_topics(after.as_deref(), PAGE);
            all.extend(items);
            match next_after {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }

    fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let Ok(Page { items, next_after }) =
                self.engine
                    .0
                    .list_subscriptions(None, after.as_deref(), PAGE)
            else {
                return all;
            };
            all.extend(items);
            match next_after {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }
}

/// Encodes one metric: a value per named resource.
fn family<T>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    items: &[T],
    value: impl Fn(&T) -> (&str, u64),
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for item in items {
        let (resource, value) = value(item);
        let labels = [(label, resource)];
        let series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(series)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(series)?,
        }
    }
    Ok(())
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topics = self.topics();
        let e = &mut encoder;
        family(
            e,
            "tidings_topic_published_messages",
            "Messages published to the topic since it was created (its next offset).",
            MetricType::Counter,
            "topic",
            &topics,
            |t| (t.name.as_str(), t.next_offset),
        )?;
        family(
            e,
            "tidings_topic_retained_messages",
            "Messages the topic retains.",
            MetricType::Gauge,
            "topic",
            &topics,
            |t| (t.name.as_str(), t.retained_messages),
        )?;
        family(
            e,
            "tidings_topic_retained_bytes",
            "Stored bytes of the messages the topic retains (within 25 %).",
            MetricType::Gauge,
            "topic",
            &topics,
            |t| (t.name.as_str(), t.retained_bytes),
        )?;
        let subs = self.subscriptions();
        family(
            e,
            "tidings_subscription_backlog_messages",
            "Messages published and not yet acknowledged.",
            MetricType::Gauge,
            "subscription",
            &subs,
            |s| (s.name.as_str(), s.backlog),
        )?;
        family(
            e,
            "tidings_subscription_in_flight_messages",
            "Messages leased to a consumer, awaiting acknowledgement.",
            MetricType::Gauge,
            "subscription",
            &subs,
            |s| (s.name.as_str(), s.in_flight),
        )?;
        family(
            e,
            "tidings_subscription_delayed_messages",
            "Messages waiting for their delivery time.",
            MetricType::Gauge,
            "subscription",
            &subs,
            |s| (s.name.as_str(), s.delayed),
        )?;
        family(
            e,
            "tidings_subscription_dead_lettered_messages",
            "Messages moved to the dead-letter topic and not redriven.",
            MetricType::Gauge,
            "subscription",
            &subs,
            |s| (s.name.as_str(), s.dead_lettered),
        )?;
        family(
            e,
            "tidings_subscription_open_streams",
            "Subscribe streams open on the subscription.",
            MetricType::Gauge,
            "subscription",
            &subs,
            |s| (s.name.as_str(), u64::from(s.open_streams)),
        )?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// [`ServeError::Listener`] when the listener's address cannot be read,
/// [`ServeError::Http`] when serving fails.
pub async fn serve(
    listener: TcpListener,
    engine: SharedEngine,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let mut registry = Registry::default();
    telemetry.register(&mut registry);
    registry.register_collector(Box::new(EngineCollector {
        engine: EngineRef(engine),
    }));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry));
    info!(%addr, "serving metrics");
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served.map_err(|err| ServeError::Http(Box::new(err)))?,
        () = deadline => warn!("metrics requests still open after the shutdown timeout"),
    }
    Ok(())
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        Ok(()) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// Tells whoever started the process where the metrics are served:
/// `metrics listening on <addr>` on standard output.
pub(crate) fn announce(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        let mut stdout = std::io::stdout().lock();
        // Nobody may be reading standard output; that is not an error.
        let _ = writeln!(stdout, "metrics listening on {addr}").and_then(|()| stdout.flush());
    }
}
