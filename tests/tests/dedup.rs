//! Idempotent publish: a message whose id the topic remembers is not stored
//! again, within one request or across requests, through gRPC and through
//! the Rust client's publisher; the window is set at creation and changed
//! with `UpdateTopic`; bad ids and windows are refused with the field named.

use std::time::Duration;

use prost_types::FieldMask;
use tidings::v1::{
    CreateTopicRequest, PublishMessage, PublishRequest, PublishResponse, Topic, UpdateTopicRequest,
};
use tidings_client::{Message, TopicConfig};
use tidings_tests::{
    Client, Deliveries, TestBroker, create_topic, expect_code, get_topic, subscribe_request, within,
};
use tonic::Code;

fn with_id(payload: &str, id: &str) -> PublishMessage {
    PublishMessage {
        payload: payload.to_owned().into(),
        id: id.into(),
        ..PublishMessage::default()
    }
}

async fn publish(
    client: &Client,
    topic: &str,
    messages: Vec<PublishMessage>,
) -> Result<PublishResponse, tonic::Status> {
    let request = PublishRequest {
        topic: topic.into(),
        messages,
    };
    Ok(client
        .publisher_service()
        .publish(request)
        .await?
        .into_inner())
}

fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn create_with_window(
    client: &Client,
    name: &str,
    window: Option<prost_types::Duration>,
) -> Result<Topic, tonic::Status> {
    let request = CreateTopicRequest {
        name: name.into(),
        dedup_window: window,
        ..CreateTopicRequest::default()
    };
    let response = client.admin_service().create_topic(request).await?;
    Ok(response.into_inner().topic.unwrap_or_default())
}

async fn update_window(
    client: &Client,
    name: &str,
    window: Option<prost_types::Duration>,
) -> Result<tonic::Response<tidings::v1::UpdateTopicResponse>, tonic::Status> {
    client
        .admin_service()
        .update_topic(UpdateTopicRequest {
            topic: Some(Topic {
                name: name.into(),
                dedup_window: window,
                ..Topic::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["dedup_window".into()],
            }),
        })
        .await
}

#[tokio::test]
async fn a_repeated_id_is_stored_once_and_answered_with_the_original_offset() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let topic = create_topic(&client, "payments").await?;
    assert_eq!(topic.dedup_window, seconds(120), "the default window");

    let first = publish(
        &client,
        "payments",
        vec![
            with_id("charge", "pay-1"),
            with_id("refund", "pay-2"),
            with_id("charge again", "pay-1"),
            PublishMessage {
                payload: "no id".into(),
                ..PublishMessage::default()
            },
        ],
    )
    .await?;
    assert_eq!(first.offsets, [0, 1, 0, 2]);
    assert_eq!(first.duplicates, [false, false, true, false]);

    let retry = publish(
        &client,
        "payments",
        vec![with_id("refund", "pay-2"), with_id("new", "pay-3")],
    )
    .await?;
    assert_eq!(retry.offsets, [1, 3]);
    assert_eq!(retry.duplicates, [true, false]);
    assert_eq!(get_topic(&client, "payments").await?.next_offset, 4);

    let mut stream = Deliveries::open(&client, subscribe_request("audit", "payments")).await?;
    let delivered = stream.next_n(4).await?;
    let ids: Vec<&str> = delivered.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["pay-1", "pay-2", "", "pay-3"]);
    assert_eq!(&delivered[0].payload[..], b"charge", "the first one stays");
    Ok(())
}

#[tokio::test]
async fn the_window_is_set_at_creation_and_changed_by_update_topic() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let topic = create_with_window(&client, "t", seconds(0)).await?;
    assert_eq!(topic.dedup_window, seconds(0), "0: no deduplication");
    let off = publish(&client, "t", vec![with_id("a", "x"), with_id("b", "x")]).await?;
    assert_eq!(off.offsets, [0, 1], "no window, no deduplication");

    let updated = update_window(&client, "t", seconds(600))
        .await?
        .into_inner();
    assert_eq!(updated.topic.unwrap_or_default().dedup_window, seconds(600));
    let on = publish(&client, "t", vec![with_id("c", "y"), with_id("d", "y")]).await?;
    assert_eq!(on.offsets, [2, 2]);
    assert_eq!(on.duplicates, [false, true]);
    assert_eq!(get_topic(&client, "t").await?.dedup_window, seconds(600));
    Ok(())
}

#[tokio::test]
async fn bad_ids_and_windows_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let long = "x".repeat(257);
    let refused = publish(
        &client,
        "t",
        vec![with_id("ok", "a"), with_id("bad", &long)],
    )
    .await;
    let status = expect_code(refused.map(tonic::Response::new), Code::InvalidArgument)?;
    assert!(
        status.message().contains("messages[1].id") && status.message().contains("256"),
        "{status:?}"
    );
    assert_eq!(
        get_topic(&client, "t").await?.next_offset,
        0,
        "nothing of the batch stored"
    );
    let just_fits = publish(&client, "t", vec![with_id("ok", &"y".repeat(256))]).await?;
    assert_eq!(just_fits.offsets, [0]);

    for (window, what) in [
        (seconds(-5), "positive"),
        (seconds(8 * 24 * 3600), "dedup_window"),
    ] {
        let created = create_with_window(&client, "u", window).await;
        let status = expect_code(created.map(tonic::Response::new), Code::InvalidArgument)?;
        assert!(status.message().contains("dedup_window"), "{status:?}");
        assert!(status.message().contains(what), "{status:?}");
        let updated = update_window(&client, "t", window).await;
        let status = expect_code(updated, Code::InvalidArgument)?;
        assert!(status.message().contains("dedup_window"), "{status:?}");
    }
    assert_eq!(get_topic(&client, "t").await?.dedup_window, seconds(120));
    Ok(())
}

#[tokio::test]
async fn the_rust_publisher_answers_a_repeat_with_the_original_offset() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let topic = client
        .create_topic_with(TopicConfig::new("orders").dedup_window(Duration::from_secs(300)))
        .await?;
    assert_eq!(topic.dedup_window, Duration::from_secs(300));
    let publisher = client.publisher("orders");
    let first = within(publisher.publish(Message::new("placed").with_id("order-7"))).await??;
    let again = within(publisher.publish(Message::new("placed").with_id("order-7"))).await??;
    let other = within(publisher.publish(Message::new("placed").with_id("order-8"))).await??;
    assert_eq!((first, again, other), (0, 0, 1));
    let batch = client
        .publish_batch(
            "orders",
            vec![
                Message::new("x").with_id("order-8").into(),
                Message::new("y").with_id("order-9").into(),
            ],
        )
        .await?;
    let seen: Vec<(u64, bool)> = batch.iter().map(|p| (p.offset, p.duplicate)).collect();
    assert_eq!(seen, [(1, true), (2, false)]);
    Ok(())
}
