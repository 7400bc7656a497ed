//! Broker tests over the in-memory store, with tokio's paused clock where
//! deadlines matter.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::*;
use crate::storage::{MemoryStore, NewMessage};

const WAIT: Duration = Duration::from_secs(5);

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
        max_messages: None,
    }
}

/// Receives deliveries until `n` have arrived.
async fn receive(stream: &mut DeliveryStream, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = timeout(WAIT, stream.frames_rx.recv())
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
    assert_eq!(first, 0..3);
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
        stream.frames_rx.try_recv().is_err(),
        "nothing beyond the limit"
    );
    assert_eq!(broker.get_subscription(&sub("s")).unwrap().in_flight, 3);

    broker.ack(&sub("s"), &[0, 1]).await.unwrap();
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
    broker.nack(&sub("s"), &[1], Duration::ZERO).unwrap();
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
    let end = timeout(WAIT, stream.frames_rx.recv()).await.unwrap();
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
    let end = timeout(WAIT, stream.frames_rx.recv()).await.unwrap();
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
        broker.publish(&topic("new"), messages(1)).await.unwrap(),
        0..1
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
