//! Crash test: `kill -9` the real binary while publishers are busy, start it
//! again on the same data directory, and check that nothing acknowledged was
//! lost and nothing was stored twice.
//!
//! Four publishers send batches whose payloads name (publisher, batch,
//! index). Every batch the broker acknowledged is recorded with its offsets.
//! After a random number of acknowledged batches the broker is killed. After
//! the restart a fresh subscription reads the whole topic from offset 0.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, ensure};
use tidings::v1::{
    AckRequest, CreateTopicRequest, GetSubscriptionRequest, GetTopicRequest, PublishMessage,
    PublishRequest, SubscribeRequest,
};
use tidings_client::Client;
use tokio::sync::watch;

mod common;

use common::{Deliveries, ServerProcess, kill_9_while_publishing, subscribe_request};

const TOPIC: &str = "crash.test";
const PUBLISHERS: u32 = 4;
/// Each publisher stops after this many batches if the kill has not come.
const MAX_BATCHES: u32 = 1000;
const SEEDS: u64 = 10;

/// A batch the broker acknowledged: where it said the messages went.
#[derive(Debug)]
struct Acknowledged {
    offsets: Vec<u64>,
    payloads: Vec<String>,
}

type Record = Arc<Mutex<Vec<Acknowledged>>>;

fn batch(payloads: &[String]) -> Vec<PublishMessage> {
    payloads
        .iter()
        .map(|p| PublishMessage {
            payload: p.clone().into(),
            ..Default::default()
        })
        .collect()
}

/// Publishes batches until the broker stops answering; records every
/// acknowledged one and counts it on `count_tx`.
async fn publish_until_killed(
    client: Client,
    id: u32,
    record: Record,
    count_tx: watch::Sender<usize>,
) {
    let mut publisher = client.publisher_service();
    for seq in 0..MAX_BATCHES {
        let size = 1 + (seq % 4) as usize;
        let payloads: Vec<String> = (0..size).map(|i| format!("p{id}-s{seq}-i{i}")).collect();
        let request = PublishRequest {
            topic: TOPIC.into(),
            messages: batch(&payloads),
        };
        let Ok(response) = publisher.publish(request).await else {
            return;
        };
        let offsets = response.into_inner().offsets;
        record
            .lock()
            .expect("record lock")
            .push(Acknowledged { offsets, payloads });
        count_tx.send_modify(|count| *count += 1);
    }
}

/// Checks the batch structure of everything stored: the messages of one
/// batch sit at consecutive offsets, in order.
fn check_batches_contiguous(stored: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let mut batches: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (offset, payload) in stored {
        if payload.starts_with("seed-") {
            continue;
        }
        let (batch, index) = payload
            .rsplit_once("-i")
            .with_context(|| format!("unexpected payload {payload:?}"))?;
        let index: u64 = index.parse().context("payload index")?;
        batches
            .entry(batch.to_owned())
            .or_default()
            .push((index, *offset));
    }
    for (batch, mut members) in batches {
        members.sort_unstable();
        let first = members[0].1;
        for (position, (index, offset)) in members.iter().enumerate() {
            ensure!(
                *index == position as u64 && *offset == first + *index,
                "batch {batch} is not stored whole and contiguous: {members:?}"
            );
        }
    }
    Ok(())
}

/// Publishes the seed batch, delivers it to subscription `held`, and
/// acknowledges its first half; returns the seed batch and the open stream,
/// which holds the other half unacknowledged.
async fn seed_and_hold(client: &Client) -> anyhow::Result<(Acknowledged, Deliveries)> {
    let seeds: Vec<String> = (0..SEEDS).map(|i| format!("seed-{i}")).collect();
    let seeded = client
        .publisher_service()
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages: batch(&seeds),
        })
        .await?
        .into_inner()
        .offsets;
    ensure!(
        seeded == (0..SEEDS).collect::<Vec<_>>(),
        "seed offsets {seeded:?}"
    );
    let request = SubscribeRequest {
        max_outstanding_messages: SEEDS as u32,
        ..subscribe_request("held", TOPIC)
    };
    let mut held = Deliveries::open(client, request).await?;
    held.next_n(SEEDS as usize).await?;
    client
        .subscriber_service()
        .ack(AckRequest {
            subscription: "held".into(),
            offsets: (0..SEEDS / 2).collect(),
            ack_ids: Vec::new(),
        })
        .await?;
    let seed_batch = Acknowledged {
        offsets: seeded,
        payloads: seeds,
    };
    Ok((seed_batch, held))
}

/// Runs the publishers until a random number of batches is acknowledged,
/// then kills the server with SIGKILL; returns every acknowledged batch.
async fn publish_and_kill(
    server: ServerProcess,
    client: &Client,
    seed_batch: Acknowledged,
) -> anyhow::Result<Vec<Acknowledged>> {
    let record: Record = Arc::new(Mutex::new(vec![seed_batch]));
    let kill_after = kill_9_while_publishing(server, PUBLISHERS, |id, count_tx| {
        publish_until_killed(client.clone(), id, record.clone(), count_tx)
    })
    .await?;
    let acknowledged = std::mem::take(&mut *record.lock().expect("record lock"));
    eprintln!(
        "killed after {kill_after} acknowledged batches; {} acknowledged in all",
        acknowledged.len()
    );
    Ok(acknowledged)
}

/// Reads the whole topic through a fresh subscription and checks that it
/// holds every acknowledged batch, each offset once; returns the stored
/// payloads by offset.
async fn check_log(
    client: &Client,
    acknowledged: &[Acknowledged],
) -> anyhow::Result<BTreeMap<u64, String>> {
    let next_offset = client
        .admin_service()
        .get_topic(GetTopicRequest { name: TOPIC.into() })
        .await?
        .into_inner()
        .topic
        .context("no topic")?
        .next_offset;
    let acknowledged_messages: usize = acknowledged.iter().map(|a| a.offsets.len()).sum();
    eprintln!("{acknowledged_messages} messages acknowledged, {next_offset} stored");
    ensure!(
        next_offset >= acknowledged_messages as u64,
        "next_offset {next_offset} is too low"
    );

    let mut fresh = Deliveries::open(client, subscribe_request("verify", TOPIC)).await?;
    let mut stored = BTreeMap::new();
    for message in fresh.next_n(usize::try_from(next_offset)?).await? {
        let payload = String::from_utf8(message.payload.to_vec())?;
        let previous = stored.insert(message.offset, payload);
        ensure!(
            previous.is_none(),
            "offset {} delivered twice",
            message.offset
        );
    }
    ensure!(
        stored.keys().copied().eq(0..next_offset),
        "stored offsets are not 0..{next_offset}"
    );
    for batch in acknowledged {
        ensure!(batch.offsets.len() == batch.payloads.len(), "{batch:?}");
        for (offset, payload) in batch.offsets.iter().zip(&batch.payloads) {
            ensure!(
                stored.get(offset) == Some(payload),
                "acknowledged {payload:?} at offset {offset} is lost; found {:?}",
                stored.get(offset)
            );
        }
    }
    let distinct: BTreeSet<&String> = stored.values().collect();
    ensure!(distinct.len() == stored.len(), "a message was stored twice");
    check_batches_contiguous(&stored)?;
    Ok(stored)
}

/// Checks that subscription `held` kept its acknowledgements and that
/// everything else, including the deliveries it held unacknowledged when
/// the broker died, is delivered again.
async fn check_held_subscription(client: &Client, next_offset: u64) -> anyhow::Result<()> {
    let figures = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest {
            name: "held".into(),
        })
        .await?
        .into_inner()
        .subscription
        .context("no subscription")?;
    ensure!(figures.ack_floor == SEEDS / 2, "{figures:?}");
    ensure!(figures.backlog == next_offset - SEEDS / 2, "{figures:?}");
    let mut again = Deliveries::open(client, subscribe_request("held", "")).await?;
    let redelivered = again
        .next_n(usize::try_from(next_offset - SEEDS / 2)?)
        .await?;
    let offsets: BTreeSet<u64> = redelivered.iter().map(|m| m.offset).collect();
    ensure!(
        offsets.iter().copied().eq(SEEDS / 2..next_offset),
        "redelivered offsets are not {}..{next_offset}",
        SEEDS / 2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_publishes_and_acks_survive_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: TOPIC.into(),
            ..CreateTopicRequest::default()
        })
        .await?;
    let (seed_batch, held) = seed_and_hold(&client).await?;
    let acknowledged = publish_and_kill(server, &client, seed_batch).await?;
    drop(held);

    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    let stored = check_log(&client, &acknowledged).await?;
    check_held_subscription(&client, stored.len() as u64).await
}
