//! Ordered subscriptions over gRPC, with the Rust client: the messages of
//! one key are handled in offset order, one at a time across competing
//! streams, and a key that keeps failing holds back only itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tidings::v1::PublishMessage;
use tidings_client::{Client, RetryPolicy, SubscriptionConfig};
use tidings_tests::{TestBroker, publish_messages};
use tokio::sync::Notify;

const KEYS: usize = 100;
const PER_KEY: usize = 50;
const STREAMS: usize = 4;
const POISON: &str = "key-13";

/// What the handlers saw, per key.
#[derive(Default)]
struct Seen {
    /// A handler is working on a message of this key now.
    busy: HashMap<String, bool>,
    /// Offsets handled to completion, in the order handled.
    done: HashMap<String, Vec<u64>>,
    /// Every offset of the poison key delivered, with its attempt.
    poison: Vec<(u64, u32)>,
    /// Broken promises, as text.
    violations: Vec<String>,
}

/// A small, seeded pseudo-random sequence for handler delays.
fn delay_for(offset: u64) -> Duration {
    let mixed = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    Duration::from_micros(mixed % 2000)
}

async fn publish_keyed(client: &Client) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let mut messages = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            messages.push(PublishMessage {
                payload: format!("{k}:{n}").into(),
                key: format!("key-{k}"),
                ..PublishMessage::default()
            });
        }
    }
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for chunk in messages.chunks(500) {
        let offsets = publish_messages(client, "t", chunk.to_vec()).await?;
        for (message, offset) in chunk.iter().zip(offsets) {
            expected
                .entry(message.key.clone())
                .or_default()
                .push(offset);
        }
    }
    Ok(expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_handled_in_order_one_at_a_time_and_a_failing_key_holds_back_only_itself()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("t").await?;
    let created = client
        .create_subscription(
            SubscriptionConfig::new("s", "t")
                .enable_message_ordering(true)
                .retry_policy(RetryPolicy::new(
                    Duration::from_millis(50),
                    Duration::from_millis(200),
                )),
        )
        .await?;
    assert!(created.enable_message_ordering);
    let expected = publish_keyed(&client).await?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(Notify::new());
    let mut consumers = Vec::new();
    for _ in 0..STREAMS {
        let mut subscriber = client.subscriber("s").subscribe().await?;
        let (seen, progress) = (Arc::clone(&seen), Arc::clone(&progress));
        consumers.push(tokio::spawn(async move {
            while let Some(delivery) = subscriber.next().await {
                let Ok(delivery) = delivery else { break };
                let (seen, progress) = (Arc::clone(&seen), Arc::clone(&progress));
                tokio::spawn(async move {
                    let key = delivery.key().to_owned();
                    let offset = delivery.offset();
                    {
                        let mut seen = seen.lock().expect("not poisoned");
                        if key == POISON {
                            seen.poison.push((offset, delivery.delivery_attempt()));
                        }
                        if seen.busy.insert(key.clone(), true) == Some(true) {
                            seen.violations.push(format!("{key}: {offset} overlaps"));
                        }
                        let last = seen.done.get(&key).and_then(|d| d.last().copied());
                        if last.is_some_and(|last| offset <= last) {
                            seen.violations
                                .push(format!("{key}: {offset} after {last:?}"));
                        }
                    }
                    tokio::time::sleep(delay_for(offset)).await;
                    {
                        let mut seen = seen.lock().expect("not poisoned");
                        seen.busy.insert(key.clone(), false);
                        if key != POISON {
                            seen.done.entry(key.clone()).or_default().push(offset);
                        }
                    }
                    if key == POISON {
                        delivery.nack();
                    } else {
                        delivery.ack();
                    }
                    progress.notify_one();
                });
            }
        }));
    }

    let healthy_total = (KEYS - 1) * PER_KEY;
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let notified = progress.notified();
            {
                let seen = seen.lock().expect("not poisoned");
                let done: usize = seen.done.values().map(Vec::len).sum();
                let retried = seen.poison.iter().any(|&(_, attempt)| attempt >= 3);
                if done >= healthy_total && retried {
                    return;
                }
            }
            notified.await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the healthy keys did not all complete within 120 s"))?;

    let seen = seen.lock().expect("not poisoned");
    assert!(
        seen.violations.is_empty(),
        "{:?}",
        &seen.violations[..5.min(seen.violations.len())]
    );
    for (key, offsets) in &expected {
        if key == POISON {
            continue;
        }
        assert_eq!(
            seen.done.get(key),
            Some(offsets),
            "{key} in offset order, each once"
        );
    }
    let first_poison = expected[POISON][0];
    assert!(
        seen.poison
            .iter()
            .all(|&(offset, _)| offset == first_poison),
        "only the failing message of the failing key came: {:?}",
        seen.poison
    );
    drop(seen);
    for consumer in consumers {
        consumer.abort();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ordering_is_fixed_at_creation_and_reported() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("t").await?;
    client
        .create_subscription(SubscriptionConfig::new("plain", "t"))
        .await?;
    assert!(
        !client
            .get_subscription("plain")
            .await?
            .enable_message_ordering
    );
    client
        .create_subscription(SubscriptionConfig::new("ordered", "t").enable_message_ordering(true))
        .await?;
    assert!(
        client
            .get_subscription("ordered")
            .await?
            .enable_message_ordering
    );
    let mut admin = client.admin_service();
    let refused = admin
        .update_subscription(tidings::v1::UpdateSubscriptionRequest {
            subscription: Some(tidings::v1::Subscription {
                name: "ordered".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enable_message_ordering".into()],
            }),
        })
        .await;
    let status = tidings_tests::expect_code(refused, tonic::Code::InvalidArgument)?;
    assert!(status.message().contains("fixed"), "{status:?}");
    assert!(
        client
            .get_subscription("ordered")
            .await?
            .enable_message_ordering
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_order_of_a_key() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("t").await?;
    client
        .create_subscription(SubscriptionConfig::new("s", "t").enable_message_ordering(true))
        .await?;
    let keyed = |payload: &str| PublishMessage {
        payload: payload.to_owned().into(),
        key: "order-7".into(),
        ..PublishMessage::default()
    };
    // A message of another key last: once it arrives, the rest of
    // order-7 was held back, not merely slower.
    let other = PublishMessage {
        payload: "other".into(),
        key: "order-8".into(),
        ..PublishMessage::default()
    };
    publish_messages(
        &client,
        "t",
        vec![keyed("placed"), keyed("paid"), keyed("shipped"), other],
    )
    .await?;
    let request = tidings_tests::subscribe_request("s", "");
    let mut stream = tidings_tests::Deliveries::open(&client, request.clone()).await?;
    let placed = stream.next().await?;
    assert_eq!(&placed.payload[..], b"placed");
    let next = stream.next().await?;
    assert_eq!(
        &next.payload[..],
        b"other",
        "one message of the key at a time"
    );

    broker.restart().await?;
    let client = broker.client();
    let mut stream = tidings_tests::Deliveries::open(&client, request).await?;
    let again = stream.next().await?;
    assert_eq!(
        &again.payload[..],
        b"placed",
        "the unacknowledged head comes first"
    );
    let next = stream.next().await?;
    assert_eq!(
        &next.payload[..],
        b"other",
        "the key's next message waits for its head's ack after the restart too"
    );
    tidings_tests::ack(&client, "s", &[again.offset]).await?;
    let paid = stream.next().await?;
    assert_eq!(&paid.payload[..], b"paid");
    tidings_tests::ack(&client, "s", &[paid.offset]).await?;
    let shipped = stream.next().await?;
    assert_eq!(&shipped.payload[..], b"shipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_message_lets_the_rest_of_its_key_flow_in_order() -> anyhow::Result<()> {
    const KEYS: usize = 20;
    const PER_KEY: usize = 10;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("t").await?;
    client.create_topic("t.dead").await?;
    client
        .create_subscription(
            SubscriptionConfig::new("s", "t")
                .enable_message_ordering(true)
                .retry_policy(RetryPolicy::new(
                    Duration::from_millis(10),
                    Duration::from_millis(20),
                ))
                .dead_letter_policy(tidings_client::DeadLetterPolicy::new("t.dead", 2)),
        )
        .await?;
    let mut messages = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            messages.push(PublishMessage {
                payload: format!("{k}:{n}").into(),
                key: format!("key-{k}"),
                ..PublishMessage::default()
            });
        }
    }
    let offsets = publish_messages(&client, "t", messages.clone()).await?;
    let poison: Vec<u64> = messages
        .iter()
        .zip(&offsets)
        .filter(|(m, _)| m.key == POISON)
        .map(|(_, &o)| o)
        .collect();
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let mut healthy = 0;
    let mut poison_seen: Vec<(u64, u32)> = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while healthy < (KEYS - 1) * PER_KEY || poison_seen.len() < 2 * PER_KEY {
            let Some(delivery) = subscriber.next().await else {
                anyhow::bail!("the stream ended");
            };
            let delivery = delivery?;
            if delivery.key() == POISON {
                poison_seen.push((delivery.offset(), delivery.delivery_attempt()));
                delivery.nack();
            } else {
                healthy += 1;
                delivery.ack();
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("not every message was handled in time"))??;
    // Each poison message twice, one after another, in offset order.
    let expected: Vec<(u64, u32)> = poison.iter().flat_map(|&o| [(o, 1), (o, 2)]).collect();
    assert_eq!(poison_seen, expected);
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let sub = client.get_subscription("s").await?;
            if sub.dead_lettered == PER_KEY as u64 {
                return anyhow::Ok(sub);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the poison messages were not all moved"))??;
    assert_eq!(moved.backlog, 0);
    Ok(())
}
