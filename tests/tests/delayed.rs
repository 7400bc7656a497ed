//! Delayed delivery: messages published with `deliver_after` or
//! `deliver_at`, and subscriptions with a `delivery_delay`, are delivered
//! no earlier than their time (only lower bounds are asserted), are counted
//! as delayed meanwhile, hold no flow-control slot, survive a restart while
//! they wait, and come back from storage when they were due beyond the
//! look-ahead. Bad delays are refused with the field named.

use std::time::{Duration, SystemTime};

use prost_types::FieldMask;
use tidings::v1::{
    CreateSubscriptionRequest, PublishMessage, PublishRequest, Subscription,
    UpdateSubscriptionRequest,
};
use tidings_tests::{
    Client, Deliveries, TestBroker, ack, create_topic, expect_code, get_subscription,
    publish_messages, publish_time, subscribe_request, within,
};
use tonic::Code;

fn delayed(payload: &str, after: Duration) -> PublishMessage {
    PublishMessage {
        payload: payload.to_owned().into(),
        deliver_after: Some(prost_types::Duration::try_from(after).expect("a short delay")),
        ..PublishMessage::default()
    }
}

fn now_message(payload: &str) -> PublishMessage {
    PublishMessage {
        payload: payload.to_owned().into(),
        ..PublishMessage::default()
    }
}

/// Waits until the subscription reports `delayed` messages.
async fn until_delayed(client: &Client, name: &str, delayed: u64) -> anyhow::Result<Subscription> {
    within(async {
        loop {
            let sub = get_subscription(client, name).await?;
            if sub.delayed == delayed {
                return Ok(sub);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_message_waits_without_holding_back_the_others() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "reminders").await?;
    let delay = Duration::from_secs(2);
    publish_messages(
        &client,
        "reminders",
        vec![delayed("later", delay), now_message("now")],
    )
    .await?;
    // One slot: the waiting message must not take it.
    let request = tidings::v1::SubscribeRequest {
        max_outstanding_messages: 1,
        ..subscribe_request("mailer", "reminders")
    };
    let mut stream = Deliveries::open(&client, request).await?;
    let first = stream.next().await?;
    assert_eq!(
        first.payload,
        "now".as_bytes(),
        "the other message goes at once"
    );
    let sub = until_delayed(&client, "mailer", 1).await?;
    assert_eq!(
        sub.backlog, 2,
        "a delayed message is in the backlog: {sub:?}"
    );
    ack(&client, "mailer", &[first.offset]).await?;

    let later = stream.next().await?;
    let received = SystemTime::now();
    assert_eq!(later.payload, "later".as_bytes());
    let due = publish_time(&later)? + delay;
    assert!(
        received >= due,
        "delivered {:?} early",
        due.duration_since(received)
    );
    until_delayed(&client, "mailer", 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deliver_at_and_far_delays_come_back_from_storage_after_a_restart() -> anyhow::Result<()> {
    // A look-ahead of one second: a delay of three goes through the index
    // in storage rather than staying in memory.
    let mut broker =
        TestBroker::start_with(|config| config.delay_look_ahead = Duration::from_secs(1)).await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    tidings_tests::create_subscription(&client, "s", "t", 0).await?;
    let at = SystemTime::now() + Duration::from_secs(3);
    let messages = vec![
        PublishMessage {
            payload: "at".into(),
            deliver_at: Some(at.into()),
            ..PublishMessage::default()
        },
        delayed("after", Duration::from_secs(3)),
    ];
    publish_messages(&client, "t", messages).await?;
    // Scanned (and passed over) before the restart, then restarted while
    // they wait.
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    until_delayed(&client, "s", 2).await?;
    drop(stream);
    broker.restart().await?;
    let client = broker.client();
    stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let both = stream.next_n(2).await?;
    let received = SystemTime::now();
    assert!(received >= at, "delivered before its deliver_at");
    for message in &both {
        assert!(received >= publish_time(message)? + Duration::from_secs(3));
        assert_eq!(message.delivery_attempt, 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_delay_holds_every_message_back_and_can_be_lifted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "audit").await?;
    let delay = prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    };
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "slow".into(),
            topic: "audit".into(),
            delivery_delay: Some(delay),
            ..CreateSubscriptionRequest::default()
        })
        .await?;
    publish_messages(&client, "audit", vec![now_message("a"), now_message("b")]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("slow", "")).await?;
    let sub = until_delayed(&client, "slow", 2).await?;
    assert_eq!(sub.delivery_delay, Some(delay));
    assert_eq!(sub.in_flight, 0, "nothing delivered within the hour");
    // Lifted on the open stream, which delivers without reconnecting.
    client
        .admin_service()
        .update_subscription(UpdateSubscriptionRequest {
            subscription: Some(Subscription {
                name: "slow".into(),
                delivery_delay: None,
                ..Subscription::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["delivery_delay".into()],
            }),
        })
        .await?;
    let both = stream.next_n(2).await?;
    assert_eq!(tidings_tests::payloads(&both), ["a", "b"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_topic_delays_its_messages_too() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client
        .admin_service()
        .create_topic(tidings::v1::CreateTopicRequest {
            name: "cache".into(),
            storage: tidings::v1::StorageClass::Memory as i32,
            ..tidings::v1::CreateTopicRequest::default()
        })
        .await?;
    let delay = Duration::from_secs(1);
    publish_messages(&client, "cache", vec![delayed("later", delay)]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "cache")).await?;
    let message = stream.next().await?;
    let received = SystemTime::now();
    assert!(
        received >= publish_time(&message)? + delay,
        "delivered early"
    );
    Ok(())
}

#[tokio::test]
async fn bad_delays_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let publish = |message: PublishMessage| {
        let mut publisher = client.publisher_service();
        async move {
            publisher
                .publish(PublishRequest {
                    topic: "t".into(),
                    messages: vec![now_message("ok"), message],
                })
                .await
        }
    };
    let negative = PublishMessage {
        deliver_after: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..now_message("x")
    };
    let status = expect_code(publish(negative).await, Code::InvalidArgument)?;
    assert!(
        status.message().contains("messages[1].deliver_after"),
        "{status:?}"
    );
    let too_far = delayed("x", Duration::from_secs(31 * 24 * 3600));
    let status = expect_code(publish(too_far).await, Code::InvalidArgument)?;
    assert!(status.message().contains("messages[1]") && status.message().contains("30 days"));
    let far_at = PublishMessage {
        deliver_at: Some((SystemTime::now() + Duration::from_secs(31 * 24 * 3600)).into()),
        ..now_message("x")
    };
    expect_code(publish(far_at).await, Code::InvalidArgument)?;
    let both = PublishMessage {
        deliver_at: Some(SystemTime::now().into()),
        ..delayed("x", Duration::from_secs(1))
    };
    let status = expect_code(publish(both).await, Code::InvalidArgument)?;
    assert!(status.message().contains("both"), "{status:?}");
    // A time that has passed means now.
    let past = PublishMessage {
        deliver_at: Some((SystemTime::now() - Duration::from_secs(60)).into()),
        ..now_message("past")
    };
    publish_messages(&client, "t", vec![past]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "t")).await?;
    assert_eq!(stream.next().await?.payload, "past".as_bytes());

    let sub = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "u".into(),
            topic: "t".into(),
            delivery_delay: Some(prost_types::Duration {
                seconds: 31 * 24 * 3600,
                nanos: 0,
            }),
            ..CreateSubscriptionRequest::default()
        })
        .await;
    let status = expect_code(sub, Code::InvalidArgument)?;
    assert!(status.message().contains("delivery_delay"), "{status:?}");
    Ok(())
}
