//! `Commit` across `kill -9`: workers turn input messages into results on
//! two topics, each committing both results with the input's
//! acknowledgement, while the broker is killed. After a restart every input
//! is in one of two states — both results stored once and the input
//! acknowledged, or no result and the input still to be delivered — and
//! every commit that was answered is in the first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, ensure};
use tidings::v1::{
    AckRequest, CommitRequest, CreateSubscriptionRequest, CreateTopicRequest, GetTopicRequest,
    PublishMessage, PublishRequest,
};
use tidings_client::Client;
use tokio::sync::watch;

mod common;

use common::{Deliveries, ServerProcess, kill_9_while_publishing, subscribe_request};

const INPUT: &str = "commit.input";
const OUTPUTS: [&str; 2] = ["commit.left", "commit.right"];
const SUBSCRIPTION: &str = "commit.workers";
const WORKERS: u32 = 4;
/// Inputs published before the workers start; more than the kill waits for.
const INPUTS: u64 = 2000;

fn message(payload: String) -> PublishMessage {
    PublishMessage {
        payload: payload.into(),
        ..PublishMessage::default()
    }
}

async fn create_topic(client: &Client, name: &str) -> anyhow::Result<()> {
    let request = CreateTopicRequest {
        name: name.into(),
        ..CreateTopicRequest::default()
    };
    client.admin_service().create_topic(request).await?;
    Ok(())
}

/// Commits the results of the inputs `worker`, `worker + WORKERS`, … one
/// at a time until the broker stops answering; records each answered one.
async fn commit_until_killed(
    client: Client,
    worker: u32,
    answered: Arc<Mutex<Vec<u64>>>,
    count_tx: watch::Sender<usize>,
) {
    for input in (u64::from(worker)..INPUTS).step_by(WORKERS as usize) {
        let request = CommitRequest {
            publishes: OUTPUTS
                .iter()
                .map(|topic| PublishRequest {
                    topic: (*topic).into(),
                    messages: vec![message(input.to_string())],
                })
                .collect(),
            acks: vec![AckRequest {
                subscription: SUBSCRIPTION.into(),
                offsets: vec![input],
                ack_ids: Vec::new(),
            }],
        };
        if client.publisher_service().commit(request).await.is_err() {
            return;
        }
        answered.lock().expect("answered lock").push(input);
        count_tx.send_modify(|count| *count += 1);
    }
}

/// How many times each input's result is stored in `topic`.
async fn results(client: &Client, topic: &str) -> anyhow::Result<BTreeMap<u64, u32>> {
    let next_offset = client
        .admin_service()
        .get_topic(GetTopicRequest { name: topic.into() })
        .await?
        .into_inner()
        .topic
        .context("no topic")?
        .next_offset;
    let reader = format!("{topic}.check");
    let mut stream = Deliveries::open(client, subscribe_request(&reader, topic)).await?;
    let mut counts = BTreeMap::new();
    for message in stream.next_n(usize::try_from(next_offset)?).await? {
        let input: u64 = String::from_utf8(message.payload.to_vec())?.parse()?;
        *counts.entry(input).or_default() += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_is_stored_whole_or_not_at_all_across_a_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    for topic in [INPUT, OUTPUTS[0], OUTPUTS[1]] {
        create_topic(&client, topic).await?;
    }
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: SUBSCRIPTION.into(),
            topic: INPUT.into(),
            ..CreateSubscriptionRequest::default()
        })
        .await?;
    let inputs: Vec<PublishMessage> = (0..INPUTS).map(|i| message(i.to_string())).collect();
    for chunk in inputs.chunks(500) {
        let request = PublishRequest {
            topic: INPUT.into(),
            messages: chunk.to_vec(),
        };
        client.publisher_service().publish(request).await?;
    }

    let answered: Arc<Mutex<Vec<u64>>> = Arc::default();
    let kill_after = kill_9_while_publishing(server, WORKERS, |worker, count_tx| {
        commit_until_killed(client.clone(), worker, Arc::clone(&answered), count_tx)
    })
    .await?;
    let answered: BTreeSet<u64> = std::mem::take(&mut *answered.lock().expect("answered lock"))
        .into_iter()
        .collect();

    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    let left = results(&client, OUTPUTS[0]).await?;
    let right = results(&client, OUTPUTS[1]).await?;
    ensure!(
        left.keys().eq(right.keys()),
        "the two topics hold results of different inputs: {:?} against {:?}",
        left.keys().collect::<Vec<_>>(),
        right.keys().collect::<Vec<_>>()
    );
    ensure!(
        left.values().chain(right.values()).all(|&n| n == 1),
        "a result was stored twice"
    );
    let committed: BTreeSet<u64> = left.keys().copied().collect();
    ensure!(
        answered.is_subset(&committed),
        "answered commits are missing: {:?}",
        answered.difference(&committed).collect::<Vec<_>>()
    );
    // What is still to be delivered is exactly what was not committed.
    let pending = usize::try_from(INPUTS)? - committed.len();
    let mut stream = Deliveries::open(&client, subscribe_request(SUBSCRIPTION, INPUT)).await?;
    let delivered: BTreeSet<u64> = stream
        .next_n(pending)
        .await?
        .iter()
        .map(|m| m.offset)
        .collect();
    let expected: BTreeSet<u64> = (0..INPUTS).filter(|i| !committed.contains(i)).collect();
    ensure!(
        delivered == expected,
        "inputs delivered again that were committed: {:?}",
        delivered.difference(&expected).collect::<Vec<_>>()
    );
    eprintln!(
        "killed after {kill_after}: {} answered, {} committed",
        answered.len(),
        committed.len()
    );
    Ok(())
}
