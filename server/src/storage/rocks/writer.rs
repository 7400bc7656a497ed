//! The writer thread of [`RocksStore`](super::RocksStore): group commit.
//!
//! It owns every write. It blocks for one request, takes every other request
//! already waiting (up to a cap), stages them all into one [`Batch`],
//! writes it once (synced when the policy asks, and always when it changes
//! topics or subscriptions), tells the listener about the appends it
//! holds, and only then answers every caller. Offsets come from its
//! in-memory topic heads, which advance only when the batch was written. It
//! never reads for callers and never runs on an async worker thread.
//!
//! Memory topics (see `ram`) write no message data: most of their appends
//! never come here, and the changes that do wait beside the batch and
//! reach their logs once it is written.
//!
//! Staging lives beside this file: `append.rs` for appends to disk topics,
//! `ram.rs` for memory topics, `stage.rs` for every other change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::batch::{Batch, Columns, Dropped};
use super::dedup::{self, ByIdHash, Remembered, Windows};
use super::syncer::Unsynced;
use super::{
    CF_META, LAST_SUBSCRIPTION_ID_KEY, LAST_TOPIC_ID_KEY, ListenerSlot, SyncPolicy, Timings,
    column, engine, lock,
};
use super::{DbSlot, disk};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};
use crate::storage::codec;
use crate::storage::ram::{Claim, RamLog, RamLogs};
use crate::storage::{
    Appended, Commit, DeliveryUpdate, Duplicate, NewMessage, Retention, StorageClass, StoreError,
    StoreResult, SubscriptionId, SubscriptionRecord, SubscriptionSettings, TopicId, TopicRecord,
    TopicSettings,
};

mod append;
mod ram;
mod stage;

pub(super) use ram::RESERVED_OFFSETS;
use ram::{RamHead, RamPending};

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write that takes this long is logged as a warning.
const SLOW_WRITE: Duration = Duration::from_millis(50);

/// What a caller asks the writer to do.
#[derive(Debug)]
pub(super) enum Op {
    CreateTopic {
        name: TopicName,
        settings: TopicSettings,
        storage: StorageClass,
        reply: Reply<TopicRecord>,
    },
    UpdateTopic {
        record: TopicRecord,
        reply: Reply<()>,
    },
    DeleteTopic {
        topic: TopicId,
        reply: Reply<()>,
    },
    /// Deletes `from..before`, which holds `bytes` of retained messages;
    /// refused when the topic's first offset is no longer `from`.
    Truncate {
        topic: TopicId,
        from: Offset,
        before: Offset,
        bytes: u64,
        reply: Reply<Offset>,
    },
    /// Drops a memory topic's messages below `before`, and on until
    /// `drop_bytes` are gone; the writer measures them itself.
    TrimMemory {
        topic: TopicId,
        before: Offset,
        drop_bytes: u64,
        reply: Reply<Offset>,
    },
    /// `claim`: the claim a memory topic's log took for this append,
    /// which the writer lets go of once it is answered.
    Append {
        topic: TopicId,
        messages: Vec<NewMessage>,
        claim: Option<Claim>,
        reply: Reply<Appended>,
    },
    /// Stores a higher offset mark for a memory topic; nobody waits for
    /// it (see `ram`).
    Reserve {
        topic: TopicId,
    },
    ForgetDelayed {
        topic: TopicId,
        before: SystemTime,
        reply: Reply<()>,
    },
    CreateSubscription {
        new: NewSubscription,
        reply: Reply<SubscriptionRecord>,
    },
    UpdateSubscription {
        record: SubscriptionRecord,
        reply: Reply<()>,
    },
    DeleteSubscription {
        subscription: SubscriptionId,
        reply: Reply<()>,
    },
    SaveDeliveries {
        updates: Vec<DeliveryUpdate>,
        reply: Reply<()>,
    },
    Commit {
        commit: Commit,
        reply: Reply<Vec<Appended>>,
    },
    /// Write what came before, sync, and stop.
    Close {
        reply: Reply<()>,
    },
}

/// What [`Op::CreateSubscription`] creates.
#[derive(Debug)]
pub(super) struct NewSubscription {
    pub(super) name: SubscriptionName,
    pub(super) topic: TopicId,
    pub(super) settings: SubscriptionSettings,
    pub(super) initial: AckState,
}

/// An [`Op`] with the permit that bounds the queue; the permit is released
/// once the caller has its answer.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) op: Op,
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, Clone)]
struct TopicHead {
    first_offset: Offset,
    next_offset: Offset,
    /// Stored bytes of the messages from `first_offset` on.
    retained_bytes: u64,
    /// The publish time of the last message; the next is never earlier.
    last_publish: SystemTime,
    /// How long its message ids are remembered.
    dedup_window: Duration,
    /// What it keeps: a memory topic's bound.
    retention: Retention,
    /// Where a memory topic's messages are; `None` for a disk topic.
    ram: Option<RamHead>,
}

/// What the writer shares with the store's other threads.
pub(super) struct Shared {
    /// Something was written without a sync; shared with the syncer.
    pub(super) unsynced: Unsynced,
    /// Told about appends and truncations once they are written.
    pub(super) listener: ListenerSlot,
    /// Each topic's dedup window, for the compaction filter.
    pub(super) windows: Windows,
    /// The logs of memory topics, for the readers.
    pub(super) logs: RamLogs,
    /// How long writes and syncs took.
    pub(super) timings: Arc<Timings>,
    /// The database, which the writer reopens after the disk was full.
    pub(super) slot: DbSlot,
    /// Where the database is.
    pub(super) path: PathBuf,
}

/// The previous value of a piece of writer state, restored when a batch
/// fails to be written.
enum Undo {
    Topic(TopicId, Option<TopicHead>),
    Subscription(SubscriptionId, Option<TopicId>),
}

/// The writer: the database and the state that writes depend on.
pub(super) struct Writer {
    /// The database; the writer takes a handle for each batch.
    slot: DbSlot,
    path: PathBuf,
    /// A write failed for want of disk space: RocksDB refuses every write
    /// until the database is opened again.
    stopped: bool,
    policy: SyncPolicy,
    topics: HashMap<TopicId, TopicHead>,
    /// Live subscriptions and their topics.
    subscriptions: HashMap<SubscriptionId, TopicId>,
    last_topic_id: u64,
    last_subscription_id: u64,
    /// How to undo the state changes of the batch being built.
    undo: Vec<Undo>,
    /// Something was written without a sync; shared with the syncer.
    unsynced: Unsynced,
    /// Messages staged for appending since the start, for the summary.
    appended: u64,
    /// Reused for encoding each message; `WriteBatch` copies it.
    scratch: Vec<u8>,
    /// Told about appends and truncations once they are written.
    listener: ListenerSlot,
    /// Each topic's dedup window, for the compaction filter.
    windows: Windows,
    /// Ids memory topics stored in the batch being built, which their
    /// logs cannot answer for yet: per topic, id hash → offset. (Disk
    /// topics remember theirs in `remembered` at once.)
    batch_ids: HashMap<TopicId, ByIdHash<Offset>>,
    /// The ids the disk topics remember (see `dedup`).
    remembered: HashMap<TopicId, Remembered>,
    /// Ids of disk topics the batch being built stored, forgotten again
    /// if it is not written: topic, id hash, offset.
    batch_remembered: Vec<(TopicId, u128, Offset)>,
    /// Reused for the id hashes of an append's messages.
    hashes: Vec<Option<u128>>,
    /// The logs of memory topics, shared with the readers.
    logs: RamLogs,
    /// What the batch being built changes in memory topics' logs.
    ram_pending: HashMap<TopicId, RamPending>,
    /// Memory topics whose oldest messages the request being staged
    /// dropped, told to the listener after its appends.
    ram_dropped: Vec<Dropped>,
    /// Claims on memory topics' logs that the batch being built holds,
    /// let go of once its callers are answered.
    claims: Vec<Claim>,
    /// Offset marks of memory topics the batch being built stores, for
    /// their logs once it is written.
    reservations: Vec<(Arc<RamLog>, Offset)>,
    /// How long writes and syncs took.
    timings: Arc<Timings>,
}

impl Writer {
    /// Rebuilds the writer's state from what the database holds.
    pub(super) fn recover(db: &DB, policy: SyncPolicy, shared: Shared) -> StoreResult<Self> {
        let Shared {
            unsynced,
            listener,
            windows,
            logs,
            timings,
            slot,
            path,
        } = shared;
        Columns::of(db)?;
        let catalog = super::load_catalog(db)?;
        let mut topics = HashMap::with_capacity(catalog.topics.len());
        let mut remembered = HashMap::new();
        let now = SystemTime::now();
        for topic in &catalog.topics {
            let last_publish = match topic.next_offset.checked_sub(1) {
                Some(last) => super::publish_time_at(db, topic.id, last)?,
                None => None,
            };
            // A memory topic starts empty at its reserved offset, which
            // its head record holds (see `ram`).
            let (window, retention) = (topic.settings.dedup_window, topic.settings.retention);
            let ram = (topic.storage == StorageClass::Memory)
                .then(|| RamHead::starting_at(topic.next_offset, window, retention));
            let head = TopicHead {
                first_offset: topic.first_offset,
                next_offset: topic.next_offset,
                retained_bytes: topic.retained_bytes,
                last_publish: last_publish.unwrap_or(UNIX_EPOCH),
                dedup_window: topic.settings.dedup_window,
                retention: topic.settings.retention,
                ram,
            };
            windows.set(topic.id, head.dedup_window);
            logs.set(topic.id, head.ram_log());
            if head.ram.is_none() {
                let ids = dedup::load(db, topic.id, head.dedup_window, now)?;
                remembered.insert(topic.id, ids);
            }
            topics.insert(topic.id, head);
        }
        let subscriptions: HashMap<_, _> = catalog
            .subscriptions
            .iter()
            .map(|s| (s.record.id, s.record.topic))
            .collect();
        let max_topic = topics.keys().map(|id| id.0).max().unwrap_or(0);
        let max_subscription = subscriptions.keys().map(|id| id.0).max().unwrap_or(0);
        Ok(Self {
            last_topic_id: read_counter(db, LAST_TOPIC_ID_KEY)?.max(max_topic),
            last_subscription_id: read_counter(db, LAST_SUBSCRIPTION_ID_KEY)?.max(max_subscription),
            slot,
            path,
            stopped: false,
            policy,
            topics,
            subscriptions,
            undo: Vec::new(),
            unsynced,
            appended: 0,
            scratch: Vec::new(),
            listener,
            windows,
            batch_ids: HashMap::new(),
            remembered,
            batch_remembered: Vec::new(),
            hashes: Vec::new(),
            logs,
            ram_pending: HashMap::new(),
            ram_dropped: Vec::new(),
            claims: Vec::new(),
            reservations: Vec::new(),
            timings,
        })
    }

    /// Serves requests until a close request arrives or every sender is
    /// gone, then syncs and refuses whatever is still queued. Returns how
    /// many batches it committed.
    pub(super) fn run(mut self, requests_rx: Receiver<Request>) -> u64 {
        let mut closers = Vec::new();
        let mut batches = 0;
        while closers.is_empty() {
            // `Err` when every sender is gone.
            let Ok(first) = requests_rx.recv() else {
                break;
            };
            if self.stopped {
                self.reopen();
            }
            // `None` once the store closed (or a reopen failed): callers
            // see `Closed`.
            let Some(db) = lock(&self.slot).clone() else {
                if let Op::Close { reply } = first.op {
                    closers.push(reply);
                }
                continue;
            };
            let columns = match Columns::of(&db) {
                Ok(columns) => columns,
                // `recover` checked them; callers see `Closed`.
                Err(e) => {
                    tracing::error!(error = %e, "the writer cannot write");
                    continue;
                }
            };
            let mut batch = Batch::new(columns);
            self.stage(first, &mut batch, &mut closers);
            while closers.is_empty() && !batch.is_full() {
                let Ok(request) = requests_rx.try_recv() else {
                    break;
                };
                self.stage(request, &mut batch, &mut closers);
            }
            self.commit(&db, batch);
            batches += 1;
        }
        // How well group commit worked: messages per write.
        tracing::info!(
            batches,
            messages = self.appended,
            messages_per_batch = self.appended as f64 / batches.max(1) as f64,
            "writer stopping"
        );
        self.stop(requests_rx, closers);
        batches
    }

    /// Syncs, drops what is still queued (its callers see `Closed`) and
    /// answers the closers.
    fn stop(&mut self, requests_rx: Receiver<Request>, mut closers: Vec<Reply<()>>) {
        let started = Instant::now();
        let db = lock(&self.slot).clone();
        let synced = db.map_or(Ok(()), |db| db.flush_wal(true));
        self.timings.sync.observe(started.elapsed());
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the write-ahead log at close failed");
        }
        while let Ok(request) = requests_rx.try_recv() {
            if let Op::Close { reply } = request.op {
                closers.push(reply);
            }
        }
        drop(requests_rx);
        for reply in closers {
            let outcome = synced
                .as_ref()
                .map(|_| ())
                .map_err(|e| engine("syncing the write-ahead log", e.clone()));
            let _ = reply.send(outcome);
        }
    }

    /// Writes the batch, then tells the listener and answers its callers.
    fn commit(&mut self, db: &DB, mut batch: Batch<'_>) {
        let (write, sync) = batch.take_write();
        let result = if write.is_empty() {
            Ok(())
        } else {
            self.write(db, write, sync.applies(self.policy))
        };
        if let Err(e) = &result
            && disk::is_no_space(e)
        {
            // RocksDB now refuses every write until it is opened again.
            self.stopped = true;
        }
        let undo = std::mem::take(&mut self.undo);
        self.batch_ids.clear();
        if result.is_err() {
            for &(topic, id, offset) in &self.batch_remembered {
                if let Some(ids) = self.remembered.get_mut(&topic) {
                    ids.forget(id, offset);
                }
            }
        }
        self.batch_remembered.clear();
        if result.is_err() {
            self.ram_pending.clear();
            self.roll_back(undo);
        } else {
            // Before the listener hears of the appends: readers must find
            // what the broker's heads will say is there.
            self.apply_ram_pending();
        }
        for (log, mark) in self.reservations.drain(..) {
            log.reserved(result.is_ok().then_some(mark));
        }
        let listener = lock(&self.listener).clone();
        batch.finish(result.as_ref().err(), listener.as_deref());
        // Appends to the claimed memory topics may go on without the
        // writer: the listener has heard of everything before them.
        self.claims.clear();
    }

    /// Opens the database again after the disk was full, once there is
    /// room (see `disk::reopen`); the writer's state is what was written,
    /// as failed batches were rolled back.
    fn reopen(&mut self) {
        if !disk::room_to_reopen(&self.path) {
            return;
        }
        match disk::reopen(&self.slot, &self.path, &self.windows) {
            Ok(()) => {
                self.stopped = false;
                tracing::info!("storage reopened: the disk has room again");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reopen storage yet"),
        }
    }

    fn write(&mut self, db: &DB, write: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        let (bytes, started) = (write.size_in_bytes(), Instant::now());
        db.write_opt(write, &options)?;
        let took = started.elapsed();
        self.timings.write.observe(took);
        if sync {
            self.timings.sync.observe(took);
        }
        if took >= SLOW_WRITE {
            // Every caller of the batch waited this long: an operator must
            // be able to tell a slow disk from a slow broker.
            tracing::warn!(?took, bytes, sync, "slow write to the log");
        }
        if !sync {
            // The syncer thread (interval policy) or the next synced write
            // (always) makes it durable.
            self.unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn roll_back(&mut self, undo: Vec<Undo>) {
        for entry in undo.into_iter().rev() {
            match entry {
                Undo::Topic(id, Some(head)) => {
                    self.windows.set(id, head.dedup_window);
                    self.logs.set(id, head.ram_log());
                    self.topics.insert(id, head);
                }
                Undo::Topic(id, None) => {
                    self.windows.remove(id);
                    self.logs.set(id, None);
                    self.topics.remove(&id);
                }
                Undo::Subscription(id, Some(topic)) => {
                    self.subscriptions.insert(id, topic);
                }
                Undo::Subscription(id, None) => {
                    self.subscriptions.remove(&id);
                }
            }
        }
    }

    /// Adds one request to the batch.
    fn stage(&mut self, request: Request, batch: &mut Batch<'_>, closers: &mut Vec<Reply<()>>) {
        let payload_bytes = match &request.op {
            Op::Append { messages, .. } => messages.iter().map(|m| m.payload.len()).sum(),
            Op::Commit { commit, .. } => commit
                .appends
                .iter()
                .flat_map(|(_, messages)| messages)
                .map(|m| m.payload.len())
                .sum(),
            _ => 0,
        };
        batch.admit(request.permit, payload_bytes);
        match request.op {
            Op::Append {
                topic,
                messages,
                claim,
                reply,
            } => {
                self.claims.extend(claim);
                let staged = self.stage_append(topic, &messages, batch);
                let dropped = std::mem::take(&mut self.ram_dropped);
                batch.answer_append(reply, staged, (topic, messages), dropped);
            }
            Op::Truncate {
                topic,
                from,
                before,
                bytes,
                reply,
            } => {
                let staged = self.stage_truncate(topic, from, before, bytes, batch);
                batch.answer_truncate(reply, staged, topic);
            }
            Op::TrimMemory {
                topic,
                before,
                drop_bytes,
                reply,
            } => {
                let staged = self.stage_ram_trim(topic, before, drop_bytes);
                batch.answer_truncate(reply, staged, topic);
            }
            Op::CreateTopic {
                name,
                settings,
                storage,
                reply,
            } => {
                let staged = Ok(self.stage_create_topic(name, settings, storage, batch));
                batch.answer(reply, staged);
            }
            Op::UpdateTopic { record, reply } => {
                let staged = self.stage_update_topic(&record, batch);
                batch.answer(reply, staged);
            }
            Op::DeleteTopic { topic, reply } => {
                let staged = self.stage_delete_topic(topic, batch);
                batch.answer(reply, staged);
            }
            Op::CreateSubscription { new, reply } => {
                let staged = self.stage_create_subscription(new, batch);
                batch.answer(reply, staged);
            }
            Op::UpdateSubscription { record, reply } => {
                let staged = self.stage_update_subscription(&record, batch);
                batch.answer(reply, staged);
            }
            Op::DeleteSubscription {
                subscription,
                reply,
            } => {
                let staged = self.stage_delete_subscription(subscription, batch);
                batch.answer(reply, staged);
            }
            Op::Reserve { topic } => self.stage_reserve(topic, batch),
            Op::ForgetDelayed {
                topic,
                before,
                reply,
            } => {
                if self.topics.contains_key(&topic) {
                    batch.forget_delayed(topic, before);
                }
                batch.answer(reply, Ok(()));
            }
            Op::SaveDeliveries { updates, reply } => {
                self.stage_deliveries(&updates, batch);
                batch.answer(reply, Ok(()));
            }
            Op::Commit { commit, reply } => {
                let staged = self.stage_commit(&commit, batch);
                let dropped = std::mem::take(&mut self.ram_dropped);
                batch.answer_commit(reply, staged, commit.appends, dropped);
            }
            Op::Close { reply } => closers.push(reply),
        }
    }
}

fn read_counter(db: &DB, key: &[u8]) -> StoreResult<u64> {
    let value = db
        .get_pinned_cf(column(db, CF_META)?, key)
        .map_err(|e| engine("reading an id counter", e))?;
    value.map_or(Ok(0), |v| codec::decode_u64("id counter", &v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(op: Op) -> Request {
        Request { op, permit: None }
    }

    #[test]
    fn waiting_requests_share_one_batch() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let windows = Windows::default();
        let db = Arc::new(super::super::open_database(dir.path(), &windows)?);
        let shared = Shared {
            unsynced: Unsynced::default(),
            listener: ListenerSlot::default(),
            windows,
            logs: RamLogs::default(),
            timings: Arc::new(Timings::default()),
            slot: Arc::new(std::sync::Mutex::new(Some(Arc::clone(&db)))),
            path: dir.path().to_path_buf(),
        };
        let timings = Arc::clone(&shared.timings);
        let writer = Writer::recover(&db, SyncPolicy::Always, shared)?;
        let (requests_tx, requests_rx) = std::sync::mpsc::channel();
        let (created_tx, mut created_rx) = oneshot::channel();
        let name = TopicName::new("t")?;
        requests_tx.send(request(Op::CreateTopic {
            name,
            settings: TopicSettings::default(),
            storage: StorageClass::Disk,
            reply: created_tx,
        }))?;
        let mut replies = Vec::new();
        for i in 0..100u8 {
            let (reply, reply_rx) = oneshot::channel();
            let message = NewMessage {
                payload: Bytes::from(vec![i]),
                ..NewMessage::default()
            };
            // Topic ids start at 1 in a fresh database.
            let op = Op::Append {
                topic: TopicId(1),
                messages: vec![message; 2],
                claim: None,
                reply,
            };
            requests_tx.send(request(op))?;
            replies.push(reply_rx);
        }
        let (close_tx, mut close_rx) = oneshot::channel();
        requests_tx.send(request(Op::Close { reply: close_tx }))?;

        let batches = writer.run(requests_rx);
        assert_eq!(batches, 1, "every waiting request went into one batch");
        assert_eq!(created_rx.try_recv()?.map(|t| t.id)?, TopicId(1));
        for (i, mut reply_rx) in replies.into_iter().enumerate() {
            assert_eq!(reply_rx.try_recv()??.first_offset, 2 * i as u64);
        }
        close_rx.try_recv()??;
        // The one write synced (policy `Always`), and so did closing.
        let (write, sync) = (timings.write.snapshot(), timings.sync.snapshot());
        assert_eq!((write.count, sync.count), (1, 2));
        Ok(())
    }
}
