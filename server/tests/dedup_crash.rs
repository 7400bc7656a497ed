//! Idempotent publish across `kill -9`: publishers send batches whose
//! messages carry ids, the broker is killed while they are busy, and after
//! a restart every batch that was sent — answered or not — is published
//! again with the same ids. Nothing may be stored twice: an answered batch
//! comes back as duplicates at its original offsets, a batch whose answer
//! was lost either was stored whole (duplicates) or not at all (stored
//! now), and every id sits at exactly one offset.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, ensure};
use tidings::v1::{
    CreateTopicRequest, GetTopicRequest, PublishMessage, PublishRequest, PublishResponse,
};
use tidings_client::Client;
use tokio::sync::watch;

mod common;

use common::{Deliveries, ServerProcess, kill_9_while_publishing, subscribe_request};

const TOPIC: &str = "dedup.crash";
const PUBLISHERS: u32 = 4;
/// Each publisher stops after this many batches if the kill has not come.
const MAX_BATCHES: u32 = 1000;

/// A batch that was sent: its ids, and the broker's answer if one came.
#[derive(Debug)]
struct Sent {
    ids: Vec<String>,
    answer: Option<Vec<u64>>,
}

type Record = Arc<Mutex<Vec<Sent>>>;

fn batch(ids: &[String]) -> Vec<PublishMessage> {
    ids.iter()
        .map(|id| PublishMessage {
            payload: id.clone().into(),
            id: id.clone(),
            ..Default::default()
        })
        .collect()
}

async fn publish(client: &Client, ids: &[String]) -> Result<PublishResponse, tonic::Status> {
    let request = PublishRequest {
        topic: TOPIC.into(),
        messages: batch(ids),
    };
    Ok(client
        .publisher_service()
        .publish(request)
        .await?
        .into_inner())
}

/// Publishes batches of 1 to 4 messages until the broker stops answering;
/// records every batch sent, with its answer when one came.
async fn publish_until_killed(
    client: Client,
    publisher: u32,
    record: Record,
    count_tx: watch::Sender<usize>,
) {
    for seq in 0..MAX_BATCHES {
        let size = 1 + (seq % 4) as usize;
        let ids: Vec<String> = (0..size)
            .map(|i| format!("p{publisher}-s{seq}-i{i}"))
            .collect();
        let answer = publish(&client, &ids).await;
        let stop = answer.is_err();
        let answer = answer.ok().map(|response| response.offsets);
        record
            .lock()
            .expect("record lock")
            .push(Sent { ids, answer });
        if stop {
            return;
        }
        count_tx.send_modify(|count| *count += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_published_before_a_kill_9_are_not_stored_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: TOPIC.into(),
            // Long enough for any machine to restart within it.
            dedup_window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..CreateTopicRequest::default()
        })
        .await?;

    let record: Record = Arc::default();
    let kill_after = kill_9_while_publishing(server, PUBLISHERS, |id, count_tx| {
        publish_until_killed(client.clone(), id, record.clone(), count_tx)
    })
    .await?;
    let sent = std::mem::take(&mut *record.lock().expect("record lock"));

    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    let mut offset_of: BTreeMap<String, u64> = BTreeMap::new();
    let (mut answered, mut in_doubt) = (0, 0);
    for batch in &sent {
        let again = publish(&client, &batch.ids).await?;
        ensure!(again.duplicates.len() == batch.ids.len(), "{again:?}");
        match &batch.answer {
            Some(offsets) => {
                answered += 1;
                ensure!(
                    again.offsets == *offsets && again.duplicates.iter().all(|&d| d),
                    "answered batch {:?} at {offsets:?} came back as {again:?}",
                    batch.ids
                );
            }
            None => {
                in_doubt += 1;
                let first = again.duplicates[0];
                ensure!(
                    again.duplicates.iter().all(|&d| d == first),
                    "batch {:?} was stored in part: {again:?}",
                    batch.ids
                );
            }
        }
        for (id, offset) in batch.ids.iter().zip(&again.offsets) {
            ensure!(
                offset_of.insert(id.clone(), *offset).is_none(),
                "id {id} sent twice"
            );
        }
    }
    eprintln!("killed after {kill_after}: {answered} answered batches, {in_doubt} in doubt");

    // The topic holds each id once, at the offset it was answered with.
    let next_offset = offset_of.len();
    let topic = client
        .admin_service()
        .get_topic(GetTopicRequest { name: TOPIC.into() })
        .await?
        .into_inner()
        .topic
        .context("no topic")?;
    ensure!(
        topic.next_offset == next_offset as u64,
        "{} offsets handed out for {next_offset} ids",
        topic.next_offset
    );
    let mut all = Deliveries::open(&client, subscribe_request("verify", TOPIC)).await?;
    let delivered = all.next_n(next_offset).await?;
    let mut stored: BTreeMap<u64, String> = BTreeMap::new();
    for message in &delivered {
        ensure!(
            message.id == String::from_utf8(message.payload.to_vec())?,
            "{message:?}"
        );
        ensure!(stored.insert(message.offset, message.id.clone()).is_none());
    }
    ensure!(
        stored.keys().copied().eq(0..next_offset as u64),
        "stored offsets are not 0..{next_offset}: a duplicate took an offset"
    );
    for (id, offset) in &offset_of {
        ensure!(stored.get(offset) == Some(id), "{id} is not at {offset}");
    }
    Ok(())
}
