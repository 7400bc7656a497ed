//! Broker tests over the in-memory store, with tokio's paused clock where
//! deadlines matter.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::time::timeout;

use super::test_store::{Read, TestStore};
use super::*;
use crate::storage::{MemoryStore, NewMessage, Store};

/// How long a test waits for an event; only reached when it fails.
const WAIT: Duration = Duration::from_secs(10);

async fn broker() -> Broker {
    broker_with(BrokerConfig::default()).await
}

async fn broker_with(config: BrokerConfig) -> Broker {
    Broker::open(Arc::new(MemoryStore::new()), config)
        .await
        .expect("open broker")
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid topic name")
}

fn sub(name: &str) -> SubscriptionName {
    SubscriptionName::new(name).expect("valid subscription name")
}

fn messages(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage {
            payload: Bytes::from(format!("m{i}")),
            ..NewMessage::default()
        })
        .collect()
}

fn spec(subscription: &str, topic_name: &str) -> SubscribeSpec {
    SubscribeSpec {
        subscription: sub(subscription),
        topic: Some(topic(topic_name)),
        start: StartPosition::Earliest,
        ack_deadline: None,
        max_outstanding: None,
        max_outstanding_bytes: None,
        max_messages: None,
    }
}

/// Receives deliveries until `n` have arrived.
async fn receive(stream: &mut DeliveryStream, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = timeout(WAIT, stream.next())
            .await
            .expect("deliveries arrive in time")
            .expect("stream still open")
            .expect("no stream error");
        got.extend(frame);
    }
    got
}

fn offsets(deliveries: &[Delivery]) -> Vec<Offset> {
    deliveries.iter().map(|d| d.message.offset).collect()
}

#[tokio::test]
async fn published_messages_reach_a_stream_in_offset_order() {
    let broker = broker().await;
    broker.create_topic(topic("orders")).await.unwrap();
    let first = broker.publish(&topic("orders"), messages(3)).await.unwrap();
    assert_eq!(first.offsets, [0, 1, 2]);
    assert_eq!(first.duplicates, [false; 3]);
    let mut stream = broker.subscribe(spec("s", "orders")).await.unwrap();
    let got = receive(&mut stream, 3).await;
    assert_eq!(offsets(&got), vec![0, 1, 2]);
    assert!(got.iter().all(|d| d.attempt == 1));
    assert_eq!(got[1].message.payload, Bytes::from("m1"));

    // New messages reach the open stream without polling.
    broker.publish(&topic("orders"), messages(2)).await.unwrap();
    assert_eq!(offsets(&receive(&mut stream, 2).await), vec![3, 4]);
}

#[tokio::test(start_paused = true)]
async fn unacked_message_is_redelivered_after_deadline() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker
        .create_subscription(SubscriptionSpec {
            name: sub("s"),
            topic: topic("t"),
            ack_deadline: Some(Duration::from_secs(2)),
            start: StartPosition::Earliest,
            filter: String::new(),
            retry: None,
            ordered: false,
            dead_letter: None,
            delivery_delay: Duration::ZERO,
            push: None,
        })
        .await
        .unwrap();
    broker.publish(&topic("t"), messages(1)).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    assert_eq!(receive(&mut stream, 1).await[0].attempt, 1);
    // The paused clock jumps to the lease deadline once every task idles.
    let again = receive(&mut stream, 1).await;
    assert_eq!((again[0].message.offset, again[0].attempt), (0, 2));
}

#[tokio::test]
async fn a_stream_never_holds_more_than_max_outstanding() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(10)).await.unwrap();
    let mut stream = broker
        .subscribe(SubscribeSpec {
            max_outstanding: Some(3),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    let got = receive(&mut stream, 3).await;
    assert_eq!(offsets(&got), vec![0, 1, 2]);
    assert!(
        futures::FutureExt::now_or_never(stream.next()).is_none(),
        "nothing beyond the limit"
    );
    assert_eq!(broker.get_subscription(&sub("s")).unwrap().in_flight, 3);

    broker.ack(&sub("s"), &[0, 1], &[]).await.unwrap();
    assert_eq!(offsets(&receive(&mut stream, 2).await), vec![3, 4]);
    let info = broker.get_subscription(&sub("s")).unwrap();
    assert_eq!((info.in_flight, info.backlog, info.ack_floor), (3, 8, 2));
}

#[tokio::test]
async fn nacked_message_comes_back_with_the_next_attempt() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(2)).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    receive(&mut stream, 2).await;
    broker
        .nack(&sub("s"), &[1], &[], Duration::ZERO, "")
        .await
        .unwrap();
    let again = receive(&mut stream, 1).await;
    assert_eq!((again[0].message.offset, again[0].attempt), (1, 2));
}

#[tokio::test]
async fn ending_a_stream_hands_its_messages_to_another() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(2)).await.unwrap();
    let mut first = broker.subscribe(spec("s", "t")).await.unwrap();
    receive(&mut first, 2).await;
    let mut second = broker.subscribe(spec("s", "t")).await.unwrap();
    drop(first);
    let again = receive(&mut second, 2).await;
    assert_eq!(offsets(&again), vec![0, 1]);
    assert!(again.iter().all(|d| d.attempt == 2));
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_shutting_down() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    broker.begin_shutdown();
    let end = timeout(WAIT, stream.next()).await.unwrap();
    assert!(
        matches!(end, Some(Err(BrokerError::ShuttingDown))),
        "{end:?}"
    );
    assert!(matches!(
        broker.subscribe(spec("s", "t")).await,
        Err(BrokerError::ShuttingDown)
    ));
    timeout(WAIT, broker.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn deleting_a_topic_ends_streams_and_removes_subscriptions() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    broker.delete_topic(&topic("t")).await.unwrap();
    let end = timeout(WAIT, stream.next()).await.unwrap();
    assert!(
        matches!(end, Some(Err(BrokerError::TopicDeleted(_)))),
        "{end:?}"
    );
    assert!(matches!(
        broker.get_subscription(&sub("s")),
        Err(BrokerError::SubscriptionNotFound(_))
    ));
    assert!(matches!(
        broker.publish(&topic("t"), messages(1)).await,
        Err(BrokerError::TopicNotFound(_))
    ));
}

#[tokio::test]
async fn bad_publishes_are_refused_and_change_nothing() {
    let broker = broker_with(BrokerConfig {
        max_message_bytes: 10,
        ..BrokerConfig::default()
    })
    .await;
    broker.create_topic(topic("t")).await.unwrap();
    assert!(matches!(
        broker.publish(&topic("t"), Vec::new()).await,
        Err(BrokerError::EmptyBatch)
    ));
    let big = vec![NewMessage {
        payload: Bytes::from(vec![0; 11]),
        ..NewMessage::default()
    }];
    assert!(matches!(
        broker.publish(&topic("t"), big).await,
        Err(BrokerError::MessageTooLarge {
            index: 0,
            size: 11,
            limit: 10
        })
    ));
    assert_eq!(broker.get_topic(&topic("t")).unwrap().next_offset, 0);
}

#[tokio::test]
async fn auto_created_topic_accepts_the_first_publish() {
    let broker = broker_with(BrokerConfig {
        auto_create_topics: true,
        ..BrokerConfig::default()
    })
    .await;
    assert_eq!(
        broker
            .publish(&topic("new"), messages(1))
            .await
            .unwrap()
            .offsets,
        [0]
    );
    assert_eq!(broker.get_topic(&topic("new")).unwrap().next_offset, 1);
}

#[tokio::test]
async fn subscription_on_another_topic_is_a_precondition_failure() {
    let broker = broker().await;
    broker.create_topic(topic("a")).await.unwrap();
    broker.create_topic(topic("b")).await.unwrap();
    let _stream = broker.subscribe(spec("s", "a")).await.unwrap();
    assert!(matches!(
        broker.subscribe(spec("s", "b")).await,
        Err(BrokerError::TopicMismatch { .. })
    ));
}

#[tokio::test]
async fn listing_pages_through_names_in_order() {
    let broker = broker().await;
    for name in ["c", "a", "b"] {
        broker.create_topic(topic(name)).await.unwrap();
    }
    let first = broker.list_topics(None, 2);
    let names: Vec<_> = first.items.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["a", "b"]);
    let rest = broker.list_topics(first.next_after.as_deref(), 2);
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_after, None);
}

async fn gated_broker() -> (Broker, TestStore) {
    let store = TestStore::new(MemoryStore::new());
    let broker = Broker::open(Arc::new(store.clone()), BrokerConfig::default())
        .await
        .expect("open broker");
    (broker, store)
}

/// Starts `call` on a task, waits until its write reached the store, then
/// cancels the task (its client gave up) and lets the write complete.
async fn cancel_after_the_write_began<T: Send + 'static>(
    store: &TestStore,
    call: impl Future<Output = T> + Send + 'static,
) {
    store.close_gate();
    let task = tokio::spawn(call);
    timeout(WAIT, store.arrived.notified())
        .await
        .expect("the write reached the store");
    task.abort();
    let joined = task.await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_cancelled()),
        "cancelled midway: {:?}",
        joined.map(drop)
    );
    store.open_gate();
}

/// Reads a stream to its end; returns how many messages came and the
/// error it ended with.
async fn read_to_the_end(stream: &mut DeliveryStream) -> (usize, Option<BrokerError>) {
    let mut count = 0;
    loop {
        match timeout(WAIT, stream.next()).await.expect("the stream ends") {
            Some(Ok(frame)) => count += frame.len(),
            Some(Err(err)) => return (count, Some(err)),
            None => return (count, None),
        }
    }
}

fn with_deadline(name: &str, topic_name: &str, deadline: Duration) -> SubscriptionSpec {
    SubscriptionSpec {
        name: sub(name),
        topic: topic(topic_name),
        ack_deadline: Some(deadline),
        start: StartPosition::Earliest,
        filter: String::new(),
        retry: None,
        ordered: false,
        dead_letter: None,
        delivery_delay: Duration::ZERO,
        push: None,
    }
}

#[tokio::test]
async fn a_publish_cancelled_after_its_write_began_is_still_delivered() {
    let (broker, store) = gated_broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    let publisher = broker.clone();
    cancel_after_the_write_began(&store, async move {
        publisher.publish(&topic("t"), messages(1)).await
    })
    .await;
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    assert_eq!(offsets(&receive(&mut stream, 1).await), vec![0]);
    assert_eq!(broker.get_topic(&topic("t")).unwrap().next_offset, 1);
    broker
        .ack(&sub("s"), &[0], &[])
        .await
        .expect("offset 0 is known");
}

#[tokio::test]
async fn a_cancelled_create_topic_still_names_the_one_topic_it_stored() {
    let (broker, store) = gated_broker().await;
    let admin = broker.clone();
    cancel_after_the_write_began(&store, async move { admin.create_topic(topic("t")).await }).await;
    let retry = timeout(WAIT, broker.create_topic(topic("t")))
        .await
        .unwrap();
    assert!(
        matches!(retry, Err(BrokerError::TopicExists(_))),
        "{retry:?}"
    );
    assert_eq!(
        store.inner.load().await.unwrap().topics.len(),
        1,
        "one record"
    );
    broker.delete_topic(&topic("t")).await.unwrap();
    let reopened = store.inner.reopen().load().await.unwrap();
    assert!(reopened.topics.is_empty(), "a deleted topic stays deleted");
}

#[tokio::test]
async fn a_cancelled_delete_keeps_the_name_until_the_store_deleted_it_then_drops_it() {
    let (broker, store) = gated_broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.create_topic(topic("u")).await.unwrap();
    broker
        .create_subscription(with_deadline("s", "u", Duration::from_secs(30)))
        .await
        .unwrap();
    store.close_gate();
    let admin = broker.clone();
    let deleting = tokio::spawn(async move { admin.delete_topic(&topic("t")).await });
    timeout(WAIT, store.arrived.notified()).await.unwrap();
    assert!(broker.get_topic(&topic("t")).is_ok(), "named while stored");
    deleting.abort();
    let _ = deleting.await;
    store.open_gate();
    let admin = broker.clone();
    cancel_after_the_write_began(
        &store,
        async move { admin.delete_subscription(&sub("s")).await },
    )
    .await;
    // Admin changes run one at a time: these wait for the deletions.
    let again = timeout(WAIT, broker.create_topic(topic("t")))
        .await
        .unwrap();
    assert!(again.is_ok(), "{again:?}");
    let again = timeout(
        WAIT,
        broker.create_subscription(with_deadline("s", "u", Duration::from_secs(30))),
    );
    assert!(again.await.unwrap().is_ok());
    let stored = store.inner.load().await.unwrap();
    assert_eq!((stored.topics.len(), stored.subscriptions.len()), (2, 1));
}

#[tokio::test]
async fn a_cancelled_create_subscription_still_names_what_it_stored() {
    let (broker, store) = gated_broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    let admin = broker.clone();
    cancel_after_the_write_began(&store, async move {
        admin
            .create_subscription(with_deadline("s", "t", Duration::from_secs(30)))
            .await
    })
    .await;
    let retry = broker
        .create_subscription(with_deadline("s", "t", Duration::from_secs(30)))
        .await;
    assert!(
        matches!(retry, Err(BrokerError::SubscriptionExists(_))),
        "{retry:?}"
    );
    assert_eq!(store.inner.load().await.unwrap().subscriptions.len(), 1);
}

#[tokio::test]
async fn a_stream_with_every_slot_taken_gets_its_expired_lease_back() {
    // Real time: with a 1 s deadline and a 10 s wait, the margin is 10x.
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker
        .create_subscription(with_deadline("s", "t", Duration::from_secs(1)))
        .await
        .unwrap();
    broker.publish(&topic("t"), messages(1)).await.unwrap();
    let mut stream = broker
        .subscribe(SubscribeSpec {
            max_outstanding: Some(1),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    assert_eq!(receive(&mut stream, 1).await[0].attempt, 1);
    // Nothing else touches the subscription meanwhile: the stream itself
    // must settle the expired lease.
    let again = receive(&mut stream, 1).await;
    assert_eq!((again[0].message.offset, again[0].attempt), (0, 2));
}

#[tokio::test]
async fn the_error_that_ends_a_stream_gets_past_frames_the_client_has_not_read() {
    for shutdown in [false, true] {
        let broker = broker_with(BrokerConfig {
            max_frame_bytes: 1,
            ..BrokerConfig::default()
        })
        .await;
        broker.create_topic(topic("t")).await.unwrap();
        broker.publish(&topic("t"), messages(20)).await.unwrap();
        let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
        // All 20 leased: the stream is stuck sending one message per frame
        // into a buffer of two that nobody reads.
        timeout(WAIT, async {
            while broker.get_subscription(&sub("s")).unwrap().in_flight < 20 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        if shutdown {
            broker.begin_shutdown();
        } else {
            broker.delete_subscription(&sub("s")).await.unwrap();
        }
        let (count, end) = read_to_the_end(&mut stream).await;
        assert!(count < 20, "ended early");
        let expected = if shutdown {
            matches!(end, Some(BrokerError::ShuttingDown))
        } else {
            matches!(end, Some(BrokerError::SubscriptionDeleted(_)))
        };
        assert!(expected, "shutdown {shutdown}: {end:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_nack_from_an_expired_lease_cannot_take_the_message_from_its_new_holder() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker
        .create_subscription(with_deadline("s", "t", Duration::from_secs(2)))
        .await
        .unwrap();
    broker.publish(&topic("t"), messages(1)).await.unwrap();
    let mut a = broker
        .subscribe(SubscribeSpec {
            max_messages: Some(1),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    let first = receive(&mut a, 1).await.remove(0);
    let mut b = broker.subscribe(spec("s", "t")).await.unwrap();
    // The paused clock runs to the deadline: a's lease expires, b gets it.
    let second = receive(&mut b, 1).await.remove(0);
    assert_eq!((second.message.offset, second.attempt), (0, 2));
    assert_ne!(first.ack_id, second.ack_id);

    let stale = std::slice::from_ref(&first.ack_id);
    broker
        .nack(&sub("s"), &[], stale, Duration::ZERO, "")
        .await
        .unwrap();
    broker
        .modify_ack_deadline(&sub("s"), &[], stale, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        broker.get_subscription(&sub("s")).unwrap().in_flight,
        1,
        "b holds it"
    );
    let own = std::slice::from_ref(&second.ack_id);
    broker
        .nack(&sub("s"), &[], own, Duration::ZERO, "")
        .await
        .unwrap();
    let third = receive(&mut b, 1).await.remove(0);
    assert_eq!(third.attempt, 3);
    // An ack of the stale delivery still acknowledges: the work was done.
    broker.ack(&sub("s"), &[], stale).await.unwrap();
    let info = broker.get_subscription(&sub("s")).unwrap();
    assert_eq!((info.backlog, info.in_flight), (0, 0));
}

#[test]
fn ack_ids_round_trip_and_anything_else_is_malformed() {
    let id = AckId {
        subscription: crate::storage::SubscriptionId(7),
        offset: 0,
        lease: u64::MAX,
    };
    assert_eq!(id.encode(), "7-0-18446744073709551615");
    assert_eq!(AckId::parse(&id.encode()).unwrap(), id);
    for bad in [
        "",
        "7-0",
        "7-0-1-2",
        "7--1",
        "a-0-1",
        "7-0-18446744073709551616",
        " 7-0-1",
    ] {
        assert!(
            matches!(AckId::parse(bad), Err(BrokerError::InvalidAckId(_))),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn ack_ids_are_checked_and_those_of_another_subscription_name_nothing() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(1)).await.unwrap();
    let mut s = broker.subscribe(spec("s", "t")).await.unwrap();
    let mut other = broker.subscribe(spec("other", "t")).await.unwrap();
    let theirs = receive(&mut other, 1).await.remove(0);
    receive(&mut s, 1).await;
    let bad = broker.ack(&sub("s"), &[0], &["0-0".to_owned()]).await;
    assert!(matches!(bad, Err(BrokerError::InvalidAckId(_))), "{bad:?}");
    let foreign = std::slice::from_ref(&theirs.ack_id);
    broker.ack(&sub("s"), &[], foreign).await.unwrap();
    let info = broker.get_subscription(&sub("s")).unwrap();
    assert_eq!(
        info.backlog, 1,
        "neither the bad request nor the foreign id acked"
    );
}

#[tokio::test]
async fn a_max_messages_stream_whose_client_leaves_hands_back_what_it_never_sent() {
    let broker = broker_with(BrokerConfig {
        max_frame_bytes: 1,
        ..BrokerConfig::default()
    })
    .await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(5)).await.unwrap();
    let mut leaving = broker
        .subscribe(SubscribeSpec {
            max_messages: Some(5),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    receive(&mut leaving, 1).await;
    drop(leaving);
    // Well before the 30 s ack deadline, every message comes again.
    let mut next = broker.subscribe(spec("s", "t")).await.unwrap();
    let mut got = offsets(&receive(&mut next, 5).await);
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn requests_that_outlive_the_store_are_told_the_broker_is_shutting_down() {
    let store = MemoryStore::new();
    let broker = Broker::open(Arc::new(store.clone()), BrokerConfig::default())
        .await
        .unwrap();
    broker.create_topic(topic("t")).await.unwrap();
    store.close().await.unwrap();
    let published = broker.publish(&topic("t"), messages(1)).await;
    assert!(
        matches!(published, Err(BrokerError::ShuttingDown)),
        "{published:?}"
    );
    let created = broker.create_topic(topic("u")).await;
    assert!(
        matches!(created, Err(BrokerError::ShuttingDown)),
        "{created:?}"
    );
}

#[tokio::test]
async fn delivery_reads_are_bounded_and_skip_acknowledged_runs() {
    let memory = MemoryStore::new();
    let broker = Broker::open(Arc::new(memory.clone()), BrokerConfig::default())
        .await
        .unwrap();
    broker.create_topic(topic("t")).await.unwrap();
    broker
        .create_subscription(with_deadline("s", "t", Duration::from_secs(30)))
        .await
        .unwrap();
    broker.publish(&topic("t"), messages(1000)).await.unwrap();
    let acked: Vec<Offset> = (1..998).collect();
    broker.ack(&sub("s"), &acked, &[]).await.unwrap();
    broker.close().await.unwrap();

    let store = TestStore::new(memory.reopen());
    let broker = Broker::open(Arc::new(store.clone()), BrokerConfig::default())
        .await
        .unwrap();
    let mut stream = broker
        .subscribe(SubscribeSpec {
            max_outstanding: Some(10),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    assert_eq!(offsets(&receive(&mut stream, 3).await), vec![0, 998, 999]);
    let reads = store.reads();
    assert!(!reads.is_empty());
    for read in reads {
        let Read::Range(range, limit) = read else {
            panic!("first deliveries are read by range: {read:?}");
        };
        assert!(
            range.end <= 1 || range.start >= 998,
            "a read spans acknowledged messages: {range:?}"
        );
        assert!(
            limit.max_messages <= 10 && limit.max_bytes <= 4 << 20,
            "{limit:?}"
        );
    }
}

#[tokio::test]
async fn delivery_attempts_continue_after_a_restart_but_not_for_a_shutdown() {
    let memory = MemoryStore::new();
    let broker = Broker::open(Arc::new(memory.clone()), BrokerConfig::default())
        .await
        .unwrap();
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(2)).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    receive(&mut stream, 2).await;
    broker
        .nack(&sub("s"), &[0], &[], Duration::ZERO, "")
        .await
        .unwrap();
    assert_eq!(receive(&mut stream, 1).await[0].attempt, 2);
    // Offset 0 is out a second time and 1 a first time as the broker stops.
    broker.close().await.unwrap();

    let broker = Broker::open(Arc::new(memory.reopen()), BrokerConfig::default())
        .await
        .unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    let mut got: Vec<(Offset, u32)> = receive(&mut stream, 2)
        .await
        .iter()
        .map(|d| (d.message.offset, d.attempt))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![(0, 2), (1, 1)],
        "one counted failure, none for the shutdown"
    );
}

#[tokio::test]
async fn a_stream_holds_no_more_bytes_than_it_asked_for() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    // Messages of 1000 bytes: about 1032 each on the wire.
    let big: Vec<NewMessage> = (0..10)
        .map(|_| NewMessage {
            payload: Bytes::from(vec![7; 1000]),
            ..NewMessage::default()
        })
        .collect();
    broker.publish(&topic("t"), big).await.unwrap();
    let mut stream = broker
        .subscribe(SubscribeSpec {
            max_outstanding_bytes: Some(3000),
            ..spec("s", "t")
        })
        .await
        .unwrap();
    assert_eq!(offsets(&receive(&mut stream, 2).await), vec![0, 1]);
    assert_eq!(broker.get_subscription(&sub("s")).unwrap().in_flight, 2);
    broker.ack(&sub("s"), &[0], &[]).await.unwrap();
    assert_eq!(offsets(&receive(&mut stream, 1).await), vec![2]);
    assert_eq!(broker.get_subscription(&sub("s")).unwrap().in_flight, 2);
}

#[tokio::test]
async fn reading_a_topic_by_offset_takes_nothing_from_subscriptions() {
    let broker = broker().await;
    broker.create_topic(topic("t")).await.unwrap();
    broker.publish(&topic("t"), messages(5)).await.unwrap();
    broker
        .create_subscription(with_deadline("s", "t", Duration::from_secs(30)))
        .await
        .unwrap();
    let read = broker.read_topic(&topic("t"), 1, 3).await.unwrap();
    let got: Vec<Offset> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(
        (got, read.next_offset, read.end_offset),
        (vec![1, 2, 3], 4, 5)
    );
    let rest = broker
        .read_topic(&topic("t"), read.next_offset, 3)
        .await
        .unwrap();
    assert_eq!((rest.messages.len(), rest.next_offset), (1, 5));
    let past = broker.read_topic(&topic("t"), 99, 3).await.unwrap();
    assert!(past.messages.is_empty() && past.next_offset == 5);
    let info = broker.get_subscription(&sub("s")).unwrap();
    assert_eq!(
        (info.backlog, info.in_flight),
        (5, 0),
        "nothing leased or acked"
    );
    let missing = broker.read_topic(&topic("nope"), 0, 3).await;
    assert!(
        matches!(missing, Err(BrokerError::TopicNotFound(_))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_dead_letter_move_stores_the_copy_and_the_settlement_in_one_write() {
    let store = TestStore::new(MemoryStore::new());
    let broker = Broker::open(Arc::new(store.clone()), BrokerConfig::default())
        .await
        .unwrap();
    broker.create_topic(topic("t")).await.unwrap();
    broker.create_topic(topic("t.dead")).await.unwrap();
    broker
        .create_subscription(SubscriptionSpec {
            dead_letter: Some(DeadLetterPolicy {
                topic: topic("t.dead"),
                max_delivery_attempts: 2,
            }),
            ..with_deadline("s", "t", Duration::from_secs(60))
        })
        .await
        .unwrap();
    broker.publish(&topic("t"), messages(3)).await.unwrap();
    let mut stream = broker.subscribe(spec("s", "t")).await.unwrap();
    let mut failed = 0;
    while failed < 6 {
        for delivery in receive(&mut stream, 1).await {
            broker
                .nack(&sub("s"), &[], &[delivery.ack_id], Duration::ZERO, "no")
                .await
                .unwrap();
            failed += 1;
        }
    }
    timeout(WAIT, async {
        while broker.get_subscription(&sub("s")).unwrap().dead_lettered < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all three moved");
    let committed = store.committed();
    assert!(!committed.is_empty(), "moves go through commit");
    for catalog in committed {
        let dead_topic = catalog
            .topics
            .iter()
            .find(|t| t.name.as_str() == "t.dead")
            .unwrap();
        let source = &catalog.subscriptions[0];
        // Every copy stored is counted and settled in the same write.
        assert_eq!(source.dead_letters.offsets.len(), dead_topic.next_offset);
        for offset in source.dead_letters.offsets.ranges().flatten() {
            assert!(
                source.acks.is_acked(offset),
                "{offset} copied but not settled"
            );
        }
    }
}
