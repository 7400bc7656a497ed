//! At-least-once delivery: every way an unacknowledged message comes back,
//! and that acknowledged ones do not.

use std::time::Duration;

use tidings::v1::{ModifyAckDeadlineRequest, NackRequest, SubscribeRequest};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, get_subscription, offsets,
    payloads, publish, subscribe_request,
};
use tokio::time::Instant;

/// Starts a broker with topic `t` holding `payloads`, and subscription `s`
/// on it with the given ack deadline (0 for the default).
async fn broker_with(payloads: &[&str], ack_deadline_seconds: u32) -> anyhow::Result<TestBroker> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", ack_deadline_seconds).await?;
    publish(&client, "t", payloads).await?;
    Ok(broker)
}

fn nack_request(offsets: &[u64], delay: Option<Duration>) -> NackRequest {
    NackRequest {
        subscription: "s".into(),
        offsets: offsets.to_vec(),
        delay: delay.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        ack_ids: Vec::new(),
        error: String::new(),
    }
}

fn deadline_request(offsets: &[u64], seconds: u32) -> ModifyAckDeadlineRequest {
    ModifyAckDeadlineRequest {
        subscription: "s".into(),
        offsets: offsets.to_vec(),
        ack_deadline_seconds: seconds,
        ack_ids: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nacked_message_is_redelivered_at_once_with_attempt_two() -> anyhow::Result<()> {
    let broker = broker_with(&["a", "b"], 0).await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let first = stream.next_n(2).await?;
    assert!(first.iter().all(|m| m.delivery_attempt == 1));

    ack(&client, "s", &[0]).await?;
    client
        .subscriber_service()
        .nack(nack_request(&[1], None))
        .await?;
    let again = stream.next().await?;
    assert_eq!((again.offset, again.delivery_attempt), (1, 2));
    assert_eq!(again.payload, "b".as_bytes());

    // Each nack counts another attempt; the acknowledged message never
    // comes back in between.
    client
        .subscriber_service()
        .nack(nack_request(&[1], None))
        .await?;
    let third = stream.next().await?;
    assert_eq!((third.offset, third.delivery_attempt), (1, 3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_with_delay_redelivers_only_after_the_delay() -> anyhow::Result<()> {
    let broker = broker_with(&["later"], 0).await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(stream.next().await?.delivery_attempt, 1);

    let delay = Duration::from_secs(1);
    let nacked_at = Instant::now();
    client
        .subscriber_service()
        .nack(nack_request(&[0], Some(delay)))
        .await?;
    let again = stream.next().await?;
    let waited = nacked_at.elapsed();
    assert_eq!((again.offset, again.delivery_attempt), (0, 2));
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_message_is_redelivered_after_the_ack_deadline() -> anyhow::Result<()> {
    let broker = broker_with(&["acked", "forgotten"], 1).await?;
    let client = broker.client();
    assert_eq!(
        get_subscription(&client, "s").await?.ack_deadline_seconds,
        1
    );
    let delivered_at = Instant::now();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(offsets(&stream.next_n(2).await?), [0, 1]);
    ack(&client, "s", &[0]).await?;

    let again = stream.next().await?;
    assert_eq!((again.offset, again.delivery_attempt), (1, 2));
    assert!(delivered_at.elapsed() >= Duration::from_secs(1));
    // Its lease expires again; the acknowledged message stays acknowledged.
    let third = stream.next().await?;
    assert_eq!((third.offset, third.delivery_attempt), (1, 3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_an_ended_stream_are_redelivered_on_the_next() -> anyhow::Result<()> {
    let broker = broker_with(&["x", "y", "z"], 0).await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(offsets(&stream.next_n(3).await?), [0, 1, 2]);
    ack(&client, "s", &[1]).await?;
    drop(stream);

    let mut reopened = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let again = reopened.next_n(2).await?;
    assert_eq!(offsets(&again), [0, 2]);
    assert_eq!(payloads(&again), ["x", "z"]);
    assert!(again.iter().all(|m| m.delivery_attempt == 2), "{again:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn modify_ack_deadline_zero_redelivers_at_once() -> anyhow::Result<()> {
    // The default deadline is 30 s: a redelivery within the test's 10 s
    // timeout can only come from giving the lease up.
    let broker = broker_with(&["given up"], 0).await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(stream.next().await?.delivery_attempt, 1);
    client
        .subscriber_service()
        .modify_ack_deadline(deadline_request(&[0], 0))
        .await?;
    let again = stream.next().await?;
    assert_eq!((again.offset, again.delivery_attempt), (0, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn modify_ack_deadline_extends_the_lease() -> anyhow::Result<()> {
    let broker = broker_with(&["extended", "expiring"], 1).await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(offsets(&stream.next_n(2).await?), [0, 1]);
    client
        .subscriber_service()
        .modify_ack_deadline(deadline_request(&[0], 60))
        .await?;
    // Offset 1 expires twice while offset 0, extended, stays leased.
    for attempt in [2, 3] {
        let again = stream.next().await?;
        assert_eq!((again.offset, again.delivery_attempt), (1, attempt));
    }
    assert_eq!(get_subscription(&client, "s").await?.in_flight, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn acked_messages_are_not_redelivered_to_a_new_stream() -> anyhow::Result<()> {
    let broker = broker_with(&["0", "1", "2", "3"], 0).await?;
    let client = broker.client();
    let request = SubscribeRequest {
        max_outstanding_messages: 10,
        ..subscribe_request("s", "")
    };
    let mut stream = Deliveries::open(&client, request.clone()).await?;
    stream.next_n(4).await?;
    ack(&client, "s", &[0, 2, 3]).await?;
    // Acks are idempotent.
    ack(&client, "s", &[2]).await?;
    drop(stream);

    let mut reopened = Deliveries::open(&client, request).await?;
    assert_eq!(offsets(&reopened.next_n(1).await?), [1]);
    publish(&client, "t", &["4"]).await?;
    // The next delivery is the new message, not an acknowledged one.
    let next = reopened.next().await?;
    assert_eq!((next.offset, next.delivery_attempt), (4, 1));
    let figures = get_subscription(&client, "s").await?;
    assert_eq!((figures.ack_floor, figures.backlog), (1, 2), "{figures:?}");
    Ok(())
}
