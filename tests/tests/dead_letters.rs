//! Dead letters over gRPC: a message that fails `max_delivery_attempts`
//! deliveries, or is rejected, is moved to the dead-letter topic with its
//! provenance and settled; `Redrive` brings it back; bad policies are
//! refused; a missing dead-letter topic leaves messages in delivery until
//! it exists again; counts survive a restart; a dead-lettered message
//! releases its ordering key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost_types::FieldMask;
use tidings::v1::{
    CreateSubscriptionRequest, DeadLetterPolicy, GetSubscriptionRequest, NackRequest,
    PublishMessage, ReadTopicRequest, ReceivedMessage, RedriveRequest, RejectRequest, RetryPolicy,
    Subscription, UpdateSubscriptionRequest,
};
use tidings_tests::{
    Client, Deliveries, TestBroker, create_topic, expect_code, get_subscription, publish,
    publish_messages, subscribe_request, within,
};
use tonic::Code;

fn dead_letter(topic: &str, attempts: u32) -> Option<DeadLetterPolicy> {
    Some(DeadLetterPolicy {
        dead_letter_topic: topic.into(),
        max_delivery_attempts: attempts,
    })
}

fn retry(millis: u32) -> Option<RetryPolicy> {
    let backoff = Some(prost_types::Duration {
        seconds: 0,
        nanos: i32::try_from(millis * 1_000_000).unwrap_or(i32::MAX),
    });
    Some(RetryPolicy {
        minimum_backoff: backoff,
        maximum_backoff: backoff,
    })
}

fn subscription(
    name: &str,
    policy: Option<DeadLetterPolicy>,
    retry_policy: Option<RetryPolicy>,
) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        name: name.into(),
        topic: "orders".into(),
        dead_letter_policy: policy,
        retry_policy,
        ..CreateSubscriptionRequest::default()
    }
}

async fn nack(
    client: &Client,
    sub: &str,
    message: &ReceivedMessage,
    error: &str,
) -> anyhow::Result<()> {
    client
        .subscriber_service()
        .nack(NackRequest {
            subscription: sub.into(),
            ack_ids: vec![message.ack_id.clone()],
            error: error.into(),
            ..NackRequest::default()
        })
        .await?;
    Ok(())
}

/// Every message of a topic, by ReadTopic.
async fn stored(client: &Client, topic: &str) -> anyhow::Result<Vec<ReceivedMessage>> {
    let read = client
        .subscriber_service()
        .read_topic(ReadTopicRequest {
            topic: topic.into(),
            offset: 0,
            max_messages: 1000,
        })
        .await?
        .into_inner();
    Ok(read.messages)
}

/// Waits until the dead-letter topic holds `count` messages.
async fn dead_letters(
    client: &Client,
    topic: &str,
    count: usize,
) -> anyhow::Result<Vec<ReceivedMessage>> {
    within(async {
        loop {
            let messages = stored(client, topic).await?;
            if messages.len() >= count {
                return anyhow::Ok(messages);
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

/// A broker with the topics "orders" and "orders.dead".
async fn with_topics() -> anyhow::Result<(TestBroker, Client)> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_topic(&client, "orders.dead").await?;
    Ok((broker, client))
}

/// A message's attributes, borrowed.
fn attributes_of(message: &ReceivedMessage) -> HashMap<&str, &str> {
    message
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_delivered_max_attempts_times_then_moved_and_redriven()
-> anyhow::Result<()> {
    let (_broker, client) = with_topics().await?;
    client
        .admin_service()
        .create_subscription(subscription(
            "billing",
            dead_letter("orders.dead", 3),
            retry(200),
        ))
        .await?;
    let poison = PublishMessage {
        payload: "poison".into(),
        key: "order-9".into(),
        attributes: HashMap::from([("kind".to_owned(), "order".to_owned())]),
        ..PublishMessage::default()
    };
    publish_messages(&client, "orders", vec![poison]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("billing", "")).await?;
    let mut last_nack: Option<Instant> = None;
    for attempt in 1..=3 {
        let delivery = stream.next().await?;
        assert_eq!(delivery.delivery_attempt, attempt);
        if let Some(at) = last_nack {
            let waited = at.elapsed();
            assert!(
                waited >= Duration::from_millis(200),
                "backoff kept: {waited:?}"
            );
        }
        last_nack = Some(Instant::now());
        nack(&client, "billing", &delivery, &format!("refused {attempt}")).await?;
    }
    let moved = dead_letters(&client, "orders.dead", 1).await?;
    let copy = &moved[0];
    assert_eq!(
        (&copy.payload[..], copy.key.as_str()),
        (&b"poison"[..], "order-9")
    );
    let attributes = attributes_of(copy);
    assert_eq!(
        attributes,
        HashMap::from([
            ("kind", "order"),
            ("tidings.source_topic", "orders"),
            ("tidings.source_subscription", "billing"),
            ("tidings.source_offset", "0"),
            ("tidings.delivery_attempts", "3"),
            ("tidings.dead_letter_reason", "max_delivery_attempts"),
            ("tidings.last_error", "refused 3"),
        ])
    );
    let sub = get_subscription(&client, "billing").await?;
    assert_eq!((sub.dead_lettered, sub.backlog), (1, 0), "{sub:?}");
    assert_eq!(stream.buffered(), 0, "no fourth delivery");

    let redriven = client
        .admin_service()
        .redrive(RedriveRequest {
            subscription: "billing".into(),
            offsets: Vec::new(),
        })
        .await?
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    let back = stream.next().await?;
    assert_eq!(
        (back.offset, back.delivery_attempt),
        (0, 1),
        "attempts from 1 again"
    );
    let sub = get_subscription(&client, "billing").await?;
    assert_eq!((sub.dead_lettered, sub.backlog), (0, 1));
    tidings_tests::ack(&client, "billing", &[0]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_messages_move_at_once_or_are_counted() -> anyhow::Result<()> {
    let (_broker, client) = with_topics().await?;
    let mut admin = client.admin_service();
    admin
        .create_subscription(subscription("with", dead_letter("orders.dead", 5), None))
        .await?;
    admin
        .create_subscription(subscription("without", None, None))
        .await?;
    let bad = PublishMessage {
        payload: "bad".into(),
        id: "order-7/placed".into(),
        ..PublishMessage::default()
    };
    publish_messages(&client, "orders", vec![bad]).await?;
    for name in ["with", "without"] {
        let mut stream = Deliveries::open(&client, subscribe_request(name, "")).await?;
        let delivery = stream.next().await?;
        client
            .subscriber_service()
            .reject(RejectRequest {
                subscription: name.into(),
                ack_ids: vec![delivery.ack_id.clone()],
                error: "unparseable".into(),
                ..RejectRequest::default()
            })
            .await?;
    }
    let moved = dead_letters(&client, "orders.dead", 1).await?;
    let reason = attributes_of(&moved[0]);
    assert_eq!(reason["tidings.dead_letter_reason"], "rejected");
    assert_eq!(reason["tidings.delivery_attempts"], "1");
    assert_eq!(reason["tidings.last_error"], "unparseable");
    assert_eq!(reason["tidings.source_id"], "order-7/placed");
    assert_eq!(
        moved[0].id, "",
        "the copy is not a repeat of anything: no id"
    );
    let with = get_subscription(&client, "with").await?;
    assert_eq!((with.dead_lettered, with.rejected, with.backlog), (1, 0, 0));
    let without = get_subscription(&client, "without").await?;
    assert_eq!(
        (without.dead_lettered, without.rejected, without.backlog),
        (0, 1, 0)
    );
    assert_eq!(
        stored(&client, "orders.dead").await?.len(),
        1,
        "only one copy"
    );

    let long = client
        .subscriber_service()
        .reject(RejectRequest {
            subscription: "with".into(),
            offsets: vec![0],
            error: "x".repeat(1025),
            ..RejectRequest::default()
        })
        .await;
    let status = expect_code(long, Code::InvalidArgument)?;
    assert!(status.message().contains("1025 bytes"), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_dead_letter_policies_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let (_broker, client) = with_topics().await?;
    let mut admin = client.admin_service();
    let cases = [
        (
            dead_letter("orders.dead", 1),
            Code::InvalidArgument,
            "between 2 and 100, not 1",
        ),
        (
            dead_letter("orders.dead", 101),
            Code::InvalidArgument,
            "not 101",
        ),
        (
            dead_letter("orders.dead", 0),
            Code::InvalidArgument,
            "not 0",
        ),
        (
            dead_letter("nowhere", 5),
            Code::NotFound,
            "dead-letter topic \"nowhere\"",
        ),
        (dead_letter("orders", 5), Code::InvalidArgument, "own topic"),
        (
            dead_letter("bad name", 5),
            Code::InvalidArgument,
            "dead_letter_topic",
        ),
    ];
    for (policy, code, words) in cases {
        let refused = admin
            .create_subscription(subscription("s", policy.clone(), None))
            .await;
        let status = expect_code(refused, code)?;
        assert!(status.message().contains(words), "{policy:?}: {status:?}");
        let missing = admin
            .get_subscription(GetSubscriptionRequest { name: "s".into() })
            .await;
        expect_code(missing, Code::NotFound)?;
    }
    admin
        .create_subscription(subscription("s", None, None))
        .await?;
    let update = |policy| UpdateSubscriptionRequest {
        subscription: Some(Subscription {
            name: "s".into(),
            dead_letter_policy: policy,
            ..Subscription::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["dead_letter_policy".into()],
        }),
    };
    expect_code(
        admin
            .update_subscription(update(dead_letter("nowhere", 5)))
            .await,
        Code::NotFound,
    )?;
    expect_code(
        admin
            .update_subscription(update(dead_letter("orders", 5)))
            .await,
        Code::InvalidArgument,
    )?;
    assert_eq!(
        get_subscription(&client, "s").await?.dead_letter_policy,
        None
    );
    let set = admin
        .update_subscription(update(dead_letter("orders.dead", 4)))
        .await?
        .into_inner()
        .subscription
        .and_then(|s| s.dead_letter_policy);
    assert_eq!(set, dead_letter("orders.dead", 4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_its_topic_a_message_keeps_being_retried_until_the_topic_exists()
-> anyhow::Result<()> {
    let (_broker, client) = with_topics().await?;
    client
        .admin_service()
        .create_subscription(subscription("s", dead_letter("orders.dead", 2), retry(50)))
        .await?;
    client
        .admin_service()
        .delete_topic(tidings::v1::DeleteTopicRequest {
            name: "orders.dead".into(),
        })
        .await?;
    publish(&client, "orders", &["stuck"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    for attempt in 1..=2 {
        let delivery = stream.next().await?;
        assert_eq!(delivery.delivery_attempt, attempt);
        nack(&client, "s", &delivery, "").await?;
    }
    // Not moved: delivered again after its backoff.
    let again = stream.next().await?;
    assert_eq!(again.delivery_attempt, 3);
    assert_eq!(get_subscription(&client, "s").await?.dead_lettered, 0);
    create_topic(&client, "orders.dead").await?;
    nack(&client, "s", &again, "").await?;
    let moved = dead_letters(&client, "orders.dead", 1).await?;
    assert_eq!(&moved[0].payload[..], b"stuck");
    assert_eq!(get_subscription(&client, "s").await?.dead_lettered, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_and_attempts_survive_a_restart() -> anyhow::Result<()> {
    let (mut broker, client) = with_topics().await?;
    client
        .admin_service()
        .create_subscription(subscription("s", dead_letter("orders.dead", 3), None))
        .await?;
    publish(&client, "orders", &["a", "b"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    // a fails three times and moves; b fails twice and stays.
    // b's third delivery is held, not settled.
    let mut failures: HashMap<u64, u32> = HashMap::new();
    let mut b_held = false;
    while failures.get(&0) != Some(&3) || !b_held {
        let delivery = stream.next().await?;
        let count = failures.entry(delivery.offset).or_default();
        if delivery.offset == 1 && *count == 2 {
            b_held = true;
            continue;
        }
        *count += 1;
        nack(&client, "s", &delivery, "").await?;
    }
    dead_letters(&client, "orders.dead", 1).await?;
    // b is leased to the stream: the broker's own shutdown ends the stream
    // without counting that as a failure (a client hanging up would count,
    // and move b too).
    broker.restart().await?;
    drop(stream);
    let client = broker.client();
    let sub = get_subscription(&client, "s").await?;
    assert_eq!((sub.dead_lettered, sub.backlog), (1, 1));
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let b = stream.next().await?;
    assert_eq!(b.offset, 1);
    assert!(
        b.delivery_attempt >= 3,
        "attempts continue: {}",
        b.delivery_attempt
    );
    let redriven = client.redrive("s", &[0, 7]).await?;
    assert_eq!(redriven, 1, "7 is not dead-lettered and is ignored");
    let a = stream.next().await?;
    assert_eq!((a.offset, a.delivery_attempt), (0, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_message_releases_its_key() -> anyhow::Result<()> {
    let (_broker, client) = with_topics().await?;
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            enable_message_ordering: true,
            ..subscription("s", dead_letter("orders.dead", 2), None)
        })
        .await?;
    let keyed = |payload: &str| PublishMessage {
        payload: payload.to_owned().into(),
        key: "order-1".into(),
        ..PublishMessage::default()
    };
    publish_messages(&client, "orders", vec![keyed("placed"), keyed("paid")]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    for attempt in 1..=2 {
        let placed = stream.next().await?;
        assert_eq!(
            (&placed.payload[..], placed.delivery_attempt),
            (&b"placed"[..], attempt)
        );
        nack(&client, "s", &placed, "").await?;
    }
    let paid = stream.next().await?;
    assert_eq!(&paid.payload[..], b"paid", "the key moved on");
    assert_eq!(stored(&client, "orders.dead").await?.len(), 1);
    Ok(())
}
