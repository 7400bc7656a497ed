//! One group-commit batch of the writer: the `WriteBatch` being built, in
//! the key layout of [`rocks`](super), and the callers waiting on it.
//!
//! It only records writes and answers; deciding offsets and ids, writing
//! and syncing are the writer's.

use std::collections::HashMap;
use std::time::SystemTime;

use rocksdb::{ColumnFamily, DB, WriteBatch};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::dedup::CF_DEDUP;
use super::delays::{self, CF_DELAYS};
use super::{
    CF_MESSAGES, CF_META, CF_SUBSCRIPTIONS, FIRST_PREFIX, HEAD_PREFIX, LAST_SUBSCRIPTION_ID_KEY,
    LAST_TOPIC_ID_KEY, SUBSCRIPTION_PREFIX, SyncPolicy, TOPIC_PREFIX, column, dead_letters_key,
    meta_key, record_key, state_key,
};
use crate::offsets::{AckState, Offset};
use crate::storage::codec;
use crate::storage::{
    Appended, DeadLetters, DeliveryRecord, NewMessage, StoreListener, StoreResult, SubscriptionId,
    SubscriptionRecord, TopicId, TopicRecord,
};

/// A memory topic whose oldest messages an append dropped: the topic, its
/// new first offset and the bytes it retains.
pub(super) type Dropped = (TopicId, Offset, u64);

/// Tells the listener about memory topics' messages dropped by appends it
/// was just told about.
fn tell_dropped(listener: &dyn StoreListener, dropped: Vec<Dropped>) {
    for (topic, first_offset, retained_bytes) in dropped {
        listener.truncated(topic, first_offset, retained_bytes);
    }
}

/// Requests taken into one batch at most.
const MAX_BATCH_REQUESTS: usize = 4096;
/// Payload bytes taken into one batch at most (one request may exceed it).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The column families, looked up once.
#[derive(Clone, Copy)]
pub(super) struct Columns<'db> {
    messages: &'db ColumnFamily,
    states: &'db ColumnFamily,
    meta: &'db ColumnFamily,
    dedup: &'db ColumnFamily,
    delays: &'db ColumnFamily,
}

impl<'db> Columns<'db> {
    /// Looks up every column family of the layout.
    pub(super) fn of(db: &'db DB) -> StoreResult<Self> {
        Ok(Self {
            messages: column(db, CF_MESSAGES)?,
            states: column(db, CF_SUBSCRIPTIONS)?,
            meta: column(db, CF_META)?,
            dedup: column(db, CF_DEDUP)?,
            delays: column(db, CF_DELAYS)?,
        })
    }
}

/// Answers one caller once the batch's fate is known (`Some` = the write
/// failed), after telling the listener about a change that was written.
type Completion = Box<dyn FnOnce(Option<&rocksdb::Error>, Option<&dyn StoreListener>) + Send>;

/// How much syncing a batch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SyncNeed {
    /// Ack states and delivery records only: the contract asks that they
    /// survive a crash of the process, not a power loss.
    None,
    /// Appended messages: synced under [`SyncPolicy::Always`].
    Data,
    /// Topics or subscriptions created, deleted or changed, or a memory
    /// topic's reserved offsets: always synced. They are rare, and a power loss must not bring back a
    /// deleted topic or lose one a caller was told exists.
    Metadata,
}

impl SyncNeed {
    /// Whether a batch needing this is synced under `policy`.
    pub(super) fn applies(self, policy: SyncPolicy) -> bool {
        match self {
            SyncNeed::None => false,
            SyncNeed::Data => policy == SyncPolicy::Always,
            SyncNeed::Metadata => true,
        }
    }
}

/// One batch under construction.
pub(super) struct Batch<'db> {
    columns: Columns<'db>,
    write: WriteBatch,
    completions: Vec<Completion>,
    permits: Vec<OwnedSemaphorePermit>,
    /// Each topic's head as of the end of the batch: written once, however
    /// many appends to the topic the batch holds.
    heads: HashMap<TopicId, (Offset, u64)>,
    requests: usize,
    bytes: usize,
    sync: SyncNeed,
}

impl<'db> Batch<'db> {
    pub(super) fn new(columns: Columns<'db>) -> Self {
        Self {
            columns,
            write: WriteBatch::default(),
            completions: Vec::new(),
            permits: Vec::new(),
            heads: HashMap::new(),
            requests: 0,
            bytes: 0,
            sync: SyncNeed::None,
        }
    }

    /// Counts a request of `payload_bytes` in; its permit is released once
    /// the batch is answered.
    pub(super) fn admit(&mut self, permit: Option<OwnedSemaphorePermit>, payload_bytes: usize) {
        self.permits.extend(permit);
        self.requests += 1;
        self.bytes += payload_bytes;
    }

    /// Whether the batch should take no more requests.
    pub(super) fn is_full(&self) -> bool {
        self.requests >= MAX_BATCH_REQUESTS || self.bytes >= MAX_BATCH_BYTES
    }

    /// Sends `staged` to the caller once the batch is written, or the write
    /// error if it fails and `staged` was a success.
    pub(super) fn answer<T: Send + 'static>(
        &mut self,
        reply: oneshot::Sender<StoreResult<T>>,
        staged: StoreResult<T>,
    ) {
        self.answer_then(reply, staged, |_, _| {});
    }

    /// As [`Batch::answer`], telling the listener about the appended
    /// `messages` first when they were written, and then about the memory
    /// topics' messages the append `dropped`.
    pub(super) fn answer_append(
        &mut self,
        reply: oneshot::Sender<StoreResult<Appended>>,
        staged: StoreResult<Appended>,
        (topic, messages): (TopicId, Vec<NewMessage>),
        dropped: Vec<Dropped>,
    ) {
        self.answer_then(reply, staged, move |appended, listener| {
            listener.appended(topic, appended, appended.stored(messages));
            tell_dropped(listener, dropped);
        });
    }

    /// As [`Batch::answer`], telling the listener about each append of a
    /// commit once it was written.
    pub(super) fn answer_commit(
        &mut self,
        reply: oneshot::Sender<StoreResult<Vec<Appended>>>,
        staged: StoreResult<Vec<Appended>>,
        appends: Vec<(TopicId, Vec<NewMessage>)>,
        dropped: Vec<Dropped>,
    ) {
        self.answer_then(reply, staged, move |appended, listener| {
            for ((topic, messages), appended) in appends.into_iter().zip(appended) {
                listener.appended(topic, appended, appended.stored(messages));
            }
            tell_dropped(listener, dropped);
        });
    }

    /// As [`Batch::answer`], telling the listener about the truncation
    /// first when it was written.
    pub(super) fn answer_truncate(
        &mut self,
        reply: oneshot::Sender<StoreResult<Offset>>,
        staged: StoreResult<(Offset, u64)>,
        topic: TopicId,
    ) {
        let (staged, retained_bytes) = match staged {
            Ok((first, bytes)) => (Ok(first), bytes),
            Err(err) => (Err(err), 0),
        };
        self.answer_then(reply, staged, move |first_offset, listener| {
            listener.truncated(topic, *first_offset, retained_bytes);
        });
    }

    /// Sends `staged` to the caller once the batch is written, or the write
    /// error if it fails and `staged` was a success; runs `written` with
    /// the listener first when the change was written.
    fn answer_then<T: Send + 'static>(
        &mut self,
        reply: oneshot::Sender<StoreResult<T>>,
        staged: StoreResult<T>,
        written: impl FnOnce(&T, &dyn StoreListener) + Send + 'static,
    ) {
        self.completions.push(Box::new(move |failure, listener| {
            let outcome = match failure {
                Some(e) if staged.is_ok() => Err(super::disk::write_failed(e)),
                _ => staged,
            };
            if let (Ok(value), Some(listener)) = (&outcome, listener) {
                written(value, listener);
            }
            // The caller may have stopped waiting; the write stands anyway.
            let _ = reply.send(outcome);
        }));
    }

    /// The writes, and how much syncing they need.
    pub(super) fn take_write(&mut self) -> (WriteBatch, SyncNeed) {
        for (topic, (next_offset, retained_bytes)) in self.heads.drain() {
            let key = meta_key(HEAD_PREFIX, topic.0);
            let value = codec::encode_head(next_offset, retained_bytes);
            self.write.put_cf(self.columns.meta, key, value);
        }
        (std::mem::take(&mut self.write), self.sync)
    }

    /// Tells the listener about what was written, answers every caller, in
    /// the order they were staged, and releases their permits.
    pub(super) fn finish(
        self,
        failure: Option<&rocksdb::Error>,
        listener: Option<&dyn StoreListener>,
    ) {
        for complete in self.completions {
            complete(failure, listener);
        }
        drop(self.permits);
    }

    fn needs(&mut self, sync: SyncNeed) {
        self.sync = self.sync.max(sync);
    }

    pub(super) fn put_message(&mut self, topic: TopicId, offset: Offset, value: &[u8]) {
        let key = codec::message_key(topic, offset);
        self.write.put_cf(self.columns.messages, key, value);
        self.needs(SyncNeed::Data);
    }

    /// Remembers the ids (their hashes) one append stored at `stored`,
    /// each with its message's offset; `first` is the first of those
    /// offsets.
    pub(super) fn put_ids(
        &mut self,
        topic: TopicId,
        stored: SystemTime,
        first: Offset,
        ids: impl ExactSizeIterator<Item = (u128, Offset)>,
    ) {
        let key = codec::timed_key(topic, stored, first);
        self.write
            .put_cf(self.columns.dedup, key, codec::encode_ids(first, ids));
    }

    /// Indexes the delayed message at `offset` by when it is due.
    pub(super) fn put_delayed(&mut self, topic: TopicId, due: SystemTime, offset: Offset) {
        let key = codec::delayed_key(topic, due, offset);
        self.write.put_cf(self.columns.delays, key, []);
    }

    /// Drops the index entries of `topic` due before `before`. Losing this
    /// to a crash only makes the broker read them again.
    pub(super) fn forget_delayed(&mut self, topic: TopicId, before: SystemTime) {
        let start = codec::delayed_key(topic, SystemTime::UNIX_EPOCH, 0);
        let before = before
            .checked_sub(std::time::Duration::from_micros(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let end = delays::end_of(topic, before);
        self.write
            .delete_range_cf(self.columns.delays, &start[..], &end[..]);
    }

    /// Sets a topic's head and retained bytes; they are written with the
    /// rest of the batch.
    pub(super) fn put_head(&mut self, topic: TopicId, next_offset: Offset, retained_bytes: u64) {
        self.heads.insert(topic, (next_offset, retained_bytes));
        self.needs(SyncNeed::Data);
    }

    /// Stores a memory topic's reserved offset mark where a disk topic's
    /// head is, synced before any offset below it is handed out.
    pub(super) fn put_reserved_offsets(&mut self, topic: TopicId, reserved: Offset) {
        self.heads.insert(topic, (reserved, 0));
        self.needs(SyncNeed::Metadata);
    }

    /// A new topic: its record, its head and the id counter.
    pub(super) fn put_topic(&mut self, record: &TopicRecord) {
        self.put_topic_record(record);
        let (meta, id) = (self.columns.meta, record.id.0);
        self.write
            .put_cf(meta, LAST_TOPIC_ID_KEY, codec::encode_u64(id));
        self.put_head(record.id, record.next_offset, record.retained_bytes);
    }

    /// A topic's record alone (its settings changed).
    pub(super) fn put_topic_record(&mut self, record: &TopicRecord) {
        let (meta, id) = (self.columns.meta, record.id.0);
        let value = codec::encode_topic(record);
        self.write.put_cf(meta, meta_key(TOPIC_PREFIX, id), value);
        self.needs(SyncNeed::Metadata);
    }

    /// Deletes a topic's messages in `from..before` and records `before` as
    /// its first offset.
    pub(super) fn truncate(&mut self, topic: TopicId, from: Offset, before: Offset) {
        let (start, end) = (
            codec::message_key(topic, from),
            codec::message_key(topic, before),
        );
        self.write
            .delete_range_cf(self.columns.messages, start, end);
        let key = meta_key(FIRST_PREFIX, topic.0);
        self.write
            .put_cf(self.columns.meta, key, codec::encode_u64(before));
        // As durable as an append: a truncation lost to a power loss is
        // made again by retention, while forcing a sync of everything
        // written before it, every second, cost relaxed publishing about a
        // quarter of its rate.
        self.needs(SyncNeed::Data);
    }

    /// A topic's messages, record and head; not its subscriptions.
    pub(super) fn delete_topic(&mut self, topic: TopicId) {
        // Offsets never reach u64::MAX, so this range holds them all.
        let start = codec::message_key(topic, 0);
        let end = codec::message_key(topic, u64::MAX);
        self.write
            .delete_range_cf(self.columns.messages, start, end);
        // Every id key of the topic starts with its id; the next topic's
        // ids start with the next.
        let (first, next) = (topic.0.to_be_bytes(), (topic.0 + 1).to_be_bytes());
        self.write.delete_range_cf(self.columns.dedup, first, next);
        self.write.delete_range_cf(self.columns.delays, first, next);
        let meta = self.columns.meta;
        self.write.delete_cf(meta, meta_key(TOPIC_PREFIX, topic.0));
        self.write.delete_cf(meta, meta_key(HEAD_PREFIX, topic.0));
        self.write.delete_cf(meta, meta_key(FIRST_PREFIX, topic.0));
        self.heads.remove(&topic);
        self.needs(SyncNeed::Metadata);
    }

    /// A new subscription: its record, the id counter and its ack state.
    pub(super) fn put_subscription(&mut self, record: &SubscriptionRecord, initial: &AckState) {
        let (meta, id) = (self.columns.meta, record.id.0);
        self.put_subscription_record(record);
        self.write
            .put_cf(meta, LAST_SUBSCRIPTION_ID_KEY, codec::encode_u64(id));
        self.put_ack_state(record.id, initial);
    }

    /// A subscription's record, new or changed.
    pub(super) fn put_subscription_record(&mut self, record: &SubscriptionRecord) {
        let value = codec::encode_subscription(record);
        self.write.put_cf(
            self.columns.meta,
            meta_key(SUBSCRIPTION_PREFIX, record.id.0),
            value,
        );
        self.needs(SyncNeed::Metadata);
    }

    /// A subscription's record, ack state and delivery records.
    pub(super) fn delete_subscription(&mut self, subscription: SubscriptionId) {
        let key = meta_key(SUBSCRIPTION_PREFIX, subscription.0);
        self.write.delete_cf(self.columns.meta, key);
        // The ack state's key starts the range; no record sits at the
        // last offset, where the range ends.
        let start = state_key(subscription);
        let end = record_key(subscription, u64::MAX);
        self.write
            .delete_range_cf(self.columns.states, &start[..], &end[..]);
        self.needs(SyncNeed::Metadata);
    }

    /// Ack states alone do not make a batch durable (see [`SyncNeed::None`]).
    pub(super) fn put_ack_state(&mut self, subscription: SubscriptionId, state: &AckState) {
        let value = codec::encode_ack_state(state);
        self.write
            .put_cf(self.columns.states, state_key(subscription), value);
    }

    /// A subscription's dead letters, whole.
    pub(super) fn put_dead_letters(&mut self, subscription: SubscriptionId, dead: &DeadLetters) {
        let value = codec::encode_dead_letters(dead);
        self.write
            .put_cf(self.columns.states, dead_letters_key(subscription), value);
    }

    /// Stores (`Some`) or deletes (`None`) a message's delivery record.
    pub(super) fn put_delivery(
        &mut self,
        subscription: SubscriptionId,
        offset: Offset,
        record: Option<&DeliveryRecord>,
    ) {
        let key = record_key(subscription, offset);
        match record {
            Some(record) => {
                let value = codec::encode_delivery(record);
                self.write.put_cf(self.columns.states, key, value);
            }
            None => self.write.delete_cf(self.columns.states, key),
        }
    }
}
