//! `--metrics-listen`: `GET /metrics` shows each topic's and each
//! subscription's figures in the Prometheus text format, labelled by name
//! only, with the broker's latency histograms; a deleted subscription's
//! and topic's series are gone at the next scrape. Scrapes are read with a
//! Prometheus text parser, as a Prometheus server would.

use prometheus_parse::{Sample, Scrape, Value};
use tidings::v1::{
    DeadLetterPolicy, DeleteSubscriptionRequest, DeleteTopicRequest, NackRequest, RejectRequest,
};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, offsets, publish,
    subscribe_request, within,
};

/// One scrape, parsed.
struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

impl Metrics {
    async fn scrape(broker: &TestBroker) -> anyhow::Result<Self> {
        let response = reqwest::get(broker.metrics_url()).await?;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(kind.starts_with("text/plain"), "{kind}");
        let text = response.text().await?;
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let samples = Scrape::parse(lines)?.samples;
        Ok(Self { samples, text })
    }

    /// The value of `metric` for the resource named by `label`, as a
    /// counter or gauge; `None` when there is no such series.
    fn value(&self, metric: &str, (label, name): (&str, &str)) -> Option<f64> {
        let sample = self
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get(label) == Some(name))?;
        match sample.value {
            Value::Counter(v) | Value::Gauge(v) => Some(v),
            _ => None,
        }
    }

    /// As [`Metrics::value`], failing when the series is missing.
    fn get(&self, metric: &str, label: (&str, &str)) -> f64 {
        self.value(metric, label)
            .unwrap_or_else(|| panic!("no {metric}{label:?} in:\n{}", self.text))
    }

    /// Checks that each series has its value.
    fn expect(&self, expected: &[(&str, (&str, &str), f64)]) {
        for &(metric, label, value) in expected {
            assert_eq!(self.get(metric, label), value, "{metric}{label:?}");
        }
    }

    /// A histogram's count of observations, checked against its `+Inf`
    /// bucket.
    fn histogram_count(&self, metric: &str) -> f64 {
        let count = self
            .samples
            .iter()
            .find(|s| s.metric == format!("{metric}_count"))
            .and_then(|s| match s.value {
                Value::Untyped(v) => Some(v),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {metric}_count in:\n{}", self.text));
        let infinite = self
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .and_then(|s| match &s.value {
                Value::Histogram(buckets) => buckets.last().cloned(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no buckets of {metric} in:\n{}", self.text));
        assert!(infinite.less_than.is_infinite(), "{infinite:?}");
        assert_eq!(infinite.count, count, "{metric}");
        count
    }

    /// Whether any series is labelled with `name`.
    fn mentions(&self, name: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.values().any(|v| v == name))
    }
}

fn topic(name: &str) -> (&'static str, &str) {
    ("topic", name)
}

fn sub(name: &str) -> (&'static str, &str) {
    ("subscription", name)
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_and_subscriptions_show_their_figures_until_deleted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_topic(&client, "dlq").await?;
    create_subscription(&client, "billing", "orders", 60).await?;
    let audit = tidings::v1::CreateSubscriptionRequest {
        name: "audit".into(),
        topic: "orders".into(),
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: "dlq".into(),
            max_delivery_attempts: 5,
        }),
        ..Default::default()
    };
    client.admin_service().create_subscription(audit).await?;
    publish(&client, "orders", &["a", "b", "c", "d", "e"]).await?;

    // Five delivered and held unacknowledged on one open stream.
    let mut billing = Deliveries::open(&client, subscribe_request("billing", "orders")).await?;
    assert_eq!(offsets(&billing.next_n(5).await?), [0, 1, 2, 3, 4]);
    let m = Metrics::scrape(&broker).await?;
    let published = "tidings_topic_published_messages_total";
    m.expect(&[
        (published, topic("orders"), 5.0),
        // One byte of payload each, nothing else.
        ("tidings_topic_published_bytes_total", topic("orders"), 5.0),
        ("tidings_topic_retained_messages", topic("orders"), 5.0),
        ("tidings_subscription_backlog_messages", sub("billing"), 5.0),
        (
            "tidings_subscription_in_flight_messages",
            sub("billing"),
            5.0,
        ),
        ("tidings_subscription_open_streams", sub("billing"), 1.0),
    ]);
    assert!(m.get("tidings_topic_retained_bytes", topic("orders")) > 0.0);
    let delivered = "tidings_subscription_delivered_messages_total";
    assert_eq!(m.get(delivered, sub("billing")), 5.0);
    let age = "tidings_subscription_oldest_unacked_age_seconds";
    assert!(m.get(age, sub("billing")) > 0.0, "{}", m.text);
    assert!(m.histogram_count("tidings_end_to_end_latency_seconds") >= 5.0);
    // The default sync policy syncs each write: both are timed.
    assert!(m.histogram_count("tidings_storage_write_duration_seconds") > 0.0);
    assert!(m.histogram_count("tidings_storage_sync_duration_seconds") > 0.0);
    assert_eq!(m.histogram_count("tidings_publish_duration_seconds"), 1.0);

    // Three acknowledged, two given back and delivered again, then
    // acknowledged.
    ack(&client, "billing", &[0, 1, 2]).await?;
    let nack = NackRequest {
        subscription: "billing".into(),
        offsets: vec![3, 4],
        ..Default::default()
    };
    client.subscriber_service().nack(nack).await?;
    let again = billing.next_n(2).await?;
    assert_eq!(offsets(&again), [3, 4]);
    assert!(again.iter().all(|m| m.delivery_attempt == 2), "{again:?}");
    ack(&client, "billing", &[3, 4]).await?;

    // One rejected on a subscription with a dead-letter topic: moved.
    let mut audit = Deliveries::open(&client, subscribe_request("audit", "orders")).await?;
    assert_eq!(audit.next().await?.offset, 0);
    let reject = RejectRequest {
        subscription: "audit".into(),
        offsets: vec![0],
        ..Default::default()
    };
    client.subscriber_service().reject(reject).await?;
    drop((billing, audit));

    // The streams' ends reach the broker in their own time.
    let m = within(async {
        loop {
            let m = Metrics::scrape(&broker).await?;
            let open = |name| m.value("tidings_subscription_open_streams", sub(name));
            if open("billing") == Some(0.0) && open("audit") == Some(0.0) {
                return anyhow::Ok(m);
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    let billing = sub("billing");
    m.expect(&[
        (delivered, billing, 7.0),
        (
            "tidings_subscription_redelivered_messages_total",
            billing,
            2.0,
        ),
        ("tidings_subscription_acked_messages_total", billing, 5.0),
        ("tidings_subscription_nacked_messages_total", billing, 2.0),
        (
            "tidings_subscription_dead_lettered_messages_total",
            billing,
            0.0,
        ),
        ("tidings_subscription_backlog_messages", billing, 0.0),
        ("tidings_subscription_in_flight_messages", billing, 0.0),
        (age, billing, 0.0),
        (
            "tidings_subscription_dead_lettered_messages_total",
            sub("audit"),
            1.0,
        ),
        (
            "tidings_subscription_dead_letters_messages",
            sub("audit"),
            1.0,
        ),
        (
            "tidings_subscription_acked_messages_total",
            sub("audit"),
            0.0,
        ),
    ]);
    assert_eq!(m.get(published, topic("dlq")), 1.0);
    assert!(m.histogram_count("tidings_end_to_end_latency_seconds") >= 10.0);

    // Calls are counted by method and code.
    let refused = client
        .admin_service()
        .get_topic(tidings::v1::GetTopicRequest {
            name: "nowhere".into(),
        })
        .await;
    assert!(refused.is_err());
    let m = Metrics::scrape(&broker).await?;
    let requests = |method: &str, code: &str| {
        m.samples.iter().find(|s| {
            s.metric == "tidings_grpc_requests_total"
                && s.labels.get("method") == Some(method)
                && s.labels.get("code") == Some(code)
        })
    };
    let publishes = requests("/tidings.v1.PublisherService/Publish", "Ok");
    assert_eq!(publishes.map(|s| &s.value), Some(&Value::Counter(1.0)));
    let refused = requests("/tidings.v1.AdminService/GetTopic", "NotFound");
    assert_eq!(refused.map(|s| &s.value), Some(&Value::Counter(1.0)));

    // A deleted subscription's series go at once, then its topic's with
    // the topic's other subscriptions.
    client
        .admin_service()
        .delete_subscription(DeleteSubscriptionRequest {
            name: "billing".into(),
        })
        .await?;
    let m = Metrics::scrape(&broker).await?;
    assert!(!m.mentions("billing"), "{}", m.text);
    assert!(m.mentions("audit") && m.mentions("orders"), "{}", m.text);
    client
        .admin_service()
        .delete_topic(DeleteTopicRequest {
            name: "orders".into(),
        })
        .await?;
    let m = Metrics::scrape(&broker).await?;
    assert!(!m.mentions("orders") && !m.mentions("audit"), "{}", m.text);
    assert_eq!(m.get(published, topic("dlq")), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_stream_requests_are_timed_and_counted_by_code() -> anyhow::Result<()> {
    use tidings::v1::PublishRequest;
    use tidings::v1::publisher_service_client::PublisherServiceClient;

    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    let request = |topic: &str| PublishRequest {
        topic: topic.into(),
        messages: vec![tidings_tests::message("x")],
    };
    let requests = vec![request("orders"), request("missing"), request("orders")];
    let mut answers = PublisherServiceClient::new(client.channel().clone())
        .publish_stream(futures::stream::iter(requests))
        .await?
        .into_inner();
    let mut answered = 0;
    while within(answers.message()).await??.is_some() {
        answered += 1;
    }
    assert_eq!(answered, 3);

    let m = Metrics::scrape(&broker).await?;
    let stream_requests = "tidings_publish_stream_requests_total";
    m.expect(&[
        (stream_requests, ("code", "Ok"), 2.0),
        (stream_requests, ("code", "NotFound"), 1.0),
    ]);
    // Each stored request is timed as a Publish is.
    assert_eq!(m.histogram_count("tidings_publish_duration_seconds"), 2.0);
    Ok(())
}
