//! `--metrics-listen`: `GET /metrics` shows each topic's and each
//! subscription's figures in the Prometheus text format, labelled by name
//! only, and a deleted topic's series are gone at the next scrape.

use tidings_tests::{TestBroker, create_subscription, create_topic, publish};

async fn scrape(broker: &TestBroker) -> anyhow::Result<String> {
    let response = reqwest::get(broker.metrics_url()).await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(kind.starts_with("text/plain"), "{kind}");
    Ok(response.text().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_and_subscriptions_show_their_figures_until_deleted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 0).await?;
    publish(&client, "orders", &["a", "b", "c"]).await?;

    let text = scrape(&broker).await?;
    for line in [
        "# TYPE tidings_topic_published_messages_total counter",
        "tidings_topic_published_messages_total{topic=\"orders\"} 3",
        "tidings_topic_retained_messages{topic=\"orders\"} 3",
        "tidings_subscription_backlog_messages{subscription=\"billing\"} 3",
        "tidings_subscription_in_flight_messages{subscription=\"billing\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("tidings_topic_retained_bytes{topic=\"orders\"} ")),
        "{text}"
    );
    // Calls are counted by method and code.
    let refused = client
        .admin_service()
        .get_topic(tidings::v1::GetTopicRequest {
            name: "nowhere".into(),
        })
        .await;
    assert!(refused.is_err());
    let text = scrape(&broker).await?;
    for line in [
        "tidings_grpc_requests_total{method=\"/tidings.v1.PublisherService/Publish\",code=\"Ok\"} 1",
        "tidings_grpc_requests_total{method=\"/tidings.v1.AdminService/GetTopic\",code=\"NotFound\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // The one publish above was timed.
    assert!(
        text.lines()
            .any(|l| l == "tidings_publish_duration_seconds_count 1"),
        "{text}"
    );

    client
        .admin_service()
        .delete_topic(tidings::v1::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await?;
    let text = scrape(&broker).await?;
    assert!(
        !text.contains("orders") && !text.contains("billing"),
        "{text}"
    );
    Ok(())
}
