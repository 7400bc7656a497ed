//! [`RocksStore`]: the [`Store`] contract on an embedded RocksDB database.
//!
//! Layout, in five fixed column families:
//!
//! - `messages`: topic id ‖ offset (big-endian) → a codec-encoded message;
//! - `subscriptions`: subscription id → its ack state, and subscription id
//!   ‖ offset → the delivery record of a message whose delivery failed, so
//!   that deleting a subscription's state is one range;
//! - `meta`: `T`‖id → topic record, `H`‖id → the topic's head (its
//!   `next_offset`; for a memory topic, the offset it starts at after a
//!   restart), `F`‖id → its first offset (absent: 0), `S`‖id →
//!   subscription record, `NT` / `NS` → the last topic / subscription id
//!   handed out;
//! - `dedup`: topic id ‖ message id → the offset stored with it and when
//!   (see `dedup`);
//! - `delays`: topic id ‖ due time ‖ offset → nothing, the index of
//!   delayed messages (see `delays`).
//!
//! All writes go through one writer thread (see `writer`), which batches the
//! requests waiting for it into one `WriteBatch`: group commit. A topic's
//! head is written in the same batch as its messages, so after a crash the
//! head is exactly past the last stored message and no offset is handed out
//! twice. Changes of topics and subscriptions are synced whatever the sync
//! policy: they are rare, and losing one to a power loss would bring a
//! deleted topic back or lose one a caller was told exists. The writer
//! tells the [`StoreListener`] about each append once it is written.
//! Reads (see `read`) run on `spawn_blocking` straight on the
//! database, with short-lived iterators; `open` holds the database options.
//!
//! Memory topics keep their messages (and ids) in a `RamLog` each (see
//! `storage::ram`), never in the database: the writer changes them once
//! the batch they belong to is written (see `writer::ram`), and reads of
//! them take the log's lock instead of a blocking thread.
//! This is the only module that names RocksDB; it knows nothing of leases,
//! streams or gRPC.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rocksdb::{ColumnFamily, DB};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::codec;
use super::ram::{AppendNow, Claim, RamLog, RamLogs};
use super::{
    Appended, Catalog, Commit, DeliveryUpdate, DuePosition, NewMessage, PendingAppend, ReadLimit,
    StorageClass, StorageTimings, Store, StoreError, StoreListener, StoreResult, StoredMessage,
    SubscriptionId, SubscriptionRecord, SubscriptionSettings, TopicId, TopicRecord, TopicSettings,
};
use crate::latency::LatencyHistogram;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};

mod batch;
mod damage;
mod dedup;
mod delays;
mod disk;
mod open;
mod read;
mod syncer;
mod writer;

use open::open_database;
use read::{find_offset_at_time, load_catalog, publish_time_at, read_at_offsets, read_messages};

use writer::{NewSubscription, Op, Request};

/// When appended messages are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write batch holding appends is synced before its callers get
    /// `Ok`: appends survive a power loss.
    Always,
    /// Writes are acknowledged once in the operating system's cache (they
    /// survive a crash of the process) and synced at this interval when
    /// something was written since the last sync; a power loss can lose the
    /// last interval's appends.
    Interval(Duration),
}

const CF_MESSAGES: &str = "messages";
const CF_SUBSCRIPTIONS: &str = "subscriptions";
const CF_META: &str = "meta";
/// Every column family of the layout.
const FAMILIES: [&str; 5] = [
    CF_MESSAGES,
    CF_SUBSCRIPTIONS,
    CF_META,
    delays::CF_DELAYS,
    dedup::CF_DEDUP,
];

const TOPIC_PREFIX: u8 = b'T';
const HEAD_PREFIX: u8 = b'H';
const FIRST_PREFIX: u8 = b'F';
const SUBSCRIPTION_PREFIX: u8 = b'S';
const LAST_TOPIC_ID_KEY: &[u8] = b"NT";
const LAST_SUBSCRIPTION_ID_KEY: &[u8] = b"NS";

/// Requests that may wait for the writer at once; callers beyond this wait
/// for a permit instead of growing the queue.
const MAX_QUEUED_REQUESTS: usize = 4096;

/// The writer's answer to an op `RocksStore::enqueue` queued.
async fn answer<T>(reply_rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
    // The writer drops the reply unanswered only when it is closing.
    reply_rx.await.map_err(|_| StoreError::Closed)?
}

/// The key of a subscription's ack state in the `subscriptions` family.
/// Its delivery records follow it (`record_key`), before the next
/// subscription's state.
fn state_key(subscription: SubscriptionId) -> [u8; 8] {
    subscription.0.to_be_bytes()
}

/// The key of a subscription's dead letters: subscription id ‖ 1. Nine
/// bytes, so it sorts among the subscription's records and lies in the
/// range deleted with it.
fn dead_letters_key(subscription: SubscriptionId) -> [u8; 9] {
    let mut key = [1; 9];
    key[..8].copy_from_slice(&subscription.0.to_be_bytes());
    key
}

/// The key of a delivery record: subscription id ‖ offset.
fn record_key(subscription: SubscriptionId, offset: Offset) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&subscription.0.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The open database, shared by the store's readers, the writer and the
/// syncer, who take a handle for each use; `None` once closed, and while
/// the writer reopens it (see `disk`).
type DbSlot = Arc<Mutex<Option<Arc<DB>>>>;

/// Where the writer finds the listener to tell about appends.
type ListenerSlot = Arc<Mutex<Option<Arc<dyn StoreListener>>>>;

fn meta_key(prefix: u8, id: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn engine(
    context: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Engine {
        context,
        source: source.into(),
    }
}

/// A column family the database was opened with.
fn column<'a>(db: &'a DB, name: &'static str) -> StoreResult<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| {
        engine(
            "finding a column family",
            format!("column family {name:?} is missing"),
        )
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain handles that a panic cannot leave torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`RocksStore::repair`] kept and lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Files moved aside (into `lost/` in the data directory) as unreadable.
    pub lost_files: Vec<std::path::PathBuf>,
    /// Per disk topic: its name, the messages its head says it holds, and
    /// those that can be read.
    pub topics: Vec<(TopicName, u64, u64)>,
}

/// Gives back the space of `topic`'s messages below `end`, which were
/// deleted by range: drops the table files wholly inside the range (that
/// needs no free space), compacts the rest, and flushes every family, so
/// that no write keeps the write-ahead log holding the messages alive.
fn reclaim_range(db: &DB, topic: TopicId, end: Offset) -> StoreResult<()> {
    let messages = column(db, CF_MESSAGES)?;
    let (start, end) = (codec::message_key(topic, 0), codec::message_key(topic, end));
    db.delete_file_in_range_cf(messages, start, end)
        .map_err(|e| engine("dropping deleted tables", e))?;
    db.compact_range_cf(messages, Some(start), Some(end));
    for family in FAMILIES {
        db.flush_cf(column(db, family)?)
            .map_err(|e| engine("flushing after a deletion", e))?;
    }
    Ok(())
}

/// A [`Store`] on RocksDB, with group commit.
///
/// Call [`Store::close`] before dropping it: that syncs the write-ahead log,
/// stops the writer thread and releases the database off the async threads.
/// A store dropped without closing does the same in `drop`, blocking the
/// dropping thread until the writer has stopped, so that the database is
/// never released behind the process's back while it exits.
#[derive(Debug)]
pub struct RocksStore {
    /// `None` once closed.
    db: DbSlot,
    requests_tx: std::sync::mpsc::Sender<Request>,
    /// One permit per request queued for or being handled by the writer.
    permits: Arc<Semaphore>,
    writer: Mutex<Option<JoinHandle<u64>>>,
    /// Syncs the log every interval under [`SyncPolicy::Interval`].
    syncer: Mutex<Option<syncer::Syncer>>,
    /// Shared with the writer, which calls it after each write.
    listener: ListenerSlot,
    /// The logs of memory topics; the writer adds and removes them.
    logs: RamLogs,
    /// How long writes and syncs took; the writer and syncer add to it.
    timings: Arc<Timings>,
    /// The free space of the disk, once watched.
    disk: std::sync::OnceLock<disk::DiskWatch>,
}

/// How long the writer's writes and the syncs took.
#[derive(Debug, Default)]
struct Timings {
    write: LatencyHistogram,
    sync: LatencyHistogram,
}

impl RocksStore {
    /// Opens (or creates) the database in the directory `path` and starts
    /// its writer thread. The blocking work runs on `spawn_blocking`.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when RocksDB cannot open the directory (it is
    /// in use by another process, say); [`StoreError::Corrupt`] when its
    /// metadata cannot be decoded.
    pub async fn open(path: &Path, policy: SyncPolicy) -> StoreResult<RocksStore> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, policy))
            .await
            .map_err(|e| engine("opening the database", e))?
    }

    fn open_blocking(path: &Path, policy: SyncPolicy) -> StoreResult<RocksStore> {
        let windows = dedup::Windows::default();
        let db = open_database(path, &windows)?;
        let db = Arc::new(db);
        let slot: DbSlot = Arc::new(Mutex::new(Some(Arc::clone(&db))));
        let unsynced = syncer::Unsynced::default();
        let listener = ListenerSlot::default();
        let logs = RamLogs::default();
        let timings = Arc::new(Timings::default());
        let shared = writer::Shared {
            unsynced: Arc::clone(&unsynced),
            listener: Arc::clone(&listener),
            windows,
            logs: logs.clone(),
            timings: Arc::clone(&timings),
            slot: Arc::clone(&slot),
            path: path.to_path_buf(),
        };
        let writer = writer::Writer::recover(&db, policy, shared)?;
        drop(db);
        let syncer = match policy {
            SyncPolicy::Always => None,
            SyncPolicy::Interval(interval) => Some(
                syncer::Syncer::start(Arc::clone(&slot), interval, unsynced, Arc::clone(&timings))
                    .map_err(|e| engine("starting the syncer thread", e))?,
            ),
        };
        let (requests_tx, requests_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("tidings-writer".to_owned())
            .spawn(move || writer.run(requests_rx))
            .map_err(|e| engine("starting the writer thread", e))?;
        tracing::info!(path = %path.display(), ?policy, "storage opened");
        Ok(RocksStore {
            db: slot,
            requests_tx,
            permits: Arc::new(Semaphore::new(MAX_QUEUED_REQUESTS)),
            writer: Mutex::new(Some(handle)),
            syncer: Mutex::new(syncer),
            listener,
            logs,
            timings,
            disk: std::sync::OnceLock::new(),
        })
    }

    /// Refuses appends (with [`StoreError::NoSpace`]) while the disk of
    /// `path` has less than `min_free` bytes free, looking once a second;
    /// other writes go on. Call it once.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when the free space cannot be read.
    pub fn watch_free_space(&self, path: &Path, min_free: u64) -> StoreResult<()> {
        let watch = disk::DiskWatch::start(path, min_free)
            .map_err(|e| engine("reading the free disk space", e))?;
        // A second call keeps the first watch.
        let _ = self.disk.set(watch);
        Ok(())
    }

    /// The refusal of an append while the disk is low.
    fn disk_refusal(&self) -> StoreResult<()> {
        match self.disk.get().and_then(disk::DiskWatch::refusal) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// Reads every table of the database in `path`, checking every
    /// block's checksum (data is also checked whenever it is read);
    /// returns how many entries it read. Runs on a blocking thread, and
    /// returns early once `cancel` is cancelled.
    ///
    /// # Errors
    /// [`StoreError::Damaged`] naming the first damaged table.
    pub async fn verify_tables(&self, path: &Path, cancel: CancellationToken) -> StoreResult<u64> {
        let path = path.to_path_buf();
        self.read_with("verifying the tables", move |db| {
            damage::verify_tables(db, &path, &cancel)
        })
        .await
    }

    /// Repairs the database in `path`, which must not be open: keeps every
    /// record and table that is readable (see `damage::repair`) and reports
    /// what was lost. Afterwards [`RocksStore::open`] opens it. Blocks on
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when RocksDB cannot repair it;
    /// [`StoreError::Damaged`] when it is still damaged after.
    pub async fn repair(path: &Path) -> StoreResult<RepairReport> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let windows = dedup::Windows::default();
            let repaired = damage::repair(&path, |mode| {
                open::open_with_recovery(&path, &windows, mode)
            })?;
            let db = open_database(&path, &windows)?;
            damage::verify_tables(&db, &path, &CancellationToken::new())?;
            let topics = damage::count_messages(&db)?;
            Ok(RepairReport {
                lost_files: repaired.lost_files,
                topics,
            })
        })
        .await
        .map_err(|e| engine("repairing the database", e))?
    }

    /// The log of `topic` when it is a memory topic.
    fn ram_log(&self, topic: TopicId) -> Option<Arc<RamLog>> {
        self.logs.get(topic)
    }

    /// Sends `op` to the writer and waits for its answer.
    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op,
    ) -> StoreResult<T> {
        answer(self.enqueue(op).await?).await
    }

    /// Sends `op` to the writer, once a place in its queue is free, and
    /// returns where its answer will come (see [`answer`]). The writer
    /// serves its queue in order, so ops enqueued one after another are
    /// written in that order.
    async fn enqueue<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op,
    ) -> StoreResult<oneshot::Receiver<StoreResult<T>>> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            op: op(reply_tx),
            permit: Some(permit),
        };
        self.requests_tx
            .send(request)
            .map_err(|_| StoreError::Closed)?;
        Ok(reply_rx)
    }

    /// Appends to memory topic `topic` without the writer when its log
    /// can (see [`RamLog::append_now`]); `Err` hands the messages back
    /// with the claim taken for the writer to append them.
    fn append_now(
        &self,
        topic: TopicId,
        log: &Arc<RamLog>,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Result<Appended, (Vec<NewMessage>, Claim)>> {
        if self.permits.is_closed() {
            return Err(StoreError::Closed);
        }
        let listener = lock(&self.listener).clone();
        let ahead = writer::RESERVED_OFFSETS / 2;
        match log.append_now(topic, messages, listener.as_deref(), ahead) {
            AppendNow::Appended { appended, reserve } => {
                if reserve {
                    // Nobody waits for it; a store closing drops it, and
                    // the topic's appends then go through the writer once
                    // they reach the mark.
                    let request = Request {
                        op: Op::Reserve { topic },
                        permit: None,
                    };
                    let _ = self.requests_tx.send(request);
                }
                Ok(Ok(appended))
            }
            AppendNow::ViaWriter(messages, claim) => Ok(Err((messages, claim))),
            AppendNow::Deleted => Err(StoreError::TopicNotFound(topic)),
        }
    }

    /// Asks the writer to write what is queued, sync and stop; `None` when
    /// it has stopped already.
    fn send_close(&self) -> Option<oneshot::Receiver<StoreResult<()>>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            op: Op::Close { reply: reply_tx },
            permit: None,
        };
        self.requests_tx.send(request).ok().map(|()| reply_rx)
    }

    /// Runs `read` on a blocking thread with the database.
    async fn read_with<T: Send + 'static>(
        &self,
        context: &'static str,
        read: impl FnOnce(&DB) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let db = lock(&self.db).clone().ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|e| engine(context, e))?
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        let Some(writer) = lock(&self.writer).take() else {
            return;
        };
        drop(self.send_close());
        if writer.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
        lock(&self.syncer).take();
        lock(&self.db).take();
    }
}

#[async_trait]
impl Store for RocksStore {
    async fn load(&self) -> StoreResult<Catalog> {
        let mut catalog = self.read_with("loading the catalog", load_catalog).await?;
        // The database knows only where memory topics start after a
        // restart; their logs know where they are.
        for topic in &mut catalog.topics {
            if let Some(log) = self.ram_log(topic.id) {
                (topic.first_offset, topic.next_offset, topic.retained_bytes) = log.bounds();
            }
        }
        Ok(catalog)
    }

    fn set_listener(&self, listener: Arc<dyn StoreListener>) {
        *lock(&self.listener) = Some(listener);
    }

    fn timings(&self) -> Option<StorageTimings> {
        Some(StorageTimings {
            write: self.timings.write.snapshot(),
            sync: self.timings.sync.snapshot(),
        })
    }

    async fn create_topic(
        &self,
        name: &TopicName,
        settings: TopicSettings,
        storage: StorageClass,
    ) -> StoreResult<TopicRecord> {
        let name = name.clone();
        self.submit(|reply| Op::CreateTopic {
            name,
            settings,
            storage,
            reply,
        })
        .await
    }

    async fn update_topic(&self, record: TopicRecord) -> StoreResult<()> {
        self.submit(|reply| Op::UpdateTopic { record, reply }).await
    }

    async fn reclaim(&self, topic: TopicId) -> StoreResult<()> {
        if self.ram_log(topic).is_some() {
            // Dropped messages of a memory topic are freed as they go.
            return Ok(());
        }
        self.read_with("compacting deleted messages", move |db| {
            // Everything below the first offset was deleted by range.
            let first = read::first_offset(db, topic)?;
            reclaim_range(db, topic, first)
        })
        .await
    }

    async fn delete_topic(&self, topic: TopicId) -> StoreResult<()> {
        self.submit(|reply| Op::DeleteTopic { topic, reply })
            .await?;
        // Its space comes back now, not at some later compaction: what a
        // full disk needs.
        let reclaimed = self
            .read_with("compacting a deleted topic", move |db| {
                reclaim_range(db, topic, Offset::MAX)
            })
            .await;
        if let Err(err) = reclaimed {
            // The topic is deleted; a later compaction frees its space.
            tracing::warn!(?topic, error = %err, "could not reclaim a deleted topic's space");
        }
        Ok(())
    }

    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended> {
        self.start_append(topic, messages).await?.await
    }

    /// Returns once the append is in the writer's queue, which the writer
    /// serves in order, or made: a memory topic's log makes an append at
    /// once when it can, and hands it to the writer's queue (behind the
    /// writer's changes to the topic) when it cannot.
    async fn start_append(
        &self,
        topic: TopicId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<PendingAppend> {
        self.disk_refusal()?;
        let (messages, claim) = match self.ram_log(topic) {
            Some(log) => match self.append_now(topic, &log, messages)? {
                Ok(appended) => return Ok(Box::pin(std::future::ready(Ok(appended)))),
                Err((messages, claim)) => (messages, Some(claim)),
            },
            None => (messages, None),
        };
        let reply_rx = self
            .enqueue(|reply| Op::Append {
                topic,
                messages,
                claim,
                reply,
            })
            .await?;
        Ok(Box::pin(answer(reply_rx)))
    }

    async fn trim(&self, topic: TopicId, before: Offset, drop_bytes: u64) -> StoreResult<Offset> {
        if self.ram_log(topic).is_some() {
            // The writer measures a memory topic's messages itself: appends
            // move its first offset too often for a measure taken here to
            // hold until the writer sees it.
            return self
                .submit(|reply| Op::TrimMemory {
                    topic,
                    before,
                    drop_bytes,
                    reply,
                })
                .await;
        }
        let (from, before, bytes) = self
            .read_with("measuring messages to delete", move |db| {
                let from = read::first_offset(db, topic)?;
                let (to, bytes) = read::trim_point(db, topic, from, before, drop_bytes)?;
                Ok((from, to, bytes))
            })
            .await?;
        self.submit(|reply| Op::Truncate {
            topic,
            from,
            before,
            bytes,
            reply,
        })
        .await
    }

    async fn read(
        &self,
        topic: TopicId,
        range: std::ops::Range<Offset>,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        if let Some(log) = self.ram_log(topic) {
            return Ok(log.read(range, limit));
        }
        self.read_with("reading messages", move |db| {
            read_messages(db, topic, range, limit)
        })
        .await
    }

    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>> {
        if let Some(log) = self.ram_log(topic) {
            return Ok(log.read_offsets(&offsets));
        }
        self.read_with("reading messages", move |db| {
            read_at_offsets(db, topic, offsets)
        })
        .await
    }

    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset> {
        if let Some(log) = self.ram_log(topic) {
            return Ok(log.offset_at_time(time));
        }
        self.read_with("finding an offset by time", move |db| {
            find_offset_at_time(db, topic, time)
        })
        .await
    }

    async fn delayed(
        &self,
        topic: TopicId,
        after: Option<DuePosition>,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<DuePosition>> {
        self.read_with("reading delayed messages", move |db| {
            delays::delayed(db, topic, after, until, limit)
        })
        .await
    }

    async fn count_delayed(&self, topic: TopicId, time: SystemTime) -> StoreResult<u64> {
        self.read_with("counting delayed messages", move |db| {
            delays::count_delayed(db, topic, time)
        })
        .await
    }

    async fn forget_delayed(&self, topic: TopicId, before: SystemTime) -> StoreResult<()> {
        self.submit(|reply| Op::ForgetDelayed {
            topic,
            before,
            reply,
        })
        .await
    }

    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        settings: SubscriptionSettings,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord> {
        let name = name.clone();
        let new = NewSubscription {
            name,
            topic,
            settings,
            initial,
        };
        self.submit(|reply| Op::CreateSubscription { new, reply })
            .await
    }

    async fn update_subscription(&self, record: SubscriptionRecord) -> StoreResult<()> {
        self.submit(|reply| Op::UpdateSubscription { record, reply })
            .await
    }

    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()> {
        self.submit(|reply| Op::DeleteSubscription {
            subscription,
            reply,
        })
        .await
    }

    async fn save_deliveries(&self, updates: Vec<DeliveryUpdate>) -> StoreResult<()> {
        self.submit(|reply| Op::SaveDeliveries { updates, reply })
            .await
    }

    fn accepts_messages(&self) -> StoreResult<()> {
        self.disk_refusal()
    }

    async fn commit(&self, commit: Commit) -> StoreResult<Vec<Appended>> {
        self.submit(|reply| Op::Commit { commit, reply }).await
    }

    async fn close(&self) -> StoreResult<()> {
        // Refuse new requests; those already queued are written first.
        self.permits.close();
        let synced = match self.send_close() {
            // No answer means another close got there first.
            Some(reply_rx) => reply_rx.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let writer = lock(&self.writer).take();
        let syncer = lock(&self.syncer).take();
        let db = lock(&self.db).take();
        // Joining and releasing the database all block.
        tokio::task::spawn_blocking(move || {
            let joined = writer.map(JoinHandle::join).transpose();
            drop(syncer);
            drop(db);
            joined
                .map(drop)
                .map_err(|_| engine("stopping the writer", "the writer thread panicked"))
        })
        .await
        .map_err(|e| engine("stopping the writer", e))??;
        if synced.is_ok() {
            tracing::info!("storage closed");
        }
        synced
    }
}

#[cfg(test)]
mod tests;
