//! The storage conformance suite: one set of checks of the [`Store`]
//! contract, run against every implementation.
//!
//! Each check takes a [`Harness`] that opens a store and reopens it on the
//! same data, as a restart would. The `conformance!` macro at the bottom
//! turns every check into a `#[tokio::test]` per implementation. A new
//! engine joins by adding a harness and one line there. Checks assert only
//! what the contract in `mod.rs` promises.
//!
//! The checks live beside this file, grouped by behaviour (appends, reads,
//! subscriptions, a store's life, ids and delays, memory topics); this
//! file holds the harnesses, the helpers they share and the macro.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;

use std::sync::{Arc, Mutex};

use super::{
    Appended, DeliveryRecord, DeliveryUpdate, MemoryStore, NewMessage, ReadLimit, RocksStore,
    SharedStore, StoreError, StoreListener, StoredMessage, StoredSubscription, SubscriptionId,
    SubscriptionRecord, SubscriptionSettings, SyncPolicy, TopicId,
};
use super::{
    Catalog, Commit, DEFAULT_MEMORY_BYTES, DeadLetters, Retention, StorageClass, TopicRecord,
    TopicSettings,
};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::OffsetRanges;
use crate::offsets::{AckState, Offset};

mod appends;
mod ids_and_delays;
mod lifecycle;
mod memory_topics;
mod reads;
mod subscriptions;

use appends::*;
use ids_and_delays::*;
use lifecycle::*;
use memory_topics::*;
use reads::*;
use subscriptions::*;

/// How long one check may take before it counts as hung.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

const EVERYTHING: ReadLimit = ReadLimit {
    max_messages: usize::MAX,
    max_bytes: usize::MAX,
};

/// Opens a store, and opens it again on the same data.
#[async_trait]
trait Harness: Send {
    /// Opens the store for the first time.
    async fn open(&mut self) -> anyhow::Result<SharedStore>;
    /// Closes `store` and opens its data again, as after a restart.
    async fn reopen(&mut self, store: SharedStore) -> anyhow::Result<SharedStore>;
}

#[derive(Default)]
struct MemoryHarness {
    store: MemoryStore,
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&mut self) -> anyhow::Result<SharedStore> {
        Ok(std::sync::Arc::new(self.store.clone()))
    }

    async fn reopen(&mut self, store: SharedStore) -> anyhow::Result<SharedStore> {
        store.close().await?;
        Ok(std::sync::Arc::new(self.store.reopen()))
    }
}

struct RocksHarness {
    dir: tempfile::TempDir,
    policy: SyncPolicy,
}

impl RocksHarness {
    fn new(policy: SyncPolicy) -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            policy,
        })
    }
}

#[async_trait]
impl Harness for RocksHarness {
    async fn open(&mut self) -> anyhow::Result<SharedStore> {
        Ok(std::sync::Arc::new(
            RocksStore::open(self.dir.path(), self.policy).await?,
        ))
    }

    async fn reopen(&mut self, store: SharedStore) -> anyhow::Result<SharedStore> {
        // Closing releases the database even while other handles remain.
        store.close().await?;
        drop(store);
        self.open().await
    }
}

fn topic_name(name: &str) -> anyhow::Result<TopicName> {
    Ok(TopicName::new(name)?)
}

fn subscription_name(name: &str) -> anyhow::Result<SubscriptionName> {
    Ok(SubscriptionName::new(name)?)
}

/// A message whose payload, key and attributes all carry `tag`.
fn settings(ack_deadline: Duration) -> SubscriptionSettings {
    SubscriptionSettings {
        ack_deadline,
        filter: String::new(),
        retry: None,
        ordered: false,
        dead_letter: None,
        delivery_delay: Duration::ZERO,
        push: None,
    }
}

fn message(tag: &str) -> NewMessage {
    NewMessage {
        payload: Bytes::from(format!("payload {tag}")),
        key: format!("key {tag}"),
        attributes: vec![
            ("tag".to_owned(), tag.to_owned()),
            ("n".to_owned(), "1".to_owned()),
        ],
        id: ByteString::new(),
        deliver_at: None,
        deliver_after: None,
    }
}

/// A message tagged `tag` with the id `id`.
fn with_id(tag: &str, id: &str) -> NewMessage {
    NewMessage {
        id: id.into(),
        ..message(tag)
    }
}

/// The duplicates of an append as (index in the batch, original offset).
fn duplicates(appended: &Appended) -> Vec<(usize, Offset)> {
    appended
        .duplicates
        .iter()
        .map(|d| (d.index, d.offset))
        .collect()
}

fn messages(tags: &[&str]) -> Vec<NewMessage> {
    tags.iter().map(|tag| message(tag)).collect()
}

fn payloads(read: &[StoredMessage]) -> Vec<Bytes> {
    read.iter().map(|m| m.payload.clone()).collect()
}

fn offsets(read: &[StoredMessage]) -> Vec<u64> {
    read.iter().map(|m| m.offset).collect()
}

/// Appends `count` messages of `size` payload bytes each, one per batch.
async fn append_sized(
    store: &SharedStore,
    topic: TopicId,
    count: usize,
    size: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        let payload = Bytes::from(vec![b'a' + (i % 26) as u8; size]);
        store
            .append(
                topic,
                vec![NewMessage {
                    payload,
                    ..NewMessage::default()
                }],
            )
            .await?;
    }
    Ok(())
}

/// A subscription as `load` reports it, with no delivery records.
fn stored(record: &SubscriptionRecord, acks: AckState) -> StoredSubscription {
    StoredSubscription {
        record: record.clone(),
        acks,
        deliveries: Vec::new(),
        dead_letters: DeadLetters::default(),
    }
}

/// An update of acknowledgements alone.
fn acks_update(subscription: SubscriptionId, acks: AckState) -> DeliveryUpdate {
    DeliveryUpdate {
        subscription,
        acks,
        records: Vec::new(),
        dead_letters: None,
    }
}

/// What a store told its listener, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Appended(TopicId, Offset, Vec<NewMessage>),
    Truncated(TopicId, Offset),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Heard>>);

impl Recorder {
    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl StoreListener for Recorder {
    fn appended(&self, topic: TopicId, appended: &Appended, messages: Vec<NewMessage>) {
        let heard = Heard::Appended(topic, appended.first_offset, messages);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(heard);
    }

    fn truncated(&self, topic: TopicId, first_offset: Offset, _retained_bytes: u64) {
        let heard = Heard::Truncated(topic, first_offset);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(heard);
    }
}

/// Creates a disk topic named `name` with the default settings; its id.
async fn disk_topic(store: &SharedStore, name: &str) -> anyhow::Result<TopicId> {
    let name = topic_name(name)?;
    let record = store
        .create_topic(&name, TopicSettings::default(), StorageClass::Disk)
        .await?;
    Ok(record.id)
}

async fn next_offset(store: &SharedStore, topic: TopicId) -> anyhow::Result<u64> {
    let catalog = store.load().await?;
    let record = catalog
        .topics
        .iter()
        .find(|t| t.id == topic)
        .context("topic is listed")?;
    Ok(record.next_offset)
}

/// Waits until the wall clock has passed `time` (by more than the
/// microsecond stores keep), so later appends get a later publish time.
async fn wait_past(time: SystemTime) {
    while SystemTime::now() <= time + Duration::from_micros(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The landed batches of [`append_from_tasks`]: per task, each batch's
/// first offset and its messages' tags.
type Landed = tokio::task::JoinSet<anyhow::Result<Vec<(Offset, Vec<String>)>>>;

/// Spawns `tasks` tasks that each append `batches` batches of 1 to 4
/// tagged messages, one after the other, with `append` (given the store,
/// the task's number plus the batch's and the messages; it returns the
/// first offset).
fn append_from_tasks<F, Fut>(store: &SharedStore, tasks: usize, batches: usize, append: F) -> Landed
where
    F: Fn(SharedStore, usize, Vec<NewMessage>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Offset>> + Send,
{
    let mut landed = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let (store, append) = (store.clone(), append.clone());
        landed.spawn(async move {
            let mut landed = Vec::new();
            for batch in 0..batches {
                let len = 1 + (task + batch) % 4;
                let tags: Vec<String> = (0..len).map(|i| format!("{task}/{batch}/{i}")).collect();
                let messages = tags.iter().map(|t| message(t)).collect();
                landed.push((append(store.clone(), task + batch, messages).await?, tags));
            }
            anyhow::Ok(landed)
        });
    }
    landed
}

/// The batches appended by `tasks` (each its first offset and its
/// messages' tags), in offset order, once they are checked to leave no gap
/// from 0; and the offset after the last.
async fn contiguous(mut tasks: Landed) -> anyhow::Result<(Vec<(Offset, Vec<String>)>, Offset)> {
    let mut landed = Vec::new();
    while let Some(result) = tasks.join_next().await {
        landed.extend(result??);
    }
    landed.sort_by_key(|(first, _)| *first);
    let mut expected_next = 0;
    for (first, tags) in &landed {
        ensure!(
            *first == expected_next,
            "batch at {first}, expected {expected_next}"
        );
        expected_next += tags.len() as u64;
    }
    Ok((landed, expected_next))
}

/// Dead letters of offsets 4 and 7, with `rejected` rejections.
fn dead_letters(rejected: u64) -> anyhow::Result<DeadLetters> {
    let offsets = OffsetRanges::from_sorted_ranges([4..5, 7..8]).context("valid ranges")?;
    Ok(DeadLetters { offsets, rejected })
}

/// The record of `topic` as `load` reports it.
async fn loaded_topic(store: &SharedStore, topic: TopicId) -> anyhow::Result<TopicRecord> {
    let catalog = store.load().await?;
    let record = catalog.topics.into_iter().find(|t| t.id == topic);
    record.context("topic is listed")
}

/// Turns every check into one `#[tokio::test]` per store, under a timeout.
macro_rules! conformance {
    ($($module:ident => $harness:expr),+ $(,)?) => {
        conformance!(@each [$($module => $harness),+] [
            offsets_start_at_zero_and_are_contiguous,
            concurrent_appends_get_disjoint_contiguous_ranges,
            memory_topics_keep_order_under_concurrent_appends_and_commits,
            reads_respect_limits,
            read_offsets_skips_missing,
            offset_at_time_finds_first_message_at_or_after,
            ack_states_are_saved_replaced_and_loaded,
            subscriptions_are_created_and_deleted,
            subscription_settings_change_and_survive_a_reopen,
            delete_topic_removes_messages_and_subscriptions,
            reopen_keeps_everything,
            closed_store_refuses_calls,
            reads_stop_at_the_end_of_their_range,
            the_listener_hears_every_append_in_order,
            truncate_deletes_below_and_never_goes_back,
            retained_bytes_follow_appends_and_trims,
            offset_at_time_skips_offsets_without_messages,
            delivery_records_are_stored_deleted_and_go_with_their_subscription,
            a_commit_appends_and_settles_together_and_hears_its_appends,
            repeated_ids_are_stored_once_across_restarts,
            ids_are_forgotten_after_the_window,
            delayed_messages_are_indexed_by_due_time_until_forgotten,
            memory_topics_are_read_like_disk_topics_and_empty_after_a_reopen,
            memory_topics_drop_their_oldest_messages_beyond_their_bound,
            memory_topics_without_max_bytes_keep_64_mib,
            memory_topics_remember_ids_while_open_and_not_across_a_reopen,
            started_appends_are_stored_in_the_order_started,
        ]);
    };
    (@each [$($module:ident => $harness:expr),+] $checks:tt) => {
        $(conformance!(@module $module, $harness, $checks);)+
    };
    (@module $module:ident, $harness:expr, [$($check:ident),+ $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() -> anyhow::Result<()> {
                    let harness = $harness;
                    tokio::time::timeout(CHECK_TIMEOUT, super::$check(harness)).await?
                }
            )+
        }
    };
}

conformance! {
    memory => MemoryHarness::default(),
    rocks_sync_always => RocksHarness::new(SyncPolicy::Always)?,
    rocks_sync_interval => RocksHarness::new(SyncPolicy::Interval(Duration::from_millis(10)))?,
}
