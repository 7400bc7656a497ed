//! What survives a restart of the broker on the same data directory, and
//! how a graceful shutdown treats open streams.

use tidings::v1::{ListTopicsRequest, PublishMessage};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, get_subscription, get_topic,
    offsets, payloads, publish, publish_messages, subscribe_request,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_topics_messages_offsets_and_acknowledgements() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "order.placed").await?;
    create_topic(&client, "empty.topic").await?;
    let batch = (0..5)
        .map(|i| PublishMessage {
            payload: format!("order {i}").into(),
            key: format!("key-{i}"),
            ..Default::default()
        })
        .collect();
    publish_messages(&client, "order.placed", batch).await?;
    create_subscription(&client, "inventory", "order.placed", 45).await?;
    create_subscription(&client, "idle", "order.placed", 0).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "")).await?;
    assert_eq!(offsets(&stream.next_n(5).await?), [0, 1, 2, 3, 4]);
    ack(&client, "inventory", &[0, 1, 3]).await?;

    broker.restart().await?;
    let ended = stream.end().await?.map(|status| status.code());
    assert_eq!(ended, Some(Code::Unavailable));
    let client = broker.client();

    assert_eq!(get_topic(&client, "order.placed").await?.next_offset, 5);
    assert_eq!(get_topic(&client, "empty.topic").await?.next_offset, 0);
    let listed = client
        .admin_service()
        .list_topics(ListTopicsRequest::default())
        .await?
        .into_inner();
    let names: Vec<&str> = listed.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["empty.topic", "order.placed"]);

    let inventory = get_subscription(&client, "inventory").await?;
    assert_eq!(inventory.topic, "order.placed");
    assert_eq!(inventory.ack_deadline_seconds, 45);
    assert_eq!(
        (inventory.ack_floor, inventory.backlog, inventory.in_flight),
        (2, 2, 0),
        "{inventory:?}"
    );

    // Unacknowledged messages come back, whole; acknowledged ones do not.
    // Delivery attempts count from 1 again: counts restart with the broker.
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "")).await?;
    let again = stream.next_n(2).await?;
    assert_eq!(offsets(&again), [2, 4]);
    assert_eq!(payloads(&again), ["order 2", "order 4"]);
    assert_eq!(again[0].key, "key-2");
    assert!(again.iter().all(|m| m.delivery_attempt == 1), "{again:?}");

    // Offsets go on where they stopped.
    assert_eq!(publish(&client, "order.placed", &["order 5"]).await?, [5]);
    assert_eq!(offsets(&stream.next_n(1).await?), [5]);
    let mut idle = Deliveries::open(&client, subscribe_request("idle", "")).await?;
    assert_eq!(offsets(&idle.next_n(6).await?), [0, 1, 2, 3, 4, 5]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_restart_keeps_acknowledgements_made_after_the_first() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["0", "1", "2"]).await?;
    create_subscription(&client, "s", "t", 0).await?;
    broker.restart().await?;

    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    stream.next_n(3).await?;
    ack(&client, "s", &[0, 1, 2]).await?;
    drop(stream);
    broker.restart().await?;

    let client = broker.client();
    let figures = get_subscription(&client, "s").await?;
    assert_eq!((figures.ack_floor, figures.backlog), (3, 0), "{figures:?}");
    assert_eq!(publish(&client, "t", &["3"]).await?, [3]);
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(offsets(&stream.next_n(1).await?), [3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_open_streams_with_unavailable_and_run_returns_ok() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "busy").await?;
    create_topic(&client, "quiet").await?;
    publish(&client, "busy", &["held"]).await?;
    let mut busy = Deliveries::open(&client, subscribe_request("busy-sub", "busy")).await?;
    busy.next().await?;
    let mut quiet = Deliveries::open(&client, subscribe_request("quiet-sub", "quiet")).await?;

    // `stop` fails unless `run` returns Ok within SHUTDOWN_TIMEOUT, although
    // this client still holds its connection and two open streams.
    broker.stop().await?;

    for stream in [&mut busy, &mut quiet] {
        let status = stream
            .end()
            .await?
            .expect("the stream must end with an error");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_health_watch_reports_not_serving_at_shutdown_and_then_ends() -> anyhow::Result<()> {
    // A drain held open by the watch would outlast the fixture's bound on
    // stopping.
    let mut broker = TestBroker::start_with(|config| {
        config.shutdown_timeout = std::time::Duration::from_secs(600);
    })
    .await?;
    let channel = broker.client().channel().clone();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest::default();
    let mut watch = health.watch(request).await?.into_inner();
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    assert_eq!(
        watch.message().await?.map(|r| r.status),
        Some(serving.into())
    );

    broker.stop().await?;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    assert_eq!(
        watch.message().await?.map(|r| r.status),
        Some(not_serving.into())
    );
    assert_eq!(watch.message().await?, None, "the watch ends");
    Ok(())
}
