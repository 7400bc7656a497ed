//! `SubscriberService.ReadTopic` over gRPC: a topic read by offset, without
//! a subscription, so that tools can look without taking messages from
//! live consumers.

use tidings::v1::ReadTopicRequest;
use tidings_tests::{
    Deliveries, TestBroker, create_subscription, create_topic, expect_code, get_subscription,
    payloads, publish, subscribe_request,
};
use tonic::Code;

fn read(topic: &str, offset: u64, max_messages: u32) -> ReadTopicRequest {
    ReadTopicRequest {
        topic: topic.into(),
        offset,
        max_messages,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_is_read_by_offset_without_touching_its_subscriptions() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 30).await?;
    publish(&client, "t", &["a", "b", "c", "d", "e"]).await?;
    let mut service = client.subscriber_service();

    let first = service.read_topic(read("t", 1, 2)).await?.into_inner();
    assert_eq!(payloads(&first.messages), ["b", "c"]);
    assert_eq!((first.next_offset, first.end_offset), (3, 5));
    assert!(
        first
            .messages
            .iter()
            .all(|m| m.delivery_attempt == 0 && m.ack_id.is_empty()),
        "a read is no delivery: {:?}",
        first.messages
    );
    let rest = service
        .read_topic(read("t", first.next_offset, 0))
        .await?
        .into_inner();
    assert_eq!(payloads(&rest.messages), ["d", "e"]);
    assert_eq!(rest.next_offset, 5, "caught up: next equals the end");

    let sub = get_subscription(&client, "s").await?;
    assert_eq!(
        (sub.backlog, sub.in_flight),
        (5, 0),
        "nothing leased or acked"
    );
    // The subscription still gets every message, first time.
    let mut stream = Deliveries::open(&client, subscribe_request("s", "t")).await?;
    let delivered = stream.next_n(5).await?;
    assert!(delivered.iter().all(|m| m.delivery_attempt == 1));

    let missing = service.read_topic(read("nope", 0, 1)).await;
    expect_code(missing, Code::NotFound)?;
    let bad = service.read_topic(read("", 0, 1)).await;
    expect_code(bad, Code::InvalidArgument)?;
    Ok(())
}
