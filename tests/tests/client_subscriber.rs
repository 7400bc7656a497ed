//! The Rust client's `Subscriber` against a real broker: deliveries, acks,
//! nacks, rejects and dead letters, dropped deliveries, automatic lease
//! extension, flow control by count and by bytes, errors, shutdown without
//! duplicates, and a broker restart under a live subscriber.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use tidings_client::{
    Client, DeadLetterPolicy, Delivery, Message, StoredMessage, Subscriber, SubscriptionConfig,
};
use tidings_tests::{TestBroker, within};
use tokio::time::{Instant, timeout};
use tonic::Code;

/// The next delivery, under [`EVENT_TIMEOUT`].
async fn next(subscriber: &mut Subscriber) -> anyhow::Result<Delivery> {
    match within(subscriber.next()).await? {
        Some(delivery) => Ok(delivery?),
        None => anyhow::bail!("the subscriber's stream ended"),
    }
}

/// Asserts that nothing is delivered for `window`.
async fn nothing_within(subscriber: &mut Subscriber, window: Duration) {
    if let Ok(item) = timeout(window, subscriber.next()).await {
        panic!("expected no delivery within {window:?}, got {item:?}");
    }
}

/// A topic with `payloads` published to it, and a client.
async fn topic_with(
    broker: &TestBroker,
    topic: &str,
    payloads: &[&'static str],
) -> anyhow::Result<Client> {
    let client = broker.client();
    client.create_topic(topic).await?;
    let publisher = client.publisher_builder(topic).max_in_flight(1).build();
    for payload in payloads {
        within(publisher.publish(*payload)).await??;
    }
    Ok(client)
}

/// Waits until `check` holds for the subscription's figures. Acks are
/// fire-and-forget, so their effect can only be observed on the broker: its
/// figures are polled (a call failing while a restarted broker is being
/// reconnected to counts as "not yet").
async fn wait_for_subscription(
    client: &Client,
    name: &str,
    check: impl Fn(&tidings_client::Subscription) -> bool,
) -> anyhow::Result<()> {
    within(async {
        loop {
            match client.get_subscription(name).await {
                Ok(figures) if check(&figures) => return Ok::<_, anyhow::Error>(()),
                Ok(_) => {}
                Err(err) if matches!(err.code(), Code::Unavailable | Code::Unknown) => {}
                Err(err) => return Err(err.into()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_come_in_order_and_acks_clear_the_backlog() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("orders").await?;
    let publisher = client.publisher_builder("orders").max_in_flight(1).build();
    let keyed = Message::new("first")
        .with_key("order-1")
        .with_attribute("type", "placed");
    within(publisher.publish(keyed)).await??;
    for i in 1..20 {
        within(publisher.publish(format!("m{i}"))).await??;
    }
    let mut subscriber = client
        .subscriber("inventory")
        .topic("orders")
        .subscribe()
        .await?;
    assert_eq!(subscriber.ack_deadline(), Duration::from_secs(30));

    let first = next(&mut subscriber).await?;
    assert_eq!((first.offset(), &first.payload()[..]), (0, &b"first"[..]));
    assert_eq!(first.key(), "order-1");
    assert_eq!(
        first.attributes().get("type").map(String::as_str),
        Some("placed")
    );
    assert_eq!(first.delivery_attempt(), 1);
    assert!(first.publish_time().is_some());
    first.ack();
    for offset in 1..20 {
        let delivery = next(&mut subscriber).await?;
        assert_eq!(delivery.offset(), offset);
        delivery.ack();
    }
    // close() sends the pending acks before it returns.
    within(subscriber.close()).await??;
    let figures = client.get_subscription("inventory").await?;
    assert_eq!(
        (figures.backlog, figures.in_flight, figures.ack_floor),
        (0, 0, 20),
        "{figures:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_redelivers_at_once() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["one"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let delivery = next(&mut subscriber).await?;
    assert_eq!(delivery.delivery_attempt(), 1);
    delivery.nack();
    let again = next(&mut subscriber).await?;
    assert_eq!((again.offset(), again.delivery_attempt()), (0, 2));
    again.ack();
    within(subscriber.close()).await??;
    assert_eq!(client.get_subscription("s").await?.backlog, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_after_redelivers_after_the_delay() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["one"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let delivery = next(&mut subscriber).await?;
    let delay = Duration::from_millis(400);
    let nacked_at = Instant::now();
    delivery.nack_after(delay);
    let again = next(&mut subscriber).await?;
    assert!(
        nacked_at.elapsed() >= delay,
        "redelivered after {:?}",
        nacked_at.elapsed()
    );
    assert_eq!((again.offset(), again.delivery_attempt()), (0, 2));
    again.ack();
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_delivery_is_redelivered() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["one", "two"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    assert_eq!((first.offset(), second.offset()), (0, 1));
    drop(first);
    let again = next(&mut subscriber).await?;
    assert_eq!((again.offset(), again.delivery_attempt()), (0, 2));
    again.ack();
    second.ack();
    within(subscriber.close()).await??;
    assert_eq!(client.get_subscription("s").await?.backlog, 0);
    Ok(())
}

/// An ack deadline long enough that extending a lease cannot lose the
/// race on a loaded machine: the subscriber extends every third of it, so
/// each extension has 4 s to land (six times the 0.67 s a 1 s deadline
/// would leave).
const ROOMY_DEADLINE: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread")]
async fn leases_are_extended_while_a_delivery_is_held() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["slow work"]).await?;
    let config = SubscriptionConfig::new("s", "t").ack_deadline(ROOMY_DEADLINE);
    client.create_subscription(config).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    assert_eq!(subscriber.ack_deadline(), ROOMY_DEADLINE);
    let held = next(&mut subscriber).await?;

    // One ack deadline and a half pass: without extensions it would come
    // back after the first. (That extensions are sent, and under which
    // name, is checked against a stand-in broker in the client's tests.)
    nothing_within(&mut subscriber, ROOMY_DEADLINE * 3 / 2).await;
    assert_eq!(client.get_subscription("s").await?.in_flight, 1);
    held.ack();
    within(subscriber.close()).await??;
    let figures = client.get_subscription("s").await?;
    assert_eq!((figures.backlog, figures.in_flight), (0, 0), "{figures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_expire_past_the_maximum_extension() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["slow work"]).await?;
    let config = SubscriptionConfig::new("s", "t").ack_deadline(Duration::from_secs(1));
    client.create_subscription(config).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_lease_extension(Duration::ZERO)
        .subscribe()
        .await?;
    let held = next(&mut subscriber).await?;
    let again = next(&mut subscriber).await?;
    assert_eq!((again.offset(), again.delivery_attempt()), (0, 2));
    held.ack();
    drop(again);
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_outstanding_messages_limits_unsettled_deliveries() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["a", "b", "c"]).await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .max_outstanding_messages(2)
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let _second = next(&mut subscriber).await?;
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    first.ack();
    assert_eq!(next(&mut subscriber).await?.offset(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_errors_come_back_from_subscribe() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &[]).await?;
    client.create_topic("other").await?;
    let missing = client.subscriber("missing").subscribe().await;
    assert_eq!(missing.map(drop).map_err(|e| e.code()), Err(Code::NotFound));
    let no_topic = client.subscriber("s").topic("nope").subscribe().await;
    assert_eq!(
        no_topic.map(drop).map_err(|e| e.code()),
        Err(Code::NotFound)
    );
    client
        .create_subscription(SubscriptionConfig::new("s", "t"))
        .await?;
    let wrong = client.subscriber("s").topic("other").subscribe().await;
    assert_eq!(
        wrong.map(drop).map_err(|e| e.code()),
        Err(Code::FailedPrecondition)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_subscription_ends_the_stream_with_its_error() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &[]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    client.delete_subscription("s").await?;
    let ended = within(subscriber.next()).await?;
    let err = ended.expect("an error item").expect_err("an error item");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_survives_a_broker_restart() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    // A client of its own: it reconnects to the same address.
    let client = Client::connect(broker.url()).await?;
    client.create_topic("t").await?;
    let publisher = client.publisher_builder("t").max_in_flight(1).build();
    for payload in ["acked", "held"] {
        within(publisher.publish(payload)).await??;
    }
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .subscribe()
        .await?;
    next(&mut subscriber).await?.ack();
    let held = next(&mut subscriber).await?;
    assert_eq!(held.offset(), 1);
    wait_for_subscription(&client, "s", |s| s.ack_floor == 1).await?;

    broker.restart_on_same_port().await?;
    let fresh = broker.client();
    let after = tidings_tests::publish(&fresh, "t", &["after restart"]).await?;
    assert_eq!(after, [2]);

    // The held message comes back, the new one arrives, the acked one
    // does not.
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let delivery = next(&mut subscriber).await?;
        assert_ne!(delivery.offset(), 0, "an acknowledged message came back");
        seen.insert(delivery.offset(), delivery);
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [1, 2]);
    // The delivery from before the restart is still ackable.
    held.ack();
    seen.into_values().for_each(Delivery::ack);
    within(subscriber.close()).await??;
    let figures = client.get_subscription("s").await?;
    assert_eq!((figures.backlog, figures.ack_floor), (0, 3), "{figures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_made_while_the_broker_is_down_are_sent_when_it_returns() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = Client::connect(broker.url()).await?;
    client.create_topic("t").await?;
    tidings_tests::publish(&client, "t", &["one"]).await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .subscribe()
        .await?;
    let delivery = next(&mut subscriber).await?;

    broker.stop().await?;
    delivery.ack(); // fails with UNAVAILABLE for now, and is retried
    // An outage, not a synchronisation: long enough for the ack to be
    // attempted (within the 5 ms flush interval) and refused at least once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.resume_on_same_port().await?;
    wait_for_subscription(&client, "s", |s| s.ack_floor == 1 && s.backlog == 0).await?;
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn close_reports_a_settlement_the_broker_refused() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["one"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let delivery = next(&mut subscriber).await?;
    client.delete_subscription("s").await?;
    let ended = within(subscriber.next()).await?.map(|item| item.map(drop));
    assert_eq!(
        ended.map(|item| item.map_err(|e| e.code())),
        Some(Err(Code::NotFound))
    );
    delivery.ack();
    let closed = within(subscriber.close()).await?;
    assert_eq!(closed.map_err(|e| e.code()), Err(Code::NotFound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_messages_ends_the_stream_with_the_rest_left_for_others() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["a", "b", "c"]).await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .max_messages(2)
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    assert_eq!((first.offset(), second.offset()), (0, 1));
    assert!(
        within(subscriber.next()).await?.is_none(),
        "the stream ends"
    );
    first.ack();
    second.ack();
    subscriber.close().await?;

    // Only the third is left, delivered for the first time.
    let mut rest = client.subscriber("s").subscribe().await?;
    let third = next(&mut rest).await?;
    assert_eq!((third.offset(), third.delivery_attempt()), (2, 1));
    third.ack();
    rest.close().await?;
    wait_for_subscription(&client, "s", |s| s.backlog == 0).await
}

#[tokio::test(flavor = "multi_thread")]
async fn close_hands_buffered_deliveries_back_once() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["a", "b"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let first = next(&mut subscriber).await?;
    first.ack();
    // The second is received (and buffered) but never taken.
    wait_for_subscription(&client, "s", |s| s.in_flight == 1).await?;
    subscriber.close().await?;

    let mut again = client.subscriber("s").subscribe().await?;
    let second = next(&mut again).await?;
    assert_eq!((second.offset(), second.delivery_attempt()), (1, 2));
    second.ack();
    again.close().await?;
    Ok(())
}

/// `shutdown` stops taking messages but keeps the stream open while the
/// handlers finish: a competing consumer, open all along, never gets the
/// messages the slow handlers acknowledged during shutdown. (`close`
/// would have ended the stream at once, and the broker would have handed
/// all three to the competitor.)
#[tokio::test(flavor = "multi_thread")]
async fn messages_acked_by_slow_handlers_during_shutdown_are_not_delivered_again()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["a", "b", "c"]).await?;
    let mut first = client
        .subscriber("s")
        .topic("t")
        .max_outstanding_messages(3)
        .subscribe()
        .await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut first).await?);
    }
    let mut competitor = client.subscriber("s").subscribe().await?;

    // Slow work, not synchronisation: each handler acks half a second on.
    let handlers: Vec<_> = held
        .into_iter()
        .map(|delivery| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                delivery.ack_with_response().await
            })
        })
        .collect();
    let report = within(first.shutdown(tidings_tests::EVENT_TIMEOUT)).await??;
    assert_eq!(report.unsettled, 0);
    for handler in handlers {
        within(handler).await???;
    }
    let figures = client.get_subscription("s").await?;
    assert_eq!((figures.backlog, figures.in_flight), (0, 0), "{figures:?}");
    nothing_within(&mut competitor, Duration::from_millis(300)).await;
    within(competitor.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_reports_deliveries_still_held_at_its_timeout() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["stuck"]).await?;
    let mut first = client.subscriber("s").topic("t").subscribe().await?;
    let stuck = next(&mut first).await?;
    let mut competitor = client.subscriber("s").subscribe().await?;

    let report = within(first.shutdown(Duration::from_millis(200))).await??;
    assert_eq!(report.unsettled, 1, "the handler never settled it");
    let again = next(&mut competitor).await?;
    assert_eq!((again.offset(), again.delivery_attempt()), (0, 2));
    // The old delivery holds no lease: dropping it nacks nothing.
    drop(stuck);
    within(again.ack_with_response()).await??;
    within(competitor.close()).await??;
    wait_for_subscription(&client, "s", |s| s.backlog == 0).await
}

#[tokio::test(flavor = "multi_thread")]
async fn max_outstanding_bytes_limits_unsettled_deliveries() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("t").await?;
    let publisher = client.publisher_builder("t").max_in_flight(1).build();
    for _ in 0..3 {
        within(publisher.publish(vec![b'x'; 1000])).await??;
    }
    // Room for two messages of 1000 bytes, not three.
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .max_outstanding_bytes(2500)
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    assert_eq!((first.offset(), second.offset()), (0, 1));
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    assert_eq!(client.get_subscription("s").await?.in_flight, 2);
    first.ack();
    let third = next(&mut subscriber).await?;
    assert_eq!(third.offset(), 2);
    second.ack();
    third.ack();
    within(subscriber.close()).await??;
    Ok(())
}

/// A topic "t" with `payloads` published to it, a dead-letter topic
/// "t.dead", and a subscription "s" of "t" that moves a message there
/// after `max_delivery_attempts` failed deliveries (or a reject).
async fn dead_lettering(
    broker: &TestBroker,
    payloads: &[&'static str],
    max_delivery_attempts: u32,
) -> anyhow::Result<Client> {
    let client = topic_with(broker, "t", payloads).await?;
    client.create_topic("t.dead").await?;
    let policy = DeadLetterPolicy::new("t.dead", max_delivery_attempts);
    client
        .create_subscription(SubscriptionConfig::new("s", "t").dead_letter_policy(policy))
        .await?;
    Ok(client)
}

/// Every message of the dead-letter topic "t.dead".
async fn dead_letters(client: &Client) -> anyhow::Result<Vec<StoredMessage>> {
    Ok(within(client.read_topic("t.dead", 0, 100)).await??.messages)
}

/// The attribute `name` of `message`, if any.
fn attribute<'a>(message: &'a StoredMessage, name: &str) -> Option<&'a str> {
    message.attributes.get(name).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_delivery_is_dead_lettered_at_once_with_its_error() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = dead_lettering(&broker, &["poison", "fine"], 5).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let poison = next(&mut subscriber).await?;
    assert_eq!((poison.offset(), poison.delivery_attempt()), (0, 1));
    // Resolves once the broker stored it: the move is done by then.
    within(poison.reject_with_response("unparsable order")).await??;
    let fine = next(&mut subscriber).await?;
    assert_eq!(
        fine.offset(),
        1,
        "the rejected message is not delivered again"
    );
    within(fine.ack_with_response()).await??;

    let dead = dead_letters(&client).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(&dead[0].payload[..], b"poison");
    assert_eq!(
        attribute(&dead[0], "tidings.dead_letter_reason"),
        Some("rejected")
    );
    assert_eq!(
        attribute(&dead[0], "tidings.last_error"),
        Some("unparsable order")
    );
    assert_eq!(attribute(&dead[0], "tidings.source_offset"), Some("0"));
    assert_eq!(attribute(&dead[0], "tidings.delivery_attempts"), Some("1"));
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    within(subscriber.close()).await??;
    let figures = client.get_subscription("s").await?;
    assert_eq!(
        (figures.dead_lettered, figures.backlog),
        (1, 0),
        "{figures:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_nacked_with_errors_is_dead_lettered_with_the_last_error() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = dead_lettering(&broker, &["flaky"], 2).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    for (attempt, error) in [(1, "timeout calling billing"), (2, "billing said 503")] {
        let delivery = next(&mut subscriber).await?;
        assert_eq!(delivery.delivery_attempt(), attempt);
        delivery.nack_with_error(error);
    }
    // Every settlement made so far was answered: the second nack moved it.
    within(subscriber.flush()).await??;

    let dead = dead_letters(&client).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(&dead[0].payload[..], b"flaky");
    assert_eq!(
        attribute(&dead[0], "tidings.dead_letter_reason"),
        Some("max_delivery_attempts")
    );
    assert_eq!(
        attribute(&dead[0], "tidings.last_error"),
        Some("billing said 503")
    );
    assert_eq!(attribute(&dead[0], "tidings.delivery_attempts"), Some("2"));
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_dead_letter_policy_a_rejected_delivery_is_acknowledged_and_counted()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = topic_with(&broker, "t", &["poison"]).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    within(
        next(&mut subscriber)
            .await?
            .reject_with_response("no handler"),
    )
    .await??;
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    within(subscriber.close()).await??;
    let figures = client.get_subscription("s").await?;
    assert_eq!(
        (
            figures.rejected,
            figures.dead_lettered,
            figures.backlog,
            figures.ack_floor
        ),
        (1, 0, 0, 1),
        "{figures:?}"
    );
    Ok(())
}
