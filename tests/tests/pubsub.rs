//! Publish and subscribe over real gRPC: what arrives, to whom, in what
//! order, and how much at a time.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use tidings::v1::{CreateSubscriptionRequest, PublishMessage, SubscribeRequest};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, get_subscription, offsets,
    payloads, publish, publish_messages, subscribe_request,
};

#[tokio::test(flavor = "multi_thread")]
async fn published_messages_arrive_whole_with_offsets_from_zero() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "order.placed").await?;

    let before = SystemTime::now() - Duration::from_secs(1);
    let batch = (0..3)
        .map(|i| PublishMessage {
            payload: format!("{{\"order_id\":{i}}}").into(),
            key: format!("order-{i}"),
            attributes: HashMap::from([
                ("source".to_owned(), "web".to_owned()),
                ("n".to_owned(), i.to_string()),
            ]),
            id: format!("order-{i}/placed"),
            ..PublishMessage::default()
        })
        .collect();
    assert_eq!(
        publish_messages(&client, "order.placed", batch).await?,
        [0, 1, 2]
    );
    assert_eq!(publish(&client, "order.placed", &["plain"]).await?, [3]);
    let after = SystemTime::now() + Duration::from_secs(1);

    let mut stream =
        Deliveries::open(&client, subscribe_request("inventory", "order.placed")).await?;
    let received = stream.next_n(4).await?;
    assert_eq!(offsets(&received), [0, 1, 2, 3]);
    for (i, delivered) in received.iter().take(3).enumerate() {
        assert_eq!(
            delivered.payload,
            format!("{{\"order_id\":{i}}}").as_bytes()
        );
        assert_eq!(delivered.key, format!("order-{i}"));
        assert_eq!(delivered.attributes.len(), 2);
        assert_eq!(delivered.attributes["source"], "web");
        assert_eq!(delivered.attributes["n"], i.to_string());
        assert_eq!(delivered.id, format!("order-{i}/placed"));
    }
    let plain = &received[3];
    assert_eq!(plain.payload, "plain".as_bytes());
    assert!(plain.key.is_empty() && plain.attributes.is_empty() && plain.id.is_empty());
    for delivered in &received {
        assert_eq!(delivered.delivery_attempt, 1, "{delivered:?}");
        let time = tidings_tests::publish_time(delivered)?;
        assert!(
            before <= time && time <= after,
            "publish_time {time:?} is not now"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_payload_and_binary_payload_arrive_unchanged() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "bytes").await?;
    let binary: Vec<u8> = (0..=255).collect();
    let batch = vec![
        PublishMessage::default(),
        PublishMessage {
            payload: binary.clone().into(),
            ..Default::default()
        },
    ];
    publish_messages(&client, "bytes", batch).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("reader", "bytes")).await?;
    let received = stream.next_n(2).await?;
    assert!(received[0].payload.is_empty());
    assert_eq!(received[1].payload, binary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn competing_consumers_share_a_subscription_one_stream_per_message() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "jobs").await?;
    create_subscription(&client, "workers", "jobs", 0).await?;
    let payloads_in: Vec<String> = (0..10).map(|i| format!("job {i}")).collect();
    let refs: Vec<&str> = payloads_in.iter().map(String::as_str).collect();
    publish(&client, "jobs", &refs).await?;

    // Each stream may hold 5: the first takes 5, the second must get the
    // other 5, so neither can have been given a message twice.
    let request = SubscribeRequest {
        max_outstanding_messages: 5,
        ..subscribe_request("workers", "")
    };
    let mut first = Deliveries::open(&client, request.clone()).await?;
    let first_got = first.next_n(5).await?;
    let mut second = Deliveries::open(&client, request).await?;
    let second_got = second.next_n(5).await?;

    let first_set: BTreeSet<u64> = offsets(&first_got).into_iter().collect();
    let second_set: BTreeSet<u64> = offsets(&second_got).into_iter().collect();
    assert_eq!(first_set.len(), 5, "first stream got a message twice");
    assert_eq!(second_set.len(), 5, "second stream got a message twice");
    assert!(
        first_set.is_disjoint(&second_set),
        "{first_set:?} / {second_set:?}"
    );
    let all: BTreeSet<u64> = first_set.union(&second_set).copied().collect();
    assert_eq!(all, (0..10).collect());
    assert!(
        first_got
            .iter()
            .chain(&second_got)
            .all(|m| m.delivery_attempt == 1)
    );

    // Once the second stream ends, its unacknowledged share goes to the
    // first stream, which makes room by acknowledging its own.
    ack(&client, "workers", &offsets(&first_got)).await?;
    drop(second);
    let taken_over = first.next_n(5).await?;
    let taken_set: BTreeSet<u64> = offsets(&taken_over).into_iter().collect();
    assert_eq!(taken_set, second_set);
    assert!(
        taken_over.iter().all(|m| m.delivery_attempt == 2),
        "{taken_over:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_subscription_receives_every_message() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "order.placed").await?;
    create_subscription(&client, "inventory", "order.placed", 0).await?;
    create_subscription(&client, "billing", "order.placed", 0).await?;
    publish(&client, "order.placed", &["a", "b", "c"]).await?;

    let mut inventory = Deliveries::open(&client, subscribe_request("inventory", "")).await?;
    let mut billing = Deliveries::open(&client, subscribe_request("billing", "")).await?;
    let got_inventory = inventory.next_n(3).await?;
    let got_billing = billing.next_n(3).await?;
    assert_eq!(payloads(&got_inventory), ["a", "b", "c"]);
    assert_eq!(payloads(&got_billing), ["a", "b", "c"]);

    // Acknowledging on one subscription leaves the other's backlog alone.
    ack(&client, "inventory", &[0, 1, 2]).await?;
    assert_eq!(get_subscription(&client, "inventory").await?.backlog, 0);
    assert_eq!(get_subscription(&client, "billing").await?.backlog, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_holds_no_more_than_max_outstanding_messages() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "flow").await?;
    let texts: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    publish(&client, "flow", &refs).await?;

    let request = SubscribeRequest {
        max_outstanding_messages: 3,
        ..subscribe_request("slow", "flow")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    assert_eq!(offsets(&stream.next_n(3).await?), [0, 1, 2]);
    assert_eq!(
        stream.buffered(),
        0,
        "a fourth message came in the same frame"
    );
    let figures = get_subscription(&client, "slow").await?;
    assert_eq!(figures.in_flight, 3, "{figures:?}");
    assert_eq!(figures.backlog, 10, "{figures:?}");

    // Acknowledging one makes room for exactly one more.
    ack(&client, "slow", &[0]).await?;
    assert_eq!(offsets(&stream.next_n(1).await?), [3]);
    assert_eq!(get_subscription(&client, "slow").await?.in_flight, 3);

    // The other six were not pushed to the full stream: a second stream on
    // the subscription gets every one of them.
    let mut other = Deliveries::open(&client, subscribe_request("slow", "")).await?;
    let rest = other.next_n(6).await?;
    assert_eq!(offsets(&rest), [4, 5, 6, 7, 8, 9]);
    assert!(rest.iter().all(|m| m.delivery_attempt == 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_stream_sees_first_deliveries_in_offset_order() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "ordered").await?;
    let mut expected = Vec::new();
    for batch in 0..10 {
        let texts: Vec<String> = (0..5).map(|i| format!("{batch}-{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        publish(&client, "ordered", &refs).await?;
        expected.extend(texts);
    }
    let mut stream = Deliveries::open(&client, subscribe_request("reader", "ordered")).await?;
    let received = stream.next_n(50).await?;
    assert_eq!(offsets(&received), (0..50).collect::<Vec<u64>>());
    assert_eq!(payloads(&received), expected);

    // Messages published while the stream is open follow in order too.
    for i in 0..5 {
        publish(&client, "ordered", &[&format!("live {i}")]).await?;
    }
    assert_eq!(offsets(&stream.next_n(5).await?), [50, 51, 52, 53, 54]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_subscription_starts_at_the_earliest_message_by_default() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "history").await?;
    publish(&client, "history", &["old 0", "old 1", "old 2"]).await?;
    // Created by Subscribe, and created by CreateSubscription: both from 0.
    let mut by_subscribe = Deliveries::open(&client, subscribe_request("late", "history")).await?;
    assert_eq!(offsets(&by_subscribe.next_n(3).await?), [0, 1, 2]);
    create_subscription(&client, "later", "history", 0).await?;
    let mut by_admin = Deliveries::open(&client, subscribe_request("later", "")).await?;
    assert_eq!(
        payloads(&by_admin.next_n(3).await?),
        ["old 0", "old 1", "old 2"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_latest_skips_messages_published_before() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "news").await?;
    publish(&client, "news", &["old 0", "old 1", "old 2"]).await?;
    let request = SubscribeRequest {
        start: Some(tidings_tests::start_latest()),
        ..subscribe_request("fresh", "news")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    publish(&client, "news", &["new 3", "new 4"]).await?;
    let received = stream.next_n(2).await?;
    assert_eq!(offsets(&received), [3, 4]);
    assert_eq!(payloads(&received), ["new 3", "new 4"]);
    let figures = get_subscription(&client, "fresh").await?;
    assert_eq!((figures.ack_floor, figures.backlog), (3, 2), "{figures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_at_offset_begins_there() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "log").await?;
    publish(&client, "log", &["0", "1", "2", "3", "4"]).await?;
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "from-two".into(),
            topic: "log".into(),
            ack_deadline_seconds: 0,
            start: Some(tidings_tests::start_at_offset(2)),
            ..Default::default()
        })
        .await?;
    let mut stream = Deliveries::open(&client, subscribe_request("from-two", "")).await?;
    assert_eq!(payloads(&stream.next_n(3).await?), ["2", "3", "4"]);
    assert_eq!(get_subscription(&client, "from-two").await?.backlog, 3);

    // Starting at the next offset is allowed: only new messages arrive.
    let request = SubscribeRequest {
        start: Some(tidings_tests::start_at_offset(5)),
        ..subscribe_request("from-five", "log")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    publish(&client, "log", &["5"]).await?;
    assert_eq!(offsets(&stream.next_n(1).await?), [5]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_at_time_begins_at_the_first_message_published_since() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "timeline").await?;
    publish(&client, "timeline", &["early 0", "early 1"]).await?;
    let mut probe = Deliveries::open(&client, subscribe_request("probe", "timeline")).await?;
    let early = tidings_tests::publish_time(&probe.next_n(2).await?[1])?;
    // The clock must move on, or both batches could share a timestamp.
    while SystemTime::now() <= early + Duration::from_millis(2) {
        tokio::task::yield_now().await;
    }
    publish(&client, "timeline", &["late 2", "late 3"]).await?;
    let late = tidings_tests::publish_time(&probe.next_n(1).await?[0])?;
    assert!(late > early, "{late:?} <= {early:?}");

    let request = SubscribeRequest {
        start: Some(tidings_tests::start_at_time(late)),
        ..subscribe_request("since-late", "timeline")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    assert_eq!(payloads(&stream.next_n(2).await?), ["late 2", "late 3"]);

    let request = SubscribeRequest {
        start: Some(tidings_tests::start_at_time(SystemTime::UNIX_EPOCH)),
        ..subscribe_request("since-ever", "timeline")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    assert_eq!(offsets(&stream.next_n(4).await?), [0, 1, 2, 3]);

    let request = SubscribeRequest {
        start: Some(tidings_tests::start_at_time(
            SystemTime::now() + Duration::from_secs(3600),
        )),
        ..subscribe_request("since-future", "timeline")
    };
    let _future_stream = Deliveries::open(&client, request).await?;
    let figures = get_subscription(&client, "since-future").await?;
    assert_eq!((figures.ack_floor, figures.backlog), (4, 0), "{figures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_create_topics_creates_the_topic_on_first_publish() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.auto_create_topics = true).await?;
    let client = broker.client();
    assert_eq!(publish(&client, "made.on.demand", &["first"]).await?, [0]);
    let topic = tidings_tests::get_topic(&client, "made.on.demand").await?;
    assert_eq!(topic.next_offset, 1);
    let mut stream =
        Deliveries::open(&client, subscribe_request("reader", "made.on.demand")).await?;
    assert_eq!(payloads(&stream.next_n(1).await?), ["first"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_max_messages_stream_ends_ok_and_its_messages_stay_leased() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["a", "b", "c"]).await?;

    let bounded = SubscribeRequest {
        max_messages: 2,
        ..subscribe_request("s", "t")
    };
    let mut first = Deliveries::open(&client, bounded).await?;
    assert_eq!(offsets(&first.next_n(2).await?), [0, 1]);
    assert_eq!(first.end().await?.map(|s| s.code()), None, "ends with OK");
    assert_eq!(get_subscription(&client, "s").await?.in_flight, 2);

    // The two stay leased to the finished stream: the next stream gets only
    // the third, and nothing more once that is acknowledged.
    let mut second = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let third = second.next().await?;
    assert_eq!((third.offset, third.delivery_attempt), (2, 1));
    ack(&client, "s", &[0, 1, 2]).await?;
    let figures = get_subscription(&client, "s").await?;
    assert_eq!((figures.backlog, figures.in_flight), (0, 0));
    Ok(())
}
