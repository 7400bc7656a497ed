//! The README's limits at their edges, with the broker's defaults: the
//! largest message, the default flow-control window, the longest ack
//! deadline, the longest names. The value at the limit is accepted; one
//! more is INVALID_ARGUMENT and changes nothing.

use std::collections::HashMap;

use tidings::v1::{
    CreateSubscriptionRequest, CreateTopicRequest, ModifyAckDeadlineRequest, NackRequest,
    PublishMessage, PublishRequest, SubscribeRequest,
};
use tidings_client::Client;
use tidings_tests::{
    Deliveries, TestBroker, create_subscription, create_topic, expect_code, get_subscription,
    get_topic, offsets, publish, publish_messages, subscribe_request,
};
use tonic::Code;

/// `--max-message-bytes` by default: 1 MiB.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// `max_outstanding_messages` of a stream that leaves it 0.
const DEFAULT_MAX_OUTSTANDING: usize = 1000;
/// The longest ack deadline, lease extension and nack delay, in seconds.
const MAX_DEADLINE_SECONDS: u32 = 600;

/// A message of `size` bytes in all: a 100-byte key, two attributes of 84
/// bytes together (names and values), and the payload for the rest.
fn message_of(size: usize) -> PublishMessage {
    let attributes = HashMap::from([
        ("origin".to_owned(), "o".repeat(50)),
        ("id".to_owned(), "i".repeat(26)),
    ]);
    let key = "k".repeat(100);
    PublishMessage {
        payload: vec![b'p'; size - 100 - 84].into(),
        key,
        attributes,
        ..PublishMessage::default()
    }
}

async fn publish_one(client: &Client, message: PublishMessage) -> Result<u64, tonic::Status> {
    let response = client
        .publisher_service()
        .publish(PublishRequest {
            topic: "big".into(),
            messages: vec![message],
        })
        .await?;
    Ok(response.into_inner().offsets[0])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_of_one_mebibyte_is_accepted_and_one_byte_more_is_not() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "big").await?;
    let largest = message_of(DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(publish_one(&client, largest.clone()).await?, 0);

    // One byte more, in the payload, the key or an attribute: each counts.
    let mut longer_payload = largest.clone();
    longer_payload.payload = [&largest.payload[..], b"p"].concat().into();
    let mut longer_key = largest.clone();
    longer_key.key.push('k');
    let mut longer_attribute = largest.clone();
    longer_attribute
        .attributes
        .insert("id".to_owned(), "i".repeat(27));
    for (what, message) in [
        ("payload", longer_payload),
        ("key", longer_key),
        ("attribute", longer_attribute),
    ] {
        let refused = publish_one(&client, message)
            .await
            .expect_err("one byte over the limit");
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
        assert!(refused.message().contains("1048576"), "{what}: {refused:?}");
    }
    assert_eq!(get_topic(&client, "big").await?.next_offset, 1);

    // The largest message is stored whole.
    let mut stream = Deliveries::open(&client, subscribe_request("reader", "big")).await?;
    let stored = stream.next().await?;
    assert_eq!(stored.offset, 0);
    assert_eq!(stored.payload, largest.payload);
    assert_eq!(stored.key, largest.key);
    assert_eq!(stored.attributes, largest.attributes);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_holds_at_most_a_thousand_unacknowledged_messages_by_default() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "many").await?;
    let total = DEFAULT_MAX_OUTSTANDING + 100;
    let batch = (0..total).map(|i| tidings_tests::message(format!("m{i}")));
    publish_messages(&client, "many", batch.collect()).await?;

    // max_outstanding_messages is left 0: the default.
    let request = subscribe_request("window", "many");
    assert_eq!(request.max_outstanding_messages, 0);
    let mut full = Deliveries::open(&client, request).await?;
    let held = full.next_n(DEFAULT_MAX_OUTSTANDING).await?;
    assert_eq!(
        offsets(&held),
        (0..DEFAULT_MAX_OUTSTANDING as u64).collect::<Vec<_>>()
    );
    assert_eq!(full.buffered(), 0, "more came in the last frame");
    let figures = get_subscription(&client, "window").await?;
    assert_eq!(
        figures.in_flight, DEFAULT_MAX_OUTSTANDING as u64,
        "{figures:?}"
    );

    // The rest were not pushed to the full stream: another stream on the
    // subscription gets every one of them, first deliveries all.
    let mut other = Deliveries::open(&client, subscribe_request("window", "")).await?;
    let rest = other.next_n(total - DEFAULT_MAX_OUTSTANDING).await?;
    assert_eq!(
        offsets(&rest),
        (DEFAULT_MAX_OUTSTANDING as u64..total as u64).collect::<Vec<_>>()
    );
    assert!(rest.iter().all(|m| m.delivery_attempt == 1), "{rest:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_largest_flow_control_window_is_accepted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["m"]).await?;
    let widest = SubscribeRequest {
        max_outstanding_messages: 100_000,
        ..subscribe_request("s", "t")
    };
    let mut stream = Deliveries::open(&client, widest).await?;
    assert_eq!(stream.next().await?.offset, 0);
    let too_wide = SubscribeRequest {
        max_outstanding_messages: 100_001,
        ..subscribe_request("s", "")
    };
    let status = Deliveries::open_expecting_error(&client, too_wide).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    Ok(())
}

fn create_request(name: &str, ack_deadline_seconds: u32) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        name: name.into(),
        topic: "t".into(),
        ack_deadline_seconds,
        start: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_deadlines_and_delays_of_600_seconds_are_accepted_and_601_are_not() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["0", "1"]).await?;

    // Creating a subscription, with CreateSubscription or Subscribe.
    let created = create_subscription(&client, "admin-made", "t", MAX_DEADLINE_SECONDS).await?;
    assert_eq!(created.ack_deadline_seconds, MAX_DEADLINE_SECONDS);
    let too_long = client
        .admin_service()
        .create_subscription(create_request("admin-refused", MAX_DEADLINE_SECONDS + 1))
        .await;
    expect_code(too_long, Code::InvalidArgument)?;
    let request = SubscribeRequest {
        ack_deadline_seconds: MAX_DEADLINE_SECONDS,
        ..subscribe_request("stream-made", "t")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    let leased = offsets(&stream.next_n(2).await?);
    assert_eq!(leased, [0, 1]);
    let figures = get_subscription(&client, "stream-made").await?;
    assert_eq!(figures.ack_deadline_seconds, MAX_DEADLINE_SECONDS);
    let request = SubscribeRequest {
        ack_deadline_seconds: MAX_DEADLINE_SECONDS + 1,
        ..subscribe_request("stream-refused", "t")
    };
    let status = Deliveries::open_expecting_error(&client, request).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for refused in ["admin-refused", "stream-refused"] {
        let got = client
            .admin_service()
            .get_subscription(tidings::v1::GetSubscriptionRequest {
                name: refused.into(),
            })
            .await;
        expect_code(got, Code::NotFound)?;
    }

    // Extending a lease, and delaying a redelivery.
    for seconds in [MAX_DEADLINE_SECONDS, MAX_DEADLINE_SECONDS + 1] {
        let extended = client
            .subscriber_service()
            .modify_ack_deadline(ModifyAckDeadlineRequest {
                subscription: "stream-made".into(),
                offsets: vec![0],
                ack_deadline_seconds: seconds,
                ack_ids: Vec::new(),
            })
            .await;
        let delayed = client
            .subscriber_service()
            .nack(NackRequest {
                subscription: "stream-made".into(),
                offsets: vec![1],
                delay: Some(prost_types::Duration {
                    seconds: i64::from(seconds),
                    nanos: 0,
                }),
                ack_ids: Vec::new(),
                error: String::new(),
            })
            .await;
        if seconds == MAX_DEADLINE_SECONDS {
            extended?;
            delayed?;
        } else {
            expect_code(extended, Code::InvalidArgument)?;
            expect_code(delayed, Code::InvalidArgument)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn names_of_255_characters_are_accepted_and_256_are_not() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let longest = format!("a{}", "-".repeat(254));
    create_topic(&client, &longest).await?;
    create_subscription(&client, &longest, &longest, 0).await?;
    let longer = format!("{longest}b");
    let topic = client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: longer.clone(),
            ..CreateTopicRequest::default()
        })
        .await;
    expect_code(topic, Code::InvalidArgument)?;
    let subscription = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: longer,
            topic: longest.clone(),
            ..Default::default()
        })
        .await;
    expect_code(subscription, Code::InvalidArgument)?;
    assert_eq!(get_subscription(&client, &longest).await?.topic, longest);
    Ok(())
}
