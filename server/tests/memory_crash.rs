//! Memory topics across `kill -9`: publishers keep a memory topic busy, the
//! broker is killed amid their publishes, twice. After each restart the
//! topic and its subscription exist, the topic is empty, and no offset
//! handed out before (answered or not) is handed out again: the offset
//! mark the broker stored before answering holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, ensure};
use tidings::v1::{
    CreateSubscriptionRequest, CreateTopicRequest, GetSubscriptionRequest, GetTopicRequest,
    PublishMessage, PublishRequest, StorageClass, Topic,
};
use tidings_client::Client;
use tokio::sync::watch;

mod common;

use common::{ServerProcess, kill_9_while_publishing};

const TOPIC: &str = "memory.crash";
const PUBLISHERS: u32 = 4;
/// Each publisher stops after this many batches if the kill has not come.
const MAX_BATCHES: u32 = 1000;

/// Publishes batches of 1 to 4 messages until the broker stops answering;
/// raises `highest` to the highest offset answered.
async fn publish_until_killed(
    client: Client,
    highest: Arc<AtomicU64>,
    count_tx: watch::Sender<usize>,
) {
    for seq in 0..MAX_BATCHES {
        let messages = (0..1 + seq % 4)
            .map(|i| PublishMessage {
                payload: format!("s{seq}-i{i}").into(),
                ..PublishMessage::default()
            })
            .collect();
        let request = PublishRequest {
            topic: TOPIC.into(),
            messages,
        };
        let Ok(response) = client.publisher_service().publish(request).await else {
            return;
        };
        let offsets = response.into_inner().offsets;
        if let Some(&last) = offsets.iter().max() {
            highest.fetch_max(last, Ordering::AcqRel);
        }
        count_tx.send_modify(|count| *count += 1);
    }
}

/// Publishes from several tasks until a random number of batches were
/// answered, then kills the broker; returns the highest offset answered.
async fn publish_and_kill(server: ServerProcess) -> anyhow::Result<u64> {
    let client = server.client().await?;
    let highest = Arc::new(AtomicU64::new(0));
    kill_9_while_publishing(server, PUBLISHERS, |_, count_tx| {
        publish_until_killed(client.clone(), Arc::clone(&highest), count_tx)
    })
    .await?;
    Ok(highest.load(Ordering::Acquire))
}

async fn get_topic(client: &Client) -> anyhow::Result<Topic> {
    let request = GetTopicRequest { name: TOPIC.into() };
    let response = client.admin_service().get_topic(request).await?;
    response.into_inner().topic.context("no topic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_of_a_memory_topic_are_not_reused_after_a_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: TOPIC.into(),
            storage: StorageClass::Memory.into(),
            ..CreateTopicRequest::default()
        })
        .await?;
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "watch".into(),
            topic: TOPIC.into(),
            ..CreateSubscriptionRequest::default()
        })
        .await?;

    let mut server = server;
    for round in 1..=2 {
        let highest = publish_and_kill(server).await?;
        server = ServerProcess::start(&data_dir, dir.path()).await?;
        let client = server.client().await?;
        let topic = get_topic(&client).await?;
        eprintln!("round {round}: highest answered {highest}, restarted at {topic:?}");
        ensure!(topic.storage() == StorageClass::Memory, "{topic:?}");
        ensure!(
            topic.first_offset == topic.next_offset && topic.retained_messages == 0,
            "the topic is empty after a kill: {topic:?}"
        );
        ensure!(
            topic.next_offset > highest,
            "round {round}: offset {} handed out again (answered up to {highest})",
            topic.next_offset
        );
        let sub = client
            .admin_service()
            .get_subscription(GetSubscriptionRequest {
                name: "watch".into(),
            })
            .await?
            .into_inner()
            .subscription
            .context("no subscription")?;
        ensure!(sub.ack_floor == topic.first_offset, "{sub:?}");
    }
    Ok(())
}
