//! The storage conformance suite: one set of checks of the [`Store`]
//! contract, run against every implementation.
//!
//! Each check takes a [`Harness`] that opens a store and reopens it on the
//! same data, as a restart would. The `conformance!` macro at the bottom
//! turns every check into a `#[tokio::test]` per implementation. A new
//! engine joins by adding a harness and one line there. Checks assert only
//! what the contract in `mod.rs` promises.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use async_trait::async_trait;
use bytes::Bytes;

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
        id: String::new(),
        deliver_at: None,
        deliver_after: None,
    }
}

/// A message tagged `tag` with the id `id`.
fn with_id(tag: &str, id: &str) -> NewMessage {
    NewMessage {
        id: id.to_owned(),
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

async fn offsets_start_at_zero_and_are_contiguous(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let orders = store
        .create_topic(
            &topic_name("orders")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let stock = store
        .create_topic(
            &topic_name("stock")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(orders.next_offset == 0 && orders.id != stock.id);
    ensure!(
        store
            .append(orders.id, messages(&["a", "b", "c"]))
            .await?
            .first_offset
            == 0
    );
    ensure!(
        store
            .append(orders.id, messages(&["d", "e"]))
            .await?
            .first_offset
            == 3
    );
    ensure!(store.append(stock.id, messages(&["x"])).await?.first_offset == 0);
    ensure!(next_offset(&store, orders.id).await? == 5);
    ensure!(next_offset(&store, stock.id).await? == 1);
    let read = store.read(orders.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![0, 1, 2, 3, 4], "{read:?}");
    let expected: Vec<NewMessage> = messages(&["a", "b", "c", "d", "e"]);
    for (stored, sent) in read.iter().zip(&expected) {
        ensure!(stored.payload == sent.payload && stored.key == sent.key);
        ensure!(stored.attributes == sent.attributes);
    }
    ensure!(
        read[0].publish_time == read[2].publish_time,
        "one batch, one publish time"
    );
    Ok(())
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

async fn concurrent_appends_get_disjoint_contiguous_ranges(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    const TASKS: usize = 16;
    const BATCHES: usize = 20;
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("busy")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let tasks = append_from_tasks(
        &store,
        TASKS,
        BATCHES,
        move |store, _, messages| async move { Ok(store.append(topic, messages).await?.first_offset) },
    );
    let (landed, expected_next) = contiguous(tasks).await?;
    ensure!(next_offset(&store, topic).await? == expected_next);
    let read = store.read(topic, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.len() as u64 == expected_next);
    let mut by_offset = read.iter();
    for (first, tags) in &landed {
        for (i, tag) in tags.iter().enumerate() {
            let stored = by_offset.next().context("message is there")?;
            ensure!(stored.offset == first + i as u64 && stored.payload == message(tag).payload);
        }
    }
    ensure!(
        read.windows(2)
            .all(|w| w[0].publish_time <= w[1].publish_time)
    );
    Ok(())
}

/// Appends and commits to one memory topic from many tasks at once, some
/// commits with a disk topic beside it: every batch gets a range of its
/// own, the ranges leave no gap, the listener hears them in offset order,
/// and each commit stored its messages in both topics.
async fn memory_topics_keep_order_under_concurrent_appends_and_commits(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let (tasks, batches) = (8, 30);
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let settings = TopicSettings::default();
    let memory = store
        .create_topic(&topic_name("fast")?, settings.clone(), StorageClass::Memory)
        .await?
        .id;
    let disk = store
        .create_topic(&topic_name("slow")?, settings, StorageClass::Disk)
        .await?
        .id;
    // Every fourth batch is a commit with a message for the disk topic.
    let append = move |store: SharedStore, turn: usize, batch| async move {
        if !turn.is_multiple_of(4) {
            return Ok(store.append(memory, batch).await?.first_offset);
        }
        let commit = Commit {
            appends: vec![(memory, batch), (disk, messages(&["c"]))],
            deliveries: Vec::new(),
        };
        Ok(store.commit(commit).await?[0].first_offset)
    };
    let landed = append_from_tasks(&store, tasks, batches, append);
    let (landed, expected_next) = contiguous(landed).await?;
    ensure!(next_offset(&store, memory).await? == expected_next);
    let read = store.read(memory, 0..u64::MAX, EVERYTHING).await?;
    let tags = landed.iter().flat_map(|(_, tags)| tags);
    ensure!(payloads(&read) == tags.map(|t| message(t).payload).collect::<Vec<_>>());
    let mut heard_next = 0;
    for heard in recorder.take() {
        if let Heard::Appended(topic, first, messages) = heard
            && topic == memory
        {
            ensure!(first == heard_next, "heard {first} before {heard_next}");
            heard_next += messages.len() as u64;
        }
    }
    ensure!(heard_next == expected_next, "every append heard");
    let commits = (0..tasks)
        .flat_map(|task| (0..batches).filter(move |batch| (task + batch).is_multiple_of(4)))
        .count();
    ensure!(next_offset(&store, disk).await? == commits as u64);
    Ok(())
}

async fn reads_respect_limits(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    append_sized(&store, topic, 10, 10).await?;
    let limit = |max_messages, max_bytes| ReadLimit {
        max_messages,
        max_bytes,
    };
    ensure!(offsets(&store.read(topic, 0..u64::MAX, limit(3, usize::MAX)).await?) == vec![0, 1, 2]);
    ensure!(
        offsets(
            &store
                .read(topic, 8..u64::MAX, limit(10, usize::MAX))
                .await?
        ) == vec![8, 9]
    );
    // Each message's wire size is its 10 payload bytes plus 32.
    ensure!(offsets(&store.read(topic, 2..u64::MAX, limit(10, 100)).await?) == vec![2, 3, 4]);
    ensure!(offsets(&store.read(topic, 2..u64::MAX, limit(10, 126)).await?) == vec![2, 3, 4]);
    ensure!(
        offsets(&store.read(topic, 5..u64::MAX, limit(10, 1)).await?) == vec![5],
        "at least one"
    );
    ensure!(
        offsets(&store.read(topic, 5..u64::MAX, limit(10, 0)).await?) == vec![5],
        "at least one"
    );
    ensure!(
        store
            .read(topic, 10..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .read(topic, u64::MAX - 1..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    let first = store.read(topic, 0..u64::MAX, limit(1, usize::MAX)).await?;
    ensure!(payloads(&first) == vec![Bytes::from(vec![b'a'; 10])]);
    Ok(())
}

async fn read_offsets_skips_missing(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    store
        .append(topic, messages(&["0", "1", "2", "3", "4"]))
        .await?;
    let read = store
        .read_offsets(topic, vec![1, 3, 5, 100, u64::MAX])
        .await?;
    ensure!(offsets(&read) == vec![1, 3], "{read:?}");
    ensure!(payloads(&read) == vec![message("1").payload, message("3").payload]);
    ensure!(read[1].key == "key 3" && read[1].attributes == message("3").attributes);
    ensure!(store.read_offsets(topic, Vec::new()).await?.is_empty());
    Ok(())
}

async fn offset_at_time_finds_first_message_at_or_after(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    ensure!(
        store.offset_at_time(topic, UNIX_EPOCH).await? == 0,
        "empty topic"
    );
    let first = store.append(topic, messages(&["0", "1"])).await?;
    wait_past(first.publish_time).await;
    let second = store.append(topic, messages(&["2", "3", "4"])).await?;
    ensure!(second.publish_time > first.publish_time);
    wait_past(second.publish_time).await;
    let third = store.append(topic, messages(&["5"])).await?;
    let at = |time| store.offset_at_time(topic, time);
    ensure!(at(UNIX_EPOCH).await? == 0);
    ensure!(at(first.publish_time).await? == 0);
    ensure!(at(first.publish_time + Duration::from_micros(1)).await? == 2);
    ensure!(at(second.publish_time).await? == 2);
    ensure!(at(third.publish_time).await? == 5);
    ensure!(
        at(third.publish_time + Duration::from_secs(3600)).await? == 6,
        "past the end"
    );
    let missing = store
        .offset_at_time(TopicId(u64::MAX - 1), UNIX_EPOCH)
        .await;
    ensure!(
        matches!(missing, Err(StoreError::TopicNotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

async fn ack_states_are_saved_replaced_and_loaded(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let name = subscription_name("s")?;
    let deadline = Duration::from_secs(30);
    let sub = store
        .create_subscription(&name, topic, settings(deadline), AckState::starting_at(3))
        .await?;
    let catalog = store.load().await?;
    ensure!(catalog.subscriptions == vec![stored(&sub, AckState::starting_at(3))]);
    let mut state = AckState::starting_at(3);
    for offset in [5, 6, 9] {
        state.ack(offset);
    }
    store
        .save_deliveries(vec![acks_update(sub.id, state.clone())])
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, state.clone())]);
    state.ack(3);
    state.ack(4);
    ensure!(state.floor == 7);
    // A state for a subscription that does not exist is ignored.
    let unknown = SubscriptionId(u64::MAX - 1);
    store
        .save_deliveries(vec![
            acks_update(unknown, AckState::starting_at(1)),
            acks_update(sub.id, state.clone()),
        ])
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, state)]);
    Ok(())
}

async fn subscriptions_are_created_and_deleted(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let deadline = Duration::from_millis(12_500);
    let first = store
        .create_subscription(
            &subscription_name("one")?,
            topic,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    let second = store
        .create_subscription(
            &subscription_name("two")?,
            topic,
            settings(deadline),
            AckState::starting_at(7),
        )
        .await?;
    ensure!(first.id < second.id, "ids grow");
    ensure!(
        first.topic == topic
            && first.settings.ack_deadline == deadline
            && first.name.as_str() == "one"
    );
    let listed: Vec<_> = store
        .load()
        .await?
        .subscriptions
        .into_iter()
        .map(|s| s.record)
        .collect();
    ensure!(listed == vec![first.clone(), second.clone()], "{listed:?}");
    store.delete_subscription(first.id).await?;
    let again = store.delete_subscription(first.id).await;
    ensure!(
        matches!(again, Err(StoreError::SubscriptionNotFound(id)) if id == first.id),
        "{again:?}"
    );
    // Saving the deleted one's state must not bring it back.
    store
        .save_deliveries(vec![acks_update(first.id, AckState::starting_at(2))])
        .await?;
    let left = store.load().await?.subscriptions;
    ensure!(
        left == vec![stored(&second, AckState::starting_at(7))],
        "{left:?}"
    );
    let orphan = store
        .create_subscription(
            &subscription_name("x")?,
            TopicId(u64::MAX - 1),
            settings(deadline),
            AckState::default(),
        )
        .await;
    ensure!(
        matches!(orphan, Err(StoreError::TopicNotFound(_))),
        "{orphan:?}"
    );
    Ok(())
}

async fn subscription_settings_change_and_survive_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let mut acks = AckState::starting_at(3);
    acks.ack(5);
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic,
            settings(Duration::from_secs(10)),
            acks.clone(),
        )
        .await?;
    let changed = SubscriptionRecord {
        settings: SubscriptionSettings {
            ack_deadline: Duration::from_secs(45),
            filter: r#"attributes.kind = "order""#.to_owned(),
            retry: Some(super::RetryPolicy {
                minimum_backoff: Duration::from_millis(250),
                maximum_backoff: Duration::from_secs(60),
            }),
            ordered: false,
            dead_letter: Some(super::DeadLetterPolicy {
                topic: topic_name("t")?,
                max_delivery_attempts: 3,
            }),
            delivery_delay: Duration::from_secs(90),
            push: Some(super::PushConfig {
                endpoint: "https://hooks.example/tidings".to_owned(),
                headers: [("authorization".to_owned(), "Bearer t".to_owned())].into(),
                max_outstanding: 7,
            }),
        },
        ..sub.clone()
    };
    store.update_subscription(changed.clone()).await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&changed, acks.clone())]);
    let store = h.reopen(store).await?;
    let loaded = store.load().await?.subscriptions;
    ensure!(
        loaded == vec![stored(&changed, acks.clone())],
        "settings and acks as they were: {loaded:?}"
    );
    // Back to no filter: the record reads back without one.
    store.update_subscription(sub.clone()).await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, acks)]);
    store.delete_subscription(sub.id).await?;
    let gone = store.update_subscription(sub.clone()).await;
    ensure!(
        matches!(gone, Err(StoreError::SubscriptionNotFound(id)) if id == sub.id),
        "{gone:?}"
    );
    ensure!(
        store.load().await?.subscriptions.is_empty(),
        "not brought back"
    );
    store.close().await?;
    Ok(())
}

async fn delete_topic_removes_messages_and_subscriptions(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let doomed = store
        .create_topic(
            &topic_name("doomed")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let kept = store
        .create_topic(
            &topic_name("kept")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    store.append(doomed.id, messages(&["a", "b"])).await?;
    store.append(kept.id, messages(&["k"])).await?;
    let deadline = Duration::from_secs(10);
    store
        .create_subscription(
            &subscription_name("gone")?,
            doomed.id,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    let stays = store
        .create_subscription(
            &subscription_name("stays")?,
            kept.id,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    store.delete_topic(doomed.id).await?;

    ensure!(
        store
            .read(doomed.id, 0..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(store.read_offsets(doomed.id, vec![0, 1]).await?.is_empty());
    let catalog = store.load().await?;
    ensure!(catalog.topics.iter().map(|t| t.id).collect::<Vec<_>>() == vec![kept.id]);
    ensure!(catalog.subscriptions == vec![stored(&stays, AckState::default())]);
    let append = store.append(doomed.id, messages(&["c"])).await;
    ensure!(
        matches!(append, Err(StoreError::TopicNotFound(id)) if id == doomed.id),
        "{append:?}"
    );
    let again = store.delete_topic(doomed.id).await;
    ensure!(
        matches!(again, Err(StoreError::TopicNotFound(_))),
        "{again:?}"
    );
    let at = store.offset_at_time(doomed.id, UNIX_EPOCH).await;
    ensure!(matches!(at, Err(StoreError::TopicNotFound(_))), "{at:?}");
    let sub = store
        .create_subscription(
            &subscription_name("late")?,
            doomed.id,
            settings(deadline),
            AckState::default(),
        )
        .await;
    ensure!(matches!(sub, Err(StoreError::TopicNotFound(_))), "{sub:?}");

    // The name can be used again, under a fresh id and with no old data.
    let reborn = store
        .create_topic(
            &topic_name("doomed")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(
        reborn.id > kept.id && reborn.id != doomed.id,
        "ids are not reused"
    );
    ensure!(
        store
            .append(reborn.id, messages(&["new"]))
            .await?
            .first_offset
            == 0
    );
    ensure!(
        payloads(&store.read(reborn.id, 0..u64::MAX, EVERYTHING).await?)
            == vec![message("new").payload]
    );
    ensure!(
        store.read(kept.id, 0..u64::MAX, EVERYTHING).await?.len() == 1,
        "other topics untouched"
    );
    Ok(())
}

async fn reopen_keeps_everything(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let kept_for_a_day = TopicSettings {
        retention: Retention {
            max_age: Some(Duration::from_secs(86_400)),
            ..Retention::default()
        },
        dedup_window: Duration::from_secs(600),
    };
    let topic = store
        .create_topic(
            &topic_name("orders")?,
            kept_for_a_day.clone(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(topic.settings == kept_for_a_day);
    let deleted = store
        .create_topic(
            &topic_name("deleted")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let before = store.append(topic.id, messages(&["a", "b", "c"])).await?;
    let changed = TopicSettings {
        retention: Retention {
            max_messages: Some(10),
            discard_acked: true,
            ..kept_for_a_day.retention
        },
        dedup_window: Duration::ZERO,
    };
    store
        .update_topic(TopicRecord {
            settings: changed.clone(),
            ..topic.clone()
        })
        .await?;
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic.id,
            settings(Duration::from_secs(30)),
            AckState::default(),
        )
        .await?;
    let mut state = AckState::default();
    state.ack(0);
    state.ack(2);
    let record = DeliveryRecord {
        failures: 2,
        redeliver_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
    };
    let update = DeliveryUpdate {
        records: vec![(1, Some(record))],
        ..acks_update(sub.id, state.clone())
    };
    store.save_deliveries(vec![update]).await?;
    store.truncate(topic.id, 1).await?;
    store.delete_topic(deleted.id).await?;
    let catalog = store.load().await?;

    let store = h.reopen(store).await?;
    let reopened = store.load().await?;
    ensure!(reopened == catalog, "{reopened:?} != {catalog:?}");
    ensure!(reopened.topics[0].next_offset == 3 && reopened.topics[0].first_offset == 1);
    ensure!(
        reopened.topics[0].settings == changed,
        "{:?}",
        reopened.topics[0].settings
    );
    let expected = StoredSubscription {
        deliveries: vec![(1, record)],
        ..stored(&sub, state)
    };
    ensure!(reopened.subscriptions == vec![expected]);
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(payloads(&read) == payloads(&store.read_offsets(topic.id, vec![0, 1, 2]).await?));
    ensure!(
        offsets(&read) == vec![1, 2]
            && read[1].key == "key c"
            && read[0].publish_time == before.publish_time
    );

    let after = store.append(topic.id, messages(&["d"])).await?;
    ensure!(after.first_offset == 3, "continues at the old head");
    ensure!(
        after.publish_time >= before.publish_time,
        "publish time never decreases"
    );
    let newer = store
        .create_topic(
            &topic_name("newer")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(
        newer.id > deleted.id,
        "a deleted topic's id is not reused after a restart"
    );
    let gone = store.append(deleted.id, messages(&["x"])).await;
    ensure!(
        matches!(gone, Err(StoreError::TopicNotFound(_))),
        "{gone:?}"
    );
    store.close().await?;
    Ok(())
}

async fn closed_store_refuses_calls(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    store.append(topic, messages(&["a"])).await?;
    store.close().await?;
    store.close().await.context("closing twice is fine")?;
    let closed = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Closed));
    ensure!(closed(store.load().await.map(drop)));
    ensure!(closed(
        store.append(topic, messages(&["b"])).await.map(drop)
    ));
    ensure!(closed(
        store
            .create_topic(
                &topic_name("u")?,
                TopicSettings::default(),
                StorageClass::Disk
            )
            .await
            .map(drop)
    ));
    ensure!(closed(
        store.read(topic, 0..u64::MAX, EVERYTHING).await.map(drop)
    ));
    ensure!(closed(store.read_offsets(topic, vec![0]).await.map(drop)));
    ensure!(closed(
        store.offset_at_time(topic, UNIX_EPOCH).await.map(drop)
    ));
    ensure!(closed(store.save_deliveries(Vec::new()).await));
    ensure!(closed(store.commit(Commit::default()).await.map(drop)));
    ensure!(closed(store.truncate(topic, 1).await.map(drop)));
    ensure!(closed(store.delete_topic(topic).await));
    Ok(())
}

/// Dead letters of offsets 4 and 7, with `rejected` rejections.
fn dead_letters(rejected: u64) -> anyhow::Result<DeadLetters> {
    let offsets = OffsetRanges::from_sorted_ranges([4..5, 7..8]).context("valid ranges")?;
    Ok(DeadLetters { offsets, rejected })
}

async fn a_commit_appends_and_settles_together_and_hears_its_appends(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let source = store
        .create_topic(
            &topic_name("orders")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let dead = store
        .create_topic(
            &topic_name("orders.dead")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    store.append(source, messages(&["a", "b"])).await?;
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            source,
            settings(Duration::from_secs(10)),
            AckState::default(),
        )
        .await?;
    let record = DeliveryRecord {
        failures: 3,
        redeliver_at: None,
    };
    store
        .save_deliveries(vec![DeliveryUpdate {
            records: vec![(1, Some(record))],
            ..acks_update(sub.id, AckState::default())
        }])
        .await?;
    recorder.take();
    let mut acks = AckState::default();
    acks.ack(1);
    let update = DeliveryUpdate {
        subscription: sub.id,
        acks: acks.clone(),
        records: vec![(1, None)],
        dead_letters: Some(dead_letters(2)?),
    };
    let appended = store
        .commit(Commit {
            appends: vec![(dead, messages(&["b copy"])), (source, messages(&["c"]))],
            deliveries: vec![update],
        })
        .await?;
    ensure!(
        appended.iter().map(|a| a.first_offset).collect::<Vec<_>>() == vec![0, 2],
        "{appended:?}"
    );
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(dead, 0, messages(&["b copy"])),
                Heard::Appended(source, 2, messages(&["c"])),
            ]
    );
    let expected = StoredSubscription {
        dead_letters: dead_letters(2)?,
        ..stored(&sub, acks.clone())
    };
    ensure!(store.load().await?.subscriptions == vec![expected.clone()]);
    // A missing topic refuses the whole commit.
    let refused = store
        .commit(Commit {
            appends: vec![
                (dead, messages(&["x"])),
                (TopicId(u64::MAX - 1), messages(&["y"])),
            ],
            deliveries: vec![acks_update(sub.id, AckState::starting_at(3))],
        })
        .await;
    ensure!(
        matches!(refused, Err(StoreError::TopicNotFound(_))),
        "{refused:?}"
    );
    ensure!(next_offset(&store, dead).await? == 1, "nothing appended");
    ensure!(recorder.take().is_empty(), "nothing heard");

    let store = h.reopen(store).await?;
    ensure!(store.load().await?.subscriptions == vec![expected], "kept");
    ensure!(
        payloads(&store.read(dead, 0..1, EVERYTHING).await?) == [Bytes::from("payload b copy")]
    );
    // Dead letters leave with their subscription.
    store.delete_subscription(sub.id).await?;
    let again = store
        .create_subscription(
            &subscription_name("s")?,
            source,
            settings(Duration::from_secs(10)),
            AckState::default(),
        )
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&again, AckState::default())]);
    store.close().await?;
    Ok(())
}

async fn reads_stop_at_the_end_of_their_range(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    append_sized(&store, topic, 6, 10).await?;
    ensure!(offsets(&store.read(topic, 1..4, EVERYTHING).await?) == vec![1, 2, 3]);
    ensure!(store.read(topic, 3..3, EVERYTHING).await?.is_empty());
    ensure!(offsets(&store.read(topic, 5..100, EVERYTHING).await?) == vec![5]);
    Ok(())
}

async fn the_listener_hears_every_append_in_order(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let a = store
        .create_topic(
            &topic_name("a")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let b = store
        .create_topic(
            &topic_name("b")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    store.append(a, messages(&["1", "2"])).await?;
    store.append(b, messages(&["x"])).await?;
    store.append(a, messages(&["3"])).await?;
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(a, 0, messages(&["1", "2"])),
                Heard::Appended(b, 0, messages(&["x"])),
                Heard::Appended(a, 2, messages(&["3"])),
            ]
    );
    // Heard even when nobody waits for the answer.
    let store_clone = store.clone();
    let dropped = tokio::spawn(async move { store_clone.append(a, messages(&["4"])).await });
    dropped.abort();
    let _ = dropped.await;
    store.append(a, messages(&["5"])).await?;
    let heard = recorder.take();
    let firsts: Vec<Offset> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Appended(_, first, _) => Some(*first),
            Heard::Truncated(..) => None,
        })
        .collect();
    let stored = next_offset(&store, a).await?;
    ensure!(
        firsts.len() as u64 + 3 == stored && firsts.windows(2).all(|w| w[0] < w[1]),
        "every stored batch heard, in order: {heard:?}"
    );
    store.truncate(a, 2).await?;
    ensure!(recorder.take() == vec![Heard::Truncated(a, 2)]);
    Ok(())
}

async fn retained_bytes_follow_appends_and_trims(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let settings = TopicSettings::default();
    let topic = store
        .create_topic(&topic_name("t")?, settings, StorageClass::Disk)
        .await?;
    ensure!(topic.retained_bytes == 0);
    let first = store.append(topic.id, messages(&["a", "b"])).await?;
    let per = first.retained_bytes / 2;
    ensure!(per > 0 && first.retained_bytes == 2 * per, "{first:?}");
    let second = store.append(topic.id, messages(&["c", "d"])).await?;
    ensure!(second.retained_bytes == 4 * per, "{second:?}");
    let retained = |catalog: Catalog| catalog.topics[0].retained_bytes;
    ensure!(retained(store.load().await?) == 4 * per);
    ensure!(
        store.trim(topic.id, 0, 1).await? == 1,
        "a byte to drop takes the whole oldest message"
    );
    ensure!(retained(store.load().await?) == 3 * per);
    ensure!(
        store.trim(topic.id, 2, 2 * per).await? == 3,
        "past `before`, on until enough bytes are gone"
    );
    ensure!(retained(store.load().await?) == per);
    let store = h.reopen(store).await?;
    ensure!(
        retained(store.load().await?) == per,
        "kept across a restart"
    );
    let third = store.append(topic.id, messages(&["e"])).await?;
    ensure!(third.retained_bytes == 2 * per, "{third:?}");
    Ok(())
}

async fn repeated_ids_are_stored_once_across_restarts(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    let settings = TopicSettings::default();
    let topic = store
        .create_topic(&topic_name("t")?, settings, StorageClass::Disk)
        .await?;
    let first = store
        .append(
            topic.id,
            vec![with_id("a", "x"), with_id("b", "y"), with_id("c", "x")],
        )
        .await?;
    ensure!(first.first_offset == 0);
    ensure!(
        duplicates(&first) == vec![(2, 0)],
        "a repeat within one batch: {first:?}"
    );
    ensure!(first.offsets(3) == (vec![0, 1, 0], vec![false, false, true]));
    let second = store
        .append(
            topic.id,
            vec![with_id("d", "y"), message("e"), with_id("f", "z")],
        )
        .await?;
    ensure!(duplicates(&second) == vec![(0, 1)], "{second:?}");
    ensure!(second.offsets(3) == (vec![1, 2, 3], vec![true, false, false]));
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(topic.id, 0, vec![with_id("a", "x"), with_id("b", "y")]),
                Heard::Appended(topic.id, 2, vec![message("e"), with_id("f", "z")]),
            ],
        "the listener hears the stored messages only"
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    let ids: Vec<&str> = read.iter().map(|m| m.id.as_str()).collect();
    ensure!(ids == ["x", "y", "", "z"], "{read:?}");

    let store = h.reopen(store).await?;
    let again = store
        .append(topic.id, vec![with_id("g", "x"), with_id("h", "w")])
        .await?;
    ensure!(duplicates(&again) == vec![(0, 0)], "remembered: {again:?}");
    ensure!(again.first_offset == 4);
    let committed = store
        .commit(Commit {
            appends: vec![(topic.id, vec![with_id("i", "w"), with_id("j", "v")])],
            deliveries: Vec::new(),
        })
        .await?;
    ensure!(
        duplicates(&committed[0]) == vec![(0, 4)] && committed[0].first_offset == 5,
        "a commit deduplicates too: {committed:?}"
    );
    ensure!(next_offset(&store, topic.id).await? == 6);
    Ok(())
}

async fn ids_are_forgotten_after_the_window(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let window = Duration::from_millis(300);
    let short = TopicSettings {
        dedup_window: window,
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("t")?, short, StorageClass::Disk)
        .await?;
    let first = store.append(topic.id, vec![with_id("a", "x")]).await?;
    wait_past(first.publish_time + window).await;
    let later = store.append(topic.id, vec![with_id("b", "x")]).await?;
    ensure!(
        later.duplicates.is_empty() && later.first_offset == 1,
        "an id past the window is new: {later:?}"
    );
    // A longer window applies to the ids stored already.
    let window_of = |dedup_window| TopicRecord {
        settings: TopicSettings {
            dedup_window,
            ..TopicSettings::default()
        },
        ..topic.clone()
    };
    store
        .update_topic(window_of(Duration::from_secs(3600)))
        .await?;
    let again = store.append(topic.id, vec![with_id("c", "x")]).await?;
    ensure!(
        duplicates(&again) == vec![(0, 1)],
        "remembered from the new message on: {again:?}"
    );
    // No window: nothing is remembered, not even within one batch.
    store.update_topic(window_of(Duration::ZERO)).await?;
    let off = store
        .append(topic.id, vec![with_id("d", "x"), with_id("e", "x")])
        .await?;
    ensure!(
        off.duplicates.is_empty() && off.first_offset == 2,
        "{off:?}"
    );
    Ok(())
}

async fn delayed_messages_are_indexed_by_due_time_until_forgotten(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let other = store
        .create_topic(
            &topic_name("u")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let soon = SystemTime::now() + Duration::from_secs(3600);
    let later = soon + Duration::from_secs(60);
    // Due times are kept to the microsecond, rounded up.
    let end = later + Duration::from_secs(1);
    let batch = vec![
        NewMessage {
            deliver_at: Some(later),
            ..message("later")
        },
        message("now"),
        NewMessage {
            deliver_after: Some(Duration::from_secs(3600)),
            ..message("after")
        },
        NewMessage {
            deliver_at: Some(soon),
            ..message("soon")
        },
    ];
    let appended = store.append(topic.id, batch).await?;
    store
        .append(
            other.id,
            vec![NewMessage {
                deliver_at: Some(soon),
                ..message("elsewhere")
            }],
        )
        .await?;
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    let after_due = appended.publish_time + Duration::from_secs(3600);
    ensure!(read[1].deliver_at.is_none(), "{read:?}");
    let due = read[2]
        .deliver_at
        .context("deliver_after is stored as a time")?;
    ensure!(
        due >= after_due && due < after_due + Duration::from_micros(1),
        "after the publish time, to the microsecond: {read:?}"
    );
    let all = store.delayed(topic.id, None, end, usize::MAX).await?;
    let order: Vec<Offset> = all.iter().map(|p| p.offset).collect();
    ensure!(
        order.len() == 3 && order[2] == 0 && all[2].due == read[0].deliver_at.context("at")?,
        "by due time: {all:?}"
    );
    let page = store.delayed(topic.id, Some(all[0]), end, 1).await?;
    ensure!(page == all[1..2], "the page after the first: {page:?}");
    let not_yet = store
        .delayed(topic.id, None, soon - Duration::from_secs(1), 10)
        .await?;
    ensure!(not_yet.is_empty(), "{not_yet:?}");
    ensure!(store.count_delayed(topic.id, SystemTime::now()).await? == 3);
    ensure!(store.count_delayed(topic.id, end).await? == 0);

    let store = h.reopen(store).await?;
    ensure!(
        store.delayed(topic.id, None, end, 10).await? == all,
        "kept across a restart"
    );
    store
        .forget_delayed(topic.id, later - Duration::from_secs(1))
        .await?;
    let left = store.delayed(topic.id, None, end, 10).await?;
    ensure!(left == all[2..], "only the later one is left: {left:?}");
    ensure!(store.count_delayed(other.id, SystemTime::now()).await? == 1);
    store.delete_topic(other.id).await?;
    ensure!(store.count_delayed(other.id, SystemTime::now()).await? == 0);
    Ok(())
}

async fn truncate_deletes_below_and_never_goes_back(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let first_at = |store: SharedStore| async move {
        let catalog = store.load().await?;
        let record = catalog.topics.into_iter().find(|t| t.id == topic);
        anyhow::Ok(record.context("topic is listed")?.first_offset)
    };
    ensure!(first_at(store.clone()).await? == 0);
    append_sized(&store, topic, 6, 10).await?;
    ensure!(store.truncate(topic, 4).await? == 4);
    ensure!(offsets(&store.read(topic, 0..u64::MAX, EVERYTHING).await?) == vec![4, 5]);
    ensure!(offsets(&store.read_offsets(topic, vec![1, 3, 4]).await?) == vec![4]);
    ensure!(first_at(store.clone()).await? == 4);
    ensure!(store.truncate(topic, 2).await? == 4, "never lowered");
    ensure!(store.truncate(topic, 100).await? == 6, "capped at the head");
    ensure!(store.read(topic, 0..u64::MAX, EVERYTHING).await?.is_empty());
    ensure!(next_offset(&store, topic).await? == 6);
    let appended = store.append(topic, messages(&["after"])).await?;
    ensure!(appended.first_offset == 6, "offsets are not reused");
    ensure!(store.offset_at_time(topic, UNIX_EPOCH).await? == 6);
    let store = h.reopen(store).await?;
    ensure!(first_at(store.clone()).await? == 6);
    ensure!(offsets(&store.read(topic, 0..u64::MAX, EVERYTHING).await?) == vec![6]);
    let missing = store.truncate(TopicId(u64::MAX - 1), 1).await;
    ensure!(
        matches!(missing, Err(StoreError::TopicNotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

async fn offset_at_time_skips_offsets_without_messages(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let first = store.append(topic, messages(&["0", "1", "2"])).await?;
    wait_past(first.publish_time).await;
    let second = store.append(topic, messages(&["3", "4"])).await?;
    store.truncate(topic, 2).await?;
    let at = |time| store.offset_at_time(topic, time);
    ensure!(at(UNIX_EPOCH).await? == 2, "clamped to the first offset");
    ensure!(at(first.publish_time).await? == 2);
    ensure!(at(second.publish_time).await? == 3);
    Ok(())
}

async fn delivery_records_are_stored_deleted_and_go_with_their_subscription(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?
        .id;
    let deadline = Duration::from_secs(30);
    let create = |name: &'static str| {
        let store = store.clone();
        async move {
            let name = subscription_name(name)?;
            let created = store
                .create_subscription(&name, topic, settings(deadline), AckState::default())
                .await?;
            anyhow::Ok(created)
        }
    };
    let (one, two) = (create("one").await?, create("two").await?);
    let record = |failures| DeliveryRecord {
        failures,
        redeliver_at: None,
    };
    let later = DeliveryRecord {
        failures: 1,
        redeliver_at: Some(UNIX_EPOCH + Duration::from_micros(1_900_000_000_000_001)),
    };
    store
        .save_deliveries(vec![
            DeliveryUpdate {
                records: vec![(7, Some(record(1))), (3, Some(later)), (9, Some(record(4)))],
                ..acks_update(one.id, AckState::default())
            },
            DeliveryUpdate {
                records: vec![(7, Some(record(2)))],
                ..acks_update(two.id, AckState::default())
            },
        ])
        .await?;
    store
        .save_deliveries(vec![DeliveryUpdate {
            records: vec![(9, None), (7, Some(record(5))), (100, None)],
            ..acks_update(one.id, AckState::starting_at(2))
        }])
        .await?;
    let loaded = store.load().await?.subscriptions;
    let expected = vec![
        StoredSubscription {
            deliveries: vec![(3, later), (7, record(5))],
            ..stored(&one, AckState::starting_at(2))
        },
        StoredSubscription {
            deliveries: vec![(7, record(2))],
            ..stored(&two, AckState::default())
        },
    ];
    ensure!(loaded == expected, "{loaded:?}");
    store.delete_subscription(one.id).await?;
    let again = create("one").await?;
    let loaded = store.load().await?.subscriptions;
    ensure!(
        loaded == vec![expected[1].clone(), stored(&again, AckState::default())],
        "a deleted subscription's records go with it: {loaded:?}"
    );
    Ok(())
}

/// The record of `topic` as `load` reports it.
async fn loaded_topic(store: &SharedStore, topic: TopicId) -> anyhow::Result<TopicRecord> {
    let catalog = store.load().await?;
    let record = catalog.topics.into_iter().find(|t| t.id == topic);
    record.context("topic is listed")
}

async fn memory_topics_are_read_like_disk_topics_and_empty_after_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    let (name, defaults) = (topic_name("m")?, TopicSettings::default());
    let topic = store
        .create_topic(&name, defaults, StorageClass::Memory)
        .await?;
    ensure!(topic.storage == StorageClass::Memory && topic.next_offset == 0);
    let before = SystemTime::now();
    store.append(topic.id, messages(&["a", "b"])).await?;
    let second = store.append(topic.id, messages(&["c"])).await?;
    ensure!(second.first_offset == 2, "{second:?}");
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(topic.id, 0, messages(&["a", "b"])),
                Heard::Appended(topic.id, 2, messages(&["c"])),
            ]
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![0, 1, 2], "{read:?}");
    ensure!(read[1].key == "key b" && read[1].attributes == message("b").attributes);
    let limited = ReadLimit {
        max_messages: 2,
        max_bytes: usize::MAX,
    };
    ensure!(offsets(&store.read(topic.id, 1..3, limited).await?) == vec![1, 2]);
    let some = store.read_offsets(topic.id, vec![0, 2, 7]).await?;
    ensure!(payloads(&some) == vec![Bytes::from("payload a"), Bytes::from("payload c")]);
    ensure!(store.offset_at_time(topic.id, before).await? == 0);
    ensure!(
        store
            .offset_at_time(topic.id, SystemTime::now() + Duration::from_secs(60))
            .await?
            == 3
    );
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(
        loaded.next_offset == 3 && loaded.first_offset == 0,
        "{loaded:?}"
    );
    ensure!(loaded.retained_bytes == second.retained_bytes && loaded.retained_bytes > 0);
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic.id,
            settings(Duration::from_secs(10)),
            AckState::starting_at(0),
        )
        .await?;
    let mut acked = AckState::starting_at(0);
    acked.ack(0);
    acked.ack(2);
    store
        .save_deliveries(vec![acks_update(sub.id, acked.clone())])
        .await?;

    let store = h.reopen(store).await?;
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(loaded.storage == StorageClass::Memory, "{loaded:?}");
    ensure!(
        loaded.first_offset == loaded.next_offset && loaded.next_offset >= 3,
        "empty, and no offset handed out again: {loaded:?}"
    );
    ensure!(loaded.retained_bytes == 0, "{loaded:?}");
    ensure!(
        store
            .read(topic.id, 0..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .read_offsets(topic.id, vec![0, 1, 2])
            .await?
            .is_empty()
    );
    let catalog = store.load().await?;
    ensure!(
        catalog.subscriptions == vec![stored(&sub, acked)],
        "the subscription and its acks stay: {:?}",
        catalog.subscriptions
    );
    let after = store.append(topic.id, messages(&["d"])).await?;
    ensure!(after.first_offset == loaded.next_offset, "{after:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![after.first_offset], "{read:?}");
    Ok(())
}

async fn memory_topics_drop_their_oldest_messages_beyond_their_bound(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    // One message's stored size, measured on a disk topic.
    let disk = store
        .create_topic(
            &topic_name("d")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let per = store
        .append(disk.id, messages(&["x"]))
        .await?
        .retained_bytes;
    let bounded = TopicSettings {
        retention: Retention {
            max_bytes: Some(3 * per),
            ..Retention::default()
        },
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("m")?, bounded, StorageClass::Memory)
        .await?;
    recorder.take();
    for tag in ["a", "b", "c"] {
        store.append(topic.id, messages(&[tag])).await?;
    }
    ensure!(
        loaded_topic(&store, topic.id).await?.first_offset == 0,
        "at the bound"
    );
    ensure!(recorder.take().len() == 3, "three appends, no truncation");
    let fourth = store.append(topic.id, messages(&["d"])).await?;
    ensure!(fourth.retained_bytes == 3 * per, "{fourth:?}");
    let heard = recorder.take();
    ensure!(
        heard
            == vec![
                Heard::Appended(topic.id, 3, messages(&["d"])),
                Heard::Truncated(topic.id, 1),
            ],
        "the oldest goes at the append, after it: {heard:?}"
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![1, 2, 3], "{read:?}");
    // A batch beyond the bound keeps its newest messages.
    store
        .append(topic.id, messages(&["e", "f", "g", "h"]))
        .await?;
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![5, 6, 7], "{read:?}");
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(
        loaded.first_offset == 5 && loaded.retained_bytes == 3 * per,
        "{loaded:?}"
    );
    // Trims work as on disk.
    recorder.take();
    ensure!(store.trim(topic.id, 6, 0).await? == 6);
    ensure!(recorder.take() == vec![Heard::Truncated(topic.id, 6)]);
    ensure!(offsets(&store.read(topic.id, 0..u64::MAX, EVERYTHING).await?) == vec![6, 7]);
    ensure!(loaded_topic(&store, topic.id).await?.retained_bytes == 2 * per);
    Ok(())
}

async fn memory_topics_without_max_bytes_keep_64_mib(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let (name, defaults) = (topic_name("m")?, TopicSettings::default());
    let topic = store
        .create_topic(&name, defaults, StorageClass::Memory)
        .await?;
    let mib = 1 << 20;
    let batch = |n| -> Vec<NewMessage> {
        (0..n)
            .map(|_| NewMessage {
                payload: Bytes::from(vec![b'z'; mib]),
                ..NewMessage::default()
            })
            .collect()
    };
    for _ in 0..11 {
        store.append(topic.id, batch(6)).await?;
    }
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(loaded.next_offset == 66, "{loaded:?}");
    ensure!(
        loaded.retained_bytes <= DEFAULT_MEMORY_BYTES
            && loaded.retained_bytes > DEFAULT_MEMORY_BYTES - 2 * mib as u64,
        "{loaded:?}"
    );
    // 64 MiB hold 63 messages of 1 MiB and their framing.
    ensure!(loaded.first_offset == 3, "{loaded:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.first().map(|m| m.offset) == Some(3) && read.len() == 63);
    Ok(())
}

async fn memory_topics_remember_ids_while_open_and_not_across_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let window = Duration::from_millis(300);
    let short = TopicSettings {
        dedup_window: window,
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("m")?, short, StorageClass::Memory)
        .await?;
    let first = store
        .append(topic.id, vec![with_id("a", "x"), with_id("b", "x")])
        .await?;
    ensure!(duplicates(&first) == vec![(1, 0)], "{first:?}");
    let again = store.append(topic.id, vec![with_id("c", "x")]).await?;
    ensure!(duplicates(&again) == vec![(0, 0)], "{again:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.len() == 1 && read[0].id == "x", "{read:?}");
    wait_past(first.publish_time + window).await;
    let later = store.append(topic.id, vec![with_id("d", "x")]).await?;
    ensure!(
        later.duplicates.is_empty() && later.first_offset == 1,
        "{later:?}"
    );
    let long = TopicRecord {
        settings: TopicSettings::default(),
        ..topic.clone()
    };
    store.update_topic(long).await?;
    ensure!(loaded_topic(&store, topic.id).await?.storage == StorageClass::Memory);
    store.append(topic.id, vec![with_id("e", "y")]).await?;

    let store = h.reopen(store).await?;
    let next = next_offset(&store, topic.id).await?;
    let after = store
        .append(topic.id, vec![with_id("f", "y"), with_id("g", "y")])
        .await?;
    ensure!(
        duplicates(&after) == vec![(1, next)] && after.first_offset == next,
        "no id is remembered across a restart, new ones are: {after:?}"
    );
    Ok(())
}

/// Appends started one after another are stored in that order, on disk
/// and memory topics alike, however their outcomes are awaited: here all
/// together, as a `PublishStream` awaits them.
async fn started_appends_are_stored_in_the_order_started(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    const PER_TOPIC: usize = 1000;
    let store = h.open().await?;
    let mut topics = Vec::new();
    for (name, storage) in [
        ("disk", StorageClass::Disk),
        ("memory", StorageClass::Memory),
    ] {
        let record = store
            .create_topic(&topic_name(name)?, TopicSettings::default(), storage)
            .await?;
        topics.push(record.id);
    }
    let mut pending = Vec::new();
    for i in 0..PER_TOPIC {
        for &topic in &topics {
            let tag = format!("m{i}");
            pending.push(store.start_append(topic, messages(&[tag.as_str()])).await?);
        }
    }
    let appended = futures::future::try_join_all(pending).await?;
    for (t, &topic) in topics.iter().enumerate() {
        let firsts: Vec<u64> = appended
            .iter()
            .skip(t)
            .step_by(topics.len())
            .map(|a| a.first_offset)
            .collect();
        let expected: Vec<u64> = (0..PER_TOPIC as u64).collect();
        ensure!(firsts == expected, "topic {t}: offsets out of start order");
        let read = store.read(topic, 0..u64::MAX, EVERYTHING).await?;
        let sent: Vec<Bytes> = (0..PER_TOPIC)
            .map(|i| message(&format!("m{i}")).payload)
            .collect();
        ensure!(
            payloads(&read) == sent,
            "topic {t}: stored out of start order"
        );
    }
    Ok(())
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
