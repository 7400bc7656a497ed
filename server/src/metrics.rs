//! `--metrics-listen`: `GET /metrics` in the Prometheus text format.
//!
//! The figures of topics and subscriptions are read from the engine at
//! each scrape, through the same listings the admin API serves and the
//! engine's figures API ([`Engine::oldest_unacked`],
//! [`Engine::timings`]), so any engine has them, and a deleted topic's or
//! subscription's series are gone at the next scrape. Labels are names
//! only, never offsets or ids. What the front doors measure themselves
//! (publish durations, gRPC calls) is in [`Telemetry`].
//!
//! [`Engine::oldest_unacked`]: crate::broker::Engine::oldest_unacked
//! [`Engine::timings`]: crate::broker::Engine::timings

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
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
use crate::accept::Incoming;
use crate::broker::{EngineTimings, Page, SharedEngine, SubscriptionInfo, TopicInfo};
use crate::latency::LatencySnapshot;

/// What the front doors measure as they serve, for `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Telemetry {
    publish_duration: Histogram,
    grpc_requests: Family<Vec<(&'static str, String)>, Counter>,
    publish_stream_requests: Family<Vec<(&'static str, String)>, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            // 100 µs doubling to about 3.3 s.
            publish_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            grpc_requests: Family::default(),
            publish_stream_requests: Family::default(),
        }
    }
}

impl Telemetry {
    /// A publish (gRPC, one request of a `PublishStream`, or HTTP) was
    /// answered after `elapsed`.
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

    /// A request on a `PublishStream` was answered with `code`: what
    /// `grpc_request` counts of a `Publish` call, for one request of a
    /// stream.
    pub(crate) fn publish_stream_request(&self, code: tonic::Code) {
        let code = format!("{code:?}");
        self.publish_stream_requests
            .get_or_create(&vec![("code", code)])
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
            "tidings_publish_stream_requests",
            "Requests answered on PublishStream calls, by status code.",
            self.publish_stream_requests.clone(),
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

/// What the engine showed at one scrape.
#[derive(Debug)]
struct Snapshot {
    topics: Vec<TopicInfo>,
    subscriptions: Vec<Aged>,
    timings: EngineTimings,
}

impl Snapshot {
    /// Reads the engine's topics, subscriptions and timings.
    async fn take(engine: &SharedEngine) -> Self {
        let topics = all_topics(engine);
        let now = SystemTime::now();
        let mut subscriptions = Vec::new();
        for info in all_subscriptions(engine) {
            // A subscription deleted meanwhile, or a failed read, shows
            // no age rather than failing the scrape.
            let oldest = engine.oldest_unacked(&info.name).await.ok().flatten();
            let age = oldest.map_or(0.0, |t| {
                now.duration_since(t).unwrap_or_default().as_secs_f64()
            });
            subscriptions.push((info, age));
        }
        Self {
            topics,
            subscriptions,
            timings: engine.timings(),
        }
    }
}

fn all_topics(engine: &SharedEngine) -> Vec<TopicInfo> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let Page { items, next_after } = engine.list_topics(after.as_deref(), PAGE);
        all.extend(items);
        match next_after {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

fn all_subscriptions(engine: &SharedEngine) -> Vec<SubscriptionInfo> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let Ok(Page { items, next_after }) =
            engine.list_subscriptions(None, after.as_deref(), PAGE)
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

/// A value of a metric family: a count or a gauge of either kind.
enum Value {
    Count(u64),
    Whole(u64),
    Seconds(f64),
}

/// One metric of each topic or each subscription (`T`).
struct Figure<T> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&T) -> Value,
}

/// Encodes one metric: a value per named resource.
fn family<T>(
    encoder: &mut DescriptorEncoder<'_>,
    figure: &Figure<T>,
    label: &str,
    items: &[T],
    name_of: impl Fn(&T) -> &str,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(figure.name, figure.help, None, figure.kind)?;
    for item in items {
        let labels = [(label, name_of(item))];
        let series = metric.encode_family(&labels)?;
        match (figure.value)(item) {
            Value::Count(n) => ConstCounter::new(n).encode(series)?,
            Value::Whole(n) => ConstGauge::new(n).encode(series)?,
            Value::Seconds(s) => ConstGauge::new(s).encode(series)?,
        }
    }
    Ok(())
}

/// Encodes a histogram without labels.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help): (&str, &str),
    snapshot: &LatencySnapshot,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(
        snapshot.sum_seconds,
        snapshot.count,
        &snapshot.buckets,
        None,
    )
}

const TOPIC_FIGURES: &[Figure<TopicInfo>] = &[
    Figure {
        name: "tidings_topic_published_messages",
        help: "Messages published to the topic since it was created (its next offset).",
        kind: MetricType::Counter,
        value: |t| Value::Count(t.next_offset),
    },
    Figure {
        name: "tidings_topic_published_bytes",
        help: "Bytes (payload, key, attributes) published to the topic since the broker started.",
        kind: MetricType::Counter,
        value: |t| Value::Count(t.published_bytes),
    },
    Figure {
        name: "tidings_topic_retained_messages",
        help: "Messages the topic retains.",
        kind: MetricType::Gauge,
        value: |t| Value::Whole(t.retained_messages),
    },
    Figure {
        name: "tidings_topic_retained_bytes",
        help: "Stored bytes of the messages the topic retains (within 25 %).",
        kind: MetricType::Gauge,
        value: |t| Value::Whole(t.retained_bytes),
    },
];

/// A subscription with its oldest unacknowledged message's age in
/// seconds (0 when none waits).
type Aged = (SubscriptionInfo, f64);

const SUBSCRIPTION_FIGURES: &[Figure<Aged>] = &[
    Figure {
        name: "tidings_subscription_backlog_messages",
        help: "Messages published and not yet acknowledged.",
        kind: MetricType::Gauge,
        value: |(s, _)| Value::Whole(s.backlog),
    },
    Figure {
        name: "tidings_subscription_oldest_unacked_age_seconds",
        help: "Age of the oldest message not yet acknowledged (0 when none waits).",
        kind: MetricType::Gauge,
        value: |(_, age)| Value::Seconds(*age),
    },
    Figure {
        name: "tidings_subscription_in_flight_messages",
        help: "Messages leased to a consumer, awaiting acknowledgement.",
        kind: MetricType::Gauge,
        value: |(s, _)| Value::Whole(s.in_flight),
    },
    Figure {
        name: "tidings_subscription_delayed_messages",
        help: "Messages waiting for their delivery time.",
        kind: MetricType::Gauge,
        value: |(s, _)| Value::Whole(s.delayed),
    },
    Figure {
        name: "tidings_subscription_dead_letters_messages",
        help: "Messages in the dead-letter topic, not redriven.",
        kind: MetricType::Gauge,
        value: |(s, _)| Value::Whole(s.dead_lettered),
    },
    Figure {
        name: "tidings_subscription_open_streams",
        help: "Subscribe streams open on the subscription.",
        kind: MetricType::Gauge,
        value: |(s, _)| Value::Whole(u64::from(s.open_streams)),
    },
    Figure {
        name: "tidings_subscription_delivered_messages",
        help: "Deliveries sent, first and repeated, since the broker started.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.counts.delivered),
    },
    Figure {
        name: "tidings_subscription_redelivered_messages",
        help: "Deliveries of messages delivered before, since the broker started.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.counts.redelivered),
    },
    Figure {
        name: "tidings_subscription_acked_messages",
        help: "Messages acknowledged since the broker started.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.counts.acked),
    },
    Figure {
        name: "tidings_subscription_nacked_messages",
        help: "Deliveries given back (nack, zero ack deadline, failed push) since the broker started.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.counts.nacked),
    },
    Figure {
        name: "tidings_subscription_dead_lettered_messages",
        help: "Messages moved to the dead-letter topic since the broker started.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.counts.dead_lettered),
    },
    Figure {
        name: "tidings_subscription_rejected_messages",
        help: "Messages rejected while the subscription had no dead-letter topic.",
        kind: MetricType::Counter,
        value: |(s, _)| Value::Count(s.rejected),
    },
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        for figure in TOPIC_FIGURES {
            family(e, figure, "topic", &self.topics, |t| t.name.as_str())?;
        }
        for figure in SUBSCRIPTION_FIGURES {
            family(e, figure, "subscription", &self.subscriptions, |(s, _)| {
                s.name.as_str()
            })?;
        }
        histogram(
            e,
            (
                "tidings_end_to_end_latency_seconds",
                "Time from a message's publish (or due time, when delayed) to its first delivery \
                 on each subscription.",
            ),
            &self.timings.end_to_end,
        )?;
        if let Some(storage) = &self.timings.storage {
            histogram(
                e,
                (
                    "tidings_storage_write_duration_seconds",
                    "Time of each batch write to the log (with its sync, when it syncs).",
                ),
                &storage.write,
            )?;
            histogram(
                e,
                (
                    "tidings_storage_sync_duration_seconds",
                    "Time of each sync of the write-ahead log, and of each write that synced.",
                ),
                &storage.sync,
            )?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on the connections of `incoming` (TLS or not:
/// see `crate::accept`) until `shutdown` is cancelled.
///
/// # Errors
/// [`ServeError::Http`] when serving fails.
pub async fn serve(
    incoming: Incoming,
    engine: SharedEngine,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    let addr = incoming.local_addr();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Sources {
            engine: EngineRef(engine),
            telemetry: telemetry.clone(),
        });
    info!(%addr, "serving metrics");
    let server =
        axum::serve(incoming, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
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

/// The engine, for the scrape's state (which must be `Debug`).
#[derive(Clone)]
struct EngineRef(SharedEngine);

impl std::fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("engine")
    }
}

/// Where a scrape's figures come from.
#[derive(Clone)]
struct Sources {
    engine: EngineRef,
    telemetry: Telemetry,
}

async fn scrape(State(sources): State<Sources>) -> Response {
    let snapshot = Snapshot::take(&sources.engine.0).await;
    let mut registry = Registry::default();
    sources.telemetry.register(&mut registry);
    registry.register_collector(Box::new(snapshot));
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
