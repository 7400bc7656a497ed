//! `SubscriberService.Seek`: back over acknowledged messages redelivers
//! them to an open stream, forward skips, by offset, to the ends and by
//! time; bad positions are refused and change nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidings::v1::{SeekRequest, StartPosition};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, expect_code, get_subscription,
    payloads, publish, start_at_offset, start_at_time, start_latest, subscribe_request,
};
use tonic::Code;

fn seek(subscription: &str, position: StartPosition) -> SeekRequest {
    SeekRequest {
        subscription: subscription.into(),
        position: Some(position),
    }
}

fn earliest() -> StartPosition {
    StartPosition {
        position: Some(tidings::v1::start_position::Position::Earliest(true)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seeking_back_redelivers_acknowledged_messages_to_an_open_stream() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["a", "b", "c", "d"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let first = stream.next_n(4).await?;
    ack(&client, "s", &[0, 1, 2]).await?;
    // d stays leased to the stream; its failure count is gone after the seek.
    let mut subscriber = client.subscriber_service();
    subscriber.seek(seek("s", start_at_offset(1))).await?;

    let again = stream.next_n(3).await?;
    assert_eq!(
        payloads(&again),
        ["b", "c", "d"],
        "from the position on, in order"
    );
    assert!(
        again.iter().all(|m| m.delivery_attempt == 1),
        "attempts restart at 1: {again:?}"
    );
    let sub = get_subscription(&client, "s").await?;
    assert_eq!((sub.ack_floor, sub.backlog), (1, 3));
    // A late ack by the ack_id of a delivery from before the seek changes
    // nothing; the new deliveries settle as ever.
    let stale = first.iter().find(|m| m.offset == 2).expect("c");
    client
        .subscriber_service()
        .ack(tidings::v1::AckRequest {
            subscription: "s".into(),
            ack_ids: vec![stale.ack_id.clone()],
            ..Default::default()
        })
        .await?;
    assert_eq!(get_subscription(&client, "s").await?.backlog, 3);
    ack(&client, "s", &[1, 2, 3]).await?;
    assert_eq!(get_subscription(&client, "s").await?.backlog, 0);

    // To the earliest: everything once more.
    subscriber.seek(seek("s", earliest())).await?;
    assert_eq!(payloads(&stream.next_n(4).await?), ["a", "b", "c", "d"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seeking_forward_skips_and_latest_skips_the_backlog() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["a", "b", "c", "d"]).await?;
    let mut subscriber = client.subscriber_service();
    subscriber.seek(seek("s", start_at_offset(3))).await?;
    let sub = get_subscription(&client, "s").await?;
    assert_eq!((sub.ack_floor, sub.backlog), (3, 1));
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(payloads(&stream.next_n(1).await?), ["d"]);

    subscriber.seek(seek("s", start_latest())).await?;
    assert_eq!(get_subscription(&client, "s").await?.backlog, 0);
    publish(&client, "t", &["e"]).await?;
    let next = stream.next().await?;
    assert_eq!(&next.payload[..], b"e", "only what comes after");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seeking_to_a_time_starts_at_the_first_message_published_at_or_after_it()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["old"]).await?;
    let old = tidings_tests::publish_time(
        &client
            .subscriber_service()
            .read_topic(tidings::v1::ReadTopicRequest {
                topic: "t".into(),
                offset: 0,
                max_messages: 1,
            })
            .await?
            .into_inner()
            .messages[0],
    )?;
    // Wait until the clock is a whole microsecond (the stored precision)
    // past the first message's time, and cut there, in whole microseconds,
    // so the next message's stored time cannot fall below the cut.
    while SystemTime::now() <= old + Duration::from_micros(1) {
        tokio::task::yield_now().await;
    }
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let cut = UNIX_EPOCH + Duration::from_micros(u64::try_from(since_epoch.as_micros())?);
    publish(&client, "t", &["new"]).await?;
    ack(&client, "s", &[0, 1]).await?;
    client
        .subscriber_service()
        .seek(seek("s", start_at_time(cut)))
        .await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(payloads(&stream.next_n(1).await?), ["new"]);
    assert_eq!(get_subscription(&client, "s").await?.ack_floor, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_seeks_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["a", "b"]).await?;
    ack(&client, "s", &[0]).await?;
    let mut subscriber = client.subscriber_service();
    let beyond = subscriber.seek(seek("s", start_at_offset(3))).await;
    let status = expect_code(beyond, Code::InvalidArgument)?;
    assert!(status.message().contains("offset 3"), "{status:?}");
    let missing = subscriber
        .seek(SeekRequest {
            subscription: "s".into(),
            position: None,
        })
        .await;
    let status = expect_code(missing, Code::InvalidArgument)?;
    assert!(
        status.message().contains("position is missing"),
        "{status:?}"
    );
    expect_code(
        subscriber.seek(seek("nope", earliest())).await,
        Code::NotFound,
    )?;
    let sub = get_subscription(&client, "s").await?;
    assert_eq!((sub.ack_floor, sub.backlog), (1, 1), "unchanged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seek_survives_a_restart() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["a", "b", "c"]).await?;
    ack(&client, "s", &[0, 1, 2]).await?;
    client
        .subscriber_service()
        .seek(seek("s", start_at_offset(1)))
        .await?;
    broker.restart().await?;
    let client = broker.client();
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    assert_eq!(payloads(&stream.next_n(2).await?), ["b", "c"]);
    Ok(())
}
