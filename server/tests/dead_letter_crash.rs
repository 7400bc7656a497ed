//! Crash test for dead letters: many messages are dead-lettered at once
//! while the real binary is killed with `kill -9`. After a restart, each
//! message is in exactly one place: still deliverable on its subscription,
//! or in the dead-letter topic (once) and settled — never both, never
//! neither.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use tidings::v1::{
    AckRequest, CreateSubscriptionRequest, CreateTopicRequest, DeadLetterPolicy,
    GetSubscriptionRequest, GetTopicRequest, NackRequest, PublishMessage, PublishRequest,
    ReadTopicRequest, Subscription, UpdateSubscriptionRequest,
};
use tidings_client::Client;

mod common;

use common::{Deliveries, EVENT_TIMEOUT, ServerProcess, subscribe_request};

const MESSAGES: u64 = 600;
const STREAMS: usize = 3;
/// Kill once at least this many copies are in the dead-letter topic.
const KILL_AFTER: u64 = 150;

async fn dead_topic_size(client: &Client) -> anyhow::Result<u64> {
    Ok(client
        .admin_service()
        .get_topic(GetTopicRequest {
            name: "orders.dead".into(),
        })
        .await?
        .into_inner()
        .topic
        .context("a topic")?
        .next_offset)
}

/// Nacks every delivery, so that each message fails its way to the
/// dead-letter topic, until the broker goes away.
async fn fail_everything(client: Client) {
    let Ok(mut stream) = Deliveries::open(&client, subscribe_request("s", "")).await else {
        return;
    };
    while let Ok(batch) = stream.next_n(1).await {
        let ack_ids = batch.into_iter().map(|m| m.ack_id).collect();
        let nacked = client
            .subscriber_service()
            .nack(NackRequest {
                subscription: "s".into(),
                ack_ids,
                error: "poison".into(),
                ..NackRequest::default()
            })
            .await;
        if nacked.is_err() {
            return;
        }
    }
}

/// The source offsets of every copy in the dead-letter topic.
async fn dead_lettered(client: &Client) -> anyhow::Result<Vec<u64>> {
    let mut sources = Vec::new();
    let mut offset = 0;
    loop {
        let read = client
            .subscriber_service()
            .read_topic(ReadTopicRequest {
                topic: "orders.dead".into(),
                offset,
                max_messages: 1000,
            })
            .await?
            .into_inner();
        for message in &read.messages {
            let source = message
                .attributes
                .get("tidings.source_offset")
                .context("a copy names its source offset")?;
            sources.push(source.parse()?);
        }
        if read.next_offset >= read.end_offset {
            return Ok(sources);
        }
        offset = read.next_offset;
    }
}

/// Receives and acks what is still deliverable on the subscription (with
/// its dead-letter policy removed, so nothing moves any more).
async fn still_deliverable(client: &Client) -> anyhow::Result<BTreeSet<u64>> {
    client
        .admin_service()
        .update_subscription(UpdateSubscriptionRequest {
            subscription: Some(Subscription {
                name: "s".into(),
                ..Subscription::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["dead_letter_policy".into()],
            }),
        })
        .await?;
    let backlog = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest { name: "s".into() })
        .await?
        .into_inner()
        .subscription
        .context("a subscription")?
        .backlog;
    let mut stream = Deliveries::open(client, subscribe_request("s", "")).await?;
    let received = stream
        .next_n(usize::try_from(backlog)?)
        .await
        .context("every message the backlog counts is delivered")?;
    let offsets: BTreeSet<u64> = received.iter().map(|m| m.offset).collect();
    client
        .subscriber_service()
        .ack(AckRequest {
            subscription: "s".into(),
            offsets: offsets.iter().copied().collect(),
            ..AckRequest::default()
        })
        .await?;
    Ok(offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_in_exactly_one_place_after_kill_9_during_dead_lettering() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    for name in ["orders", "orders.dead"] {
        client
            .admin_service()
            .create_topic(CreateTopicRequest {
                name: name.into(),
                ..CreateTopicRequest::default()
            })
            .await?;
    }
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "s".into(),
            topic: "orders".into(),
            dead_letter_policy: Some(DeadLetterPolicy {
                dead_letter_topic: "orders.dead".into(),
                max_delivery_attempts: 2,
            }),
            ..CreateSubscriptionRequest::default()
        })
        .await?;
    let messages = (0..MESSAGES)
        .map(|n| PublishMessage {
            payload: format!("m{n}").into(),
            ..PublishMessage::default()
        })
        .collect();
    client
        .publisher_service()
        .publish(PublishRequest {
            topic: "orders".into(),
            messages,
        })
        .await?;
    let failing: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(fail_everything(client.clone())))
        .collect();
    tokio::time::timeout(EVENT_TIMEOUT * 6, async {
        while dead_topic_size(&client).await? < KILL_AFTER {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await
    .context("dead-lettering did not get going")??;
    server.kill_9().await?;
    for task in failing {
        let _ = task.await;
    }

    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    let copies = dead_lettered(&client).await?;
    let moved: BTreeSet<u64> = copies.iter().copied().collect();
    ensure!(
        moved.len() == copies.len(),
        "a message was copied twice: {} copies of {} messages",
        copies.len(),
        moved.len()
    );
    ensure!(
        moved.len() as u64 >= KILL_AFTER,
        "copies were lost: {}",
        moved.len()
    );
    let counted = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest { name: "s".into() })
        .await?
        .into_inner()
        .subscription
        .context("a subscription")?
        .dead_lettered;
    ensure!(
        counted == moved.len() as u64,
        "{counted} counted, {} moved",
        moved.len()
    );
    let deliverable = still_deliverable(&client).await?;
    let both: Vec<_> = moved.intersection(&deliverable).collect();
    ensure!(both.is_empty(), "moved and still deliverable: {both:?}");
    let everywhere: BTreeSet<u64> = moved.union(&deliverable).copied().collect();
    ensure!(
        everywhere == (0..MESSAGES).collect(),
        "lost: {:?}",
        (0..MESSAGES)
            .filter(|o| !everywhere.contains(o))
            .collect::<Vec<_>>()
    );
    Ok(())
}
