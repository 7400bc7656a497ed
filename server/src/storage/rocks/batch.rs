//! One group-commit batch of the writer: the `WriteBatch` being built, in
//! the key layout of [`rocks`](super), and the callers waiting on it.
//!
//! It only records writes and answers; deciding offsets and ids, writing
//! and syncing are the writer's.

use std::collections::HashMap;

use rocksdb::{ColumnFamily, DB, WriteBatch};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{
    CF_MESSAGES, CF_META, CF_SUBSCRIPTIONS, HEAD_PREFIX, LAST_SUBSCRIPTION_ID_KEY,
    LAST_TOPIC_ID_KEY, SUBSCRIPTION_PREFIX, TOPIC_PREFIX, column, engine, meta_key, state_key,
};
use crate::offsets::{AckState, Offset};
use crate::storage::codec;
use crate::storage::{StoreResult, SubscriptionId, SubscriptionRecord, TopicId, TopicRecord};

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
}

impl<'db> Columns<'db> {
    /// Looks up every column family of the layout.
    pub(super) fn of(db: &'db DB) -> StoreResult<Self> {
        Ok(Self {
            messages: column(db, CF_MESSAGES)?,
            states: column(db, CF_SUBSCRIPTIONS)?,
            meta: column(db, CF_META)?,
        })
    }
}

/// Answers one caller once the batch's fate is known (`Some` = the write
/// failed).
type Completion = Box<dyn FnOnce(Option<&rocksdb::Error>) + Send>;

/// One batch under construction.
pub(super) struct Batch<'db> {
    columns: Columns<'db>,
    write: WriteBatch,
    completions: Vec<Completion>,
    permits: Vec<OwnedSemaphorePermit>,
    /// Each topic's head as of the end of the batch: written once, however
    /// many appends to the topic the batch holds.
    heads: HashMap<TopicId, Offset>,
    requests: usize,
    bytes: usize,
    /// Anything but ack states was written, so the sync policy applies.
    durable: bool,
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
            durable: false,
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
        self.completions.push(Box::new(move |failure| {
            let outcome = match failure {
                Some(e) if staged.is_ok() => Err(engine("writing a batch", e.clone())),
                _ => staged,
            };
            // The caller may have stopped waiting; the write stands anyway.
            let _ = reply.send(outcome);
        }));
    }

    /// The writes, and whether the sync policy applies to them.
    pub(super) fn take_write(&mut self) -> (WriteBatch, bool) {
        for (topic, next_offset) in self.heads.drain() {
            let key = meta_key(HEAD_PREFIX, topic.0);
            self.write
                .put_cf(self.columns.meta, key, codec::encode_u64(next_offset));
        }
        (std::mem::take(&mut self.write), self.durable)
    }

    /// Answers every caller and releases their permits.
    pub(super) fn finish(self, failure: Option<&rocksdb::Error>) {
        for complete in self.completions {
            complete(failure);
        }
        drop(self.permits);
    }

    pub(super) fn put_message(&mut self, topic: TopicId, offset: Offset, value: &[u8]) {
        let key = codec::message_key(topic, offset);
        self.write.put_cf(self.columns.messages, key, value);
        self.durable = true;
    }

    /// Sets a topic's head; it is written with the rest of the batch.
    pub(super) fn put_head(&mut self, topic: TopicId, next_offset: Offset) {
        self.heads.insert(topic, next_offset);
        self.durable = true;
    }

    /// A new topic: its record, its head and the id counter.
    pub(super) fn put_topic(&mut self, record: &TopicRecord) {
        let (meta, id) = (self.columns.meta, record.id.0);
        let value = codec::encode_topic(record);
        self.write.put_cf(meta, meta_key(TOPIC_PREFIX, id), value);
        self.write
            .put_cf(meta, LAST_TOPIC_ID_KEY, codec::encode_u64(id));
        self.put_head(record.id, record.next_offset);
    }

    /// A topic's messages, record and head; not its subscriptions.
    pub(super) fn delete_topic(&mut self, topic: TopicId) {
        // Offsets never reach u64::MAX, so this range holds them all.
        let start = codec::message_key(topic, 0);
        let end = codec::message_key(topic, u64::MAX);
        self.write
            .delete_range_cf(self.columns.messages, start, end);
        let meta = self.columns.meta;
        self.write.delete_cf(meta, meta_key(TOPIC_PREFIX, topic.0));
        self.write.delete_cf(meta, meta_key(HEAD_PREFIX, topic.0));
        self.heads.remove(&topic);
        self.durable = true;
    }

    /// A new subscription: its record, the id counter and its ack state.
    pub(super) fn put_subscription(&mut self, record: &SubscriptionRecord, initial: &AckState) {
        let (meta, id) = (self.columns.meta, record.id.0);
        let value = codec::encode_subscription(record);
        self.write
            .put_cf(meta, meta_key(SUBSCRIPTION_PREFIX, id), value);
        self.write
            .put_cf(meta, LAST_SUBSCRIPTION_ID_KEY, codec::encode_u64(id));
        self.put_ack_state(record.id, initial);
        self.durable = true;
    }

    pub(super) fn delete_subscription(&mut self, subscription: SubscriptionId) {
        let key = meta_key(SUBSCRIPTION_PREFIX, subscription.0);
        self.write.delete_cf(self.columns.meta, key);
        self.write
            .delete_cf(self.columns.states, state_key(subscription));
        self.durable = true;
    }

    /// Ack states alone do not make a batch durable: the contract asks
    /// only that they survive a crash of the process.
    pub(super) fn put_ack_state(&mut self, subscription: SubscriptionId, state: &AckState) {
        let value = codec::encode_ack_state(state);
        self.write
            .put_cf(self.columns.states, state_key(subscription), value);
    }
}
