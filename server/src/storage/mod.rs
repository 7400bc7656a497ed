//! The storage seam of the local engine: everything the
//! [`Broker`](crate::broker::Broker) keeps on disk goes through [`Store`].
//!
//! The broker core names only this trait and its types; RocksDB is named in
//! [`rocks`] alone, and [`memory`] is an in-memory implementation for fast
//! tests. Every implementation passes the conformance suite in
//! `conformance.rs`.
//!
//! The store owns offsets and heads: [`Store::append`] hands offsets out,
//! contiguously per batch and never twice, across crashes too, and tells
//! the [`StoreListener`] about every batch once it is written, before any
//! caller hears of it. That listener is how the broker's topic heads and
//! tail caches follow storage: the bookkeeping after a write happens on the
//! store's side, so a caller that stops waiting (a cancelled request) cannot
//! leave it undone, and a store whose messages arrive from elsewhere wakes
//! the broker's streams the same way.
//!
//! What is stored of a subscription: its [`AckState`] and, for messages
//! whose delivery failed, a [`DeliveryRecord`] (failure count and when to
//! deliver again). First deliveries write nothing; only redeliveries pay.
//! Leases, deadlines and streams are not stored: they live in memory.
//!
//! This seam sits below the broker's lease book. A scale-out engine that
//! keeps leases and acknowledgements itself (NATS JetStream consumers) does
//! not implement `Store`: it sits beside the broker behind
//! [`Engine`](crate::broker::Engine), one level up.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::latency::LatencySnapshot;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset, OffsetRanges};

mod codec;
#[cfg(test)]
mod conformance;
pub mod memory;
mod ram;
pub mod rocks;

pub use memory::MemoryStore;
pub use rocks::{RepairReport, RocksStore, SyncPolicy};

/// The identity of a topic in storage. Ids are never reused, so data of a
/// deleted topic can never be mistaken for a new topic's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub u64);

/// The identity of a subscription in storage; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// A stored topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Its id.
    pub id: TopicId,
    /// Its name.
    pub name: TopicName,
    /// The earliest offset that may still hold a message: every offset below
    /// it was deleted ([`Store::truncate`]). Never above `next_offset`.
    pub first_offset: Offset,
    /// The offset the next appended message gets.
    pub next_offset: Offset,
    /// When it was created.
    pub created: SystemTime,
    /// What can change.
    pub settings: TopicSettings,
    /// The size of its retained messages as stored (each message's key and
    /// encoded value, before compression).
    pub retained_bytes: u64,
    /// Where its messages are kept. Fixed when it is created.
    pub storage: StorageClass,
}

/// Where a topic keeps its messages. Fixed when the topic is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StorageClass {
    /// With the rest of the store: messages survive restarts, as durable as
    /// the store's sync policy makes them.
    #[default]
    Disk,
    /// In the broker's memory only: publishing writes no message data to
    /// disk, and a restart (or crash) empties the topic. The topic, its
    /// subscriptions and its offsets survive: offsets are never reused.
    /// Its messages are bounded by [`Retention::memory_bound`], applied at
    /// each append; message ids are remembered in memory only.
    Memory,
}

/// The most bytes of messages a memory topic keeps when its retention sets
/// no `max_bytes`: 64 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;

/// A topic's settings: what can change after it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// What the topic keeps.
    pub retention: Retention,
    /// How long a stored message id is remembered: a message whose id was
    /// stored less than this long ago is a duplicate and is not stored
    /// again. Zero turns deduplication off.
    pub dedup_window: Duration,
}

/// How long message ids are remembered unless a topic says otherwise.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);

impl Default for TopicSettings {
    /// Keeps everything, and remembers ids for [`DEFAULT_DEDUP_WINDOW`].
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

/// How long a topic keeps its messages. The default keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Messages published longer ago are deleted.
    pub max_age: Option<Duration>,
    /// At most this many messages are kept.
    pub max_messages: Option<u64>,
    /// At most this many bytes of messages (as stored) are kept.
    pub max_bytes: Option<u64>,
    /// A message is deleted once every subscription acknowledged it.
    pub discard_acked: bool,
}

impl Retention {
    /// The most bytes of messages (as stored) a memory topic keeps:
    /// `max_bytes`, or [`DEFAULT_MEMORY_BYTES`] when unset.
    pub fn memory_bound(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_MEMORY_BYTES)
    }

    /// Whether a memory topic holding `messages` messages of `bytes` bytes
    /// holds more than it may: its oldest go at once.
    pub(crate) fn memory_exceeded(&self, messages: u64, bytes: u64) -> bool {
        bytes > self.memory_bound() || self.max_messages.is_some_and(|max| messages > max)
    }
}

/// A stored subscription's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Its id.
    pub id: SubscriptionId,
    /// Its name.
    pub name: SubscriptionName,
    /// The topic it reads.
    pub topic: TopicId,
    /// What may change after it is created.
    pub settings: SubscriptionSettings,
    /// When it was created.
    pub created: SystemTime,
}

/// The settings of a subscription that
/// [`Store::update_subscription`] can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// How long a delivery is leased.
    pub ack_deadline: Duration,
    /// The text of its filter; empty for none. Stored as given, parsed by
    /// the broker.
    pub filter: String,
    /// How long redeliveries wait after a failed delivery; `None` for not
    /// at all.
    pub retry: Option<RetryPolicy>,
    /// Messages of one key are delivered in order, one at a time. Fixed
    /// when the subscription is created.
    pub ordered: bool,
    /// Where messages that keep failing go; `None` for nowhere.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// No message is delivered before its publish time plus this.
    pub delivery_delay: Duration,
    /// Where the broker pushes the messages; `None`: consumers fetch them.
    pub push: Option<PushConfig>,
}

/// Where and how the broker POSTs a push subscription's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The http(s) URL.
    pub endpoint: String,
    /// Headers sent with every POST.
    pub headers: BTreeMap<String, String>,
    /// The most POSTs in flight at once.
    pub max_outstanding: u32,
}

/// Where a subscription moves messages that fail too often, or that a
/// subscriber rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// The dead-letter topic, by name: it may be deleted and made again.
    pub topic: TopicName,
    /// The failed deliveries after which a message is moved (2 to 100).
    pub max_delivery_attempts: u32,
}

/// How long a message waits to be delivered again after a failed
/// delivery: `minimum_backoff × 2^(n−1)` after the n-th failure, never more
/// than `maximum_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub minimum_backoff: Duration,
    /// The longest wait.
    pub maximum_backoff: Duration,
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed delivery (1 for the first).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.minimum_backoff
            .saturating_mul(1 << doublings)
            .min(self.maximum_backoff)
    }
}

/// What is stored of a message whose delivery on a subscription failed:
/// how often, and when it may be delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Failed deliveries so far (nacks, expired leases, broken streams).
    pub failures: u32,
    /// Not to be delivered again before this time; `None` for at once.
    pub redeliver_at: Option<SystemTime>,
}

/// What a subscription keeps of the messages it took out of delivery for
/// good: those moved to its dead-letter topic, and a count of those
/// rejected without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// Source offsets moved to the dead-letter topic and not redriven.
    pub offsets: OffsetRanges,
    /// Messages rejected while the subscription had no dead-letter topic
    /// (acknowledged instead).
    pub rejected: u64,
}

/// A subscription as stored: configuration, acknowledgements, the
/// delivery records of messages whose delivery failed, and its dead
/// letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Its configuration.
    pub record: SubscriptionRecord,
    /// Its acknowledgements.
    pub acks: AckState,
    /// Records of unacknowledged messages whose delivery failed, in offset
    /// order.
    pub deliveries: Vec<(Offset, DeliveryRecord)>,
    /// What it moved to its dead-letter topic or rejected.
    pub dead_letters: DeadLetters,
}

/// What a store holds, as read when the broker starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Every topic, in id order.
    pub topics: Vec<TopicRecord>,
    /// Every subscription with its last saved state, in id order.
    pub subscriptions: Vec<StoredSubscription>,
}

/// A change to one subscription's stored delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// Its acknowledgements, whole; they replace what was stored.
    pub acks: AckState,
    /// Delivery records to store (`Some`) or delete (`None`). Records
    /// not named stay as they are.
    pub records: Vec<(Offset, Option<DeliveryRecord>)>,
    /// Its dead letters, whole, when they changed; `None` leaves them.
    pub dead_letters: Option<DeadLetters>,
}

/// Appends and delivery-state changes written together by
/// [`Store::commit`]: all of them, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// Messages to append, per topic, in order.
    pub appends: Vec<(TopicId, Vec<NewMessage>)>,
    /// Delivery state to store, as [`Store::save_deliveries`] does.
    pub deliveries: Vec<DeliveryUpdate>,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    /// The body.
    pub payload: Bytes,
    /// The key; may be empty.
    pub key: String,
    /// The attributes, in the order given.
    pub attributes: Vec<(String, String)>,
    /// The idempotency key; empty for none. Within the topic's dedup
    /// window a message whose id was stored already is not stored again.
    pub id: String,
    /// Delivered on no subscription before this time; `None` for at once.
    pub deliver_at: Option<SystemTime>,
    /// Delivered on no subscription before this long after its publish
    /// time (which the store decides); with `deliver_at` the later wins.
    pub deliver_after: Option<Duration>,
}

impl NewMessage {
    /// When the message is due if it is published at `publish_time`:
    /// `None` when at once. Whole microseconds, as stores keep times.
    pub fn due(&self, publish_time: SystemTime) -> Option<SystemTime> {
        let after = self.deliver_after.map(|d| publish_time + d);
        let due = match (self.deliver_at, after) {
            (Some(at), Some(after)) => at.max(after),
            (at, after) => at.or(after)?,
        };
        // Rounded up, so that truncating to microseconds never makes it
        // earlier.
        let due = codec::truncate_to_micros(due + Duration::from_nanos(999));
        (due > publish_time).then_some(due)
    }

    /// The message as stored at `offset`, published at `publish_time`.
    pub fn stored_at(&self, offset: Offset, publish_time: SystemTime) -> StoredMessage {
        StoredMessage {
            offset,
            publish_time,
            payload: self.payload.clone(),
            key: self.key.clone(),
            attributes: self.attributes.clone(),
            id: self.id.clone(),
            deliver_at: self.due(publish_time),
        }
    }

    /// How many bytes count against the message size limit: payload, key,
    /// and attribute names and values.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its offset in the topic.
    pub offset: Offset,
    /// When the store appended it. Never decreases along a topic's offsets.
    pub publish_time: SystemTime,
    /// The body.
    pub payload: Bytes,
    /// The key.
    pub key: String,
    /// The attributes.
    pub attributes: Vec<(String, String)>,
    /// The id it was published with; empty for none.
    pub id: String,
    /// Delivered on no subscription before this time; `None` for at once.
    pub deliver_at: Option<SystemTime>,
}

impl StoredMessage {
    /// Roughly how many bytes the message occupies on the wire.
    pub fn wire_size(&self) -> usize {
        self.payload.len()
            + self.key.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 32
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The offset of the batch's first stored message; the others stored
    /// follow it.
    pub first_offset: Offset,
    /// The publish time given to every message of the batch.
    pub publish_time: SystemTime,
    /// The topic's retained bytes once the batch is stored.
    pub retained_bytes: u64,
    /// The messages of the batch that were not stored because their id
    /// was stored within the topic's dedup window (earlier, or earlier in
    /// the batch): their index in the batch and the original's offset, in
    /// batch order.
    pub duplicates: Vec<Duplicate>,
}

/// A message of a batch whose id was stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// Its index in the batch.
    pub index: usize,
    /// The offset of the message stored with its id.
    pub offset: Offset,
}

impl Appended {
    /// The messages of the batch that were stored: `batch` without the
    /// duplicates.
    pub fn stored(&self, mut batch: Vec<NewMessage>) -> Vec<NewMessage> {
        if !self.duplicates.is_empty() {
            let mut index = 0;
            let mut duplicates = self.duplicates.iter().peekable();
            batch.retain(|_| {
                let duplicate = duplicates.next_if(|d| d.index == index).is_some();
                index += 1;
                !duplicate
            });
        }
        batch
    }

    /// The offset of each message of a batch of `len`, in order, and
    /// whether it was a duplicate.
    pub fn offsets(&self, len: usize) -> (Vec<Offset>, Vec<bool>) {
        let mut offsets = Vec::with_capacity(len);
        let mut flags = Vec::with_capacity(len);
        let mut duplicates = self.duplicates.iter().peekable();
        let mut next = self.first_offset;
        for index in 0..len {
            match duplicates.next_if(|d| d.index == index) {
                Some(duplicate) => {
                    offsets.push(duplicate.offset);
                    flags.push(true);
                }
                None => {
                    offsets.push(next);
                    flags.push(false);
                    next += 1;
                }
            }
        }
        (offsets, flags)
    }
}

/// A delayed message's place in its topic's index of delayed messages:
/// when it is due, then its offset. Entries sort by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DuePosition {
    /// When the message is due (whole microseconds).
    pub due: SystemTime,
    /// Its offset.
    pub offset: Offset,
}

/// Bounds on one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    /// Return at most this many messages.
    pub max_messages: usize,
    /// Stop after the first message that brings the total of
    /// [`StoredMessage::wire_size`] to this many bytes. At least one message
    /// is returned when one is there.
    pub max_bytes: usize,
}

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The topic does not exist (any more).
    #[error("topic {0:?} does not exist in storage")]
    TopicNotFound(TopicId),
    /// The subscription does not exist (any more).
    #[error("subscription {0:?} does not exist in storage")]
    SubscriptionNotFound(SubscriptionId),
    /// Stored bytes could not be decoded.
    #[error("corrupt {what} in storage: {detail}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A file of the store is damaged: its data cannot be trusted, so the
    /// store does not open (or stops) rather than serve wrong data or drop
    /// acknowledged data.
    #[error("storage file {} is damaged: {detail}", file.display())]
    Damaged {
        /// The damaged file (or the store's directory, when the engine
        /// does not say which).
        file: std::path::PathBuf,
        /// What the engine found.
        detail: String,
    },
    /// The disk of the store is full, or has less free space than it
    /// must keep: writes that add data are refused until space is freed.
    #[error("{detail}")]
    NoSpace {
        /// What is short and what to do.
        detail: String,
    },
    /// The store was closed.
    #[error("storage is closed")]
    Closed,
    /// The storage engine failed.
    #[error("storage engine failed while {context}")]
    Engine {
        /// What the store was doing.
        context: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Shorthand for results of [`Store`] calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// How long a store's disk writes and syncs took, since it opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageTimings {
    /// Each write of a batch (with its sync, when the write syncs).
    pub write: LatencySnapshot,
    /// Each sync of the write-ahead log, and each write that synced.
    pub sync: LatencySnapshot,
}

/// Told by a store about changes to topics' messages, as they are written.
///
/// # Contract
/// Calls come from the store's own thread or from inside its calls, in the
/// order the changes were written (per topic: in offset order), after the
/// write and before any caller of the change is answered. They must be
/// quick and must not call back into the store.
pub trait StoreListener: Send + Sync {
    /// A batch was appended at `appended.first_offset`; `messages` are its
    /// stored messages in order (duplicates left out), handed over.
    fn appended(&self, topic: TopicId, appended: &Appended, messages: Vec<NewMessage>);

    /// Every offset of `topic` below `first_offset` was deleted; the
    /// topic now retains `retained_bytes`.
    fn truncated(&self, topic: TopicId, first_offset: Offset, retained_bytes: u64);
}

impl std::fmt::Debug for dyn StoreListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreListener")
    }
}

/// Durable storage of topics, messages and subscriptions.
///
/// # Contract
///
/// Every implementation must hold to this; `conformance.rs` checks it.
///
/// - **Memory topics** ([`StorageClass::Memory`]) write no message data
///   (and no message ids) to disk. Each append first drops the topic's
///   oldest messages until it is within [`Retention::memory_bound`] bytes
///   and `max_messages` (the listener hears a truncation after the
///   append). A reopened store has them empty, with `first_offset` equal
///   to a `next_offset` above every offset handed out before; their
///   subscriptions and ack states are kept. Everything else holds as for
///   disk topics, but durability: their messages survive nothing.
/// - **Offsets.** [`append`](Store::append) gives the messages it stores
///   contiguous offsets starting at the topic's `next_offset` (0 for a new
///   topic) and advances it by their count. An offset is never handed out
///   twice, even after a crash. A batch is stored whole or not at all.
/// - **Ids.** A message with a non-empty id that was stored less than the
///   topic's `dedup_window` ago (by an earlier append, or earlier in the
///   same batch) is not stored: it is reported in
///   [`Appended::duplicates`] with the original's offset. The id is
///   remembered in the same write as the message, so this holds across
///   crashes; ids older than the window are forgotten, and storage for
///   them is bounded by the window. A window of zero remembers nothing.
/// - **Listening.** Every append and truncation is told to the listener
///   set with [`set_listener`](Store::set_listener), as [`StoreListener`]
///   describes, whether or not its caller is still waiting.
/// - **Durability.** When `append` returns `Ok`, the batch survives a crash of
///   the process; with the store's strictest sync policy, a power loss too.
///   When it returns, every batch appended to any topic before it (by any
///   caller, whose call had returned `Ok`) is as durable as it is. Creating,
///   changing and deleting topics and subscriptions survive a power loss
///   once they return, whatever the sync policy; a truncation is as durable
///   as an append.
/// - **Delivery state.** [`save_deliveries`](Store::save_deliveries) stores
///   ack states whole and delivery records one by one, all in one write;
///   when it returns `Ok` they survive a crash of the process. Updates of
///   deleted subscriptions are ignored.
/// - **Deletion.** After [`delete_topic`](Store::delete_topic) returns, the
///   topic's messages and subscriptions are gone from reads and from
///   [`load`](Store::load); appends to it fail with
///   [`StoreError::TopicNotFound`].
/// - **Reads** see every batch whose append has returned (and that was not
///   truncated), in offset order, with offsets that hold no message simply
///   absent: offsets need not be dense.
/// - **Delays.** A stored message with a `deliver_at` is indexed by it, in
///   the same write: [`delayed`](Store::delayed) lists the index in
///   (due, offset) order until [`forget_delayed`](Store::forget_delayed)
///   drops the entries due before a time. Truncation leaves entries (they
///   name offsets that hold no message any more); deleting the topic drops
///   them all.
/// - **Threads.** Methods may be called concurrently from any task. No
///   implementation blocks the async worker thread it is polled on.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads every topic and subscription, for the broker's start.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when stored metadata cannot be decoded.
    async fn load(&self) -> StoreResult<Catalog>;

    /// Sets the listener told about every later append and truncation. Set
    /// once, before the first append; a second call replaces the first.
    fn set_listener(&self, listener: Arc<dyn StoreListener>);

    /// How long its writes and syncs to disk took, for the metrics; `None`
    /// for a store that writes nothing to disk.
    fn timings(&self) -> Option<StorageTimings> {
        None
    }

    /// Creates a topic with a fresh id, `next_offset` 0, keeping its
    /// messages as `storage` says. Name uniqueness is the broker's
    /// business, not the store's.
    async fn create_topic(
        &self,
        name: &TopicName,
        settings: TopicSettings,
        storage: StorageClass,
    ) -> StoreResult<TopicRecord>;

    /// Replaces a topic's record with `record`, whose id, name and creation
    /// time are those stored: only its settings change (its offsets and
    /// storage class are not taken from `record`).
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn update_topic(&self, record: TopicRecord) -> StoreResult<()>;

    /// Lets storage give back the space of a topic's deleted messages
    /// soon (a compaction of what was truncated); a no-op where there is
    /// nothing to give back.
    async fn reclaim(&self, topic: TopicId) -> StoreResult<()>;

    /// Deletes a topic with its messages and subscriptions.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn delete_topic(&self, topic: TopicId) -> StoreResult<()>;

    /// Appends a non-empty batch to a topic; see the contract above.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended>;

    /// Starts an append and returns once its place among the store's
    /// writes is fixed, with the future of its outcome (what
    /// [`append`](Store::append) returns). Appends started one after
    /// another are stored in the order they were started, however their
    /// outcomes are awaited: what a caller that keeps many appends in
    /// flight needs to keep them in order. Once this returns, the append
    /// happens whether or not its outcome is awaited.
    ///
    /// The default appends in full before it returns: ordered, but one at
    /// a time. A store with a write queue returns once the append is
    /// queued.
    ///
    /// # Errors
    /// What [`append`](Store::append) refuses before it writes (here, or
    /// in the outcome).
    async fn start_append(
        &self,
        topic: TopicId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<PendingAppend> {
        let appended = self.append(topic, messages).await;
        Ok(Box::pin(std::future::ready(appended)))
    }

    /// Deletes every message of `topic` below `before` (capped at the
    /// topic's `next_offset`) and raises its `first_offset` to it; returns
    /// the new `first_offset`. Never lowers it.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn truncate(&self, topic: TopicId, before: Offset) -> StoreResult<Offset> {
        self.trim(topic, before, 0).await
    }

    /// As [`truncate`](Store::truncate), and deletes further, oldest
    /// first, until at least `drop_bytes` of retained bytes are gone (or
    /// the topic is empty).
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn trim(&self, topic: TopicId, before: Offset, drop_bytes: u64) -> StoreResult<Offset>;

    /// Reads the messages with offsets in `range`, in offset order, within
    /// `limit`. Returns an empty vector when there are none.
    async fn read(
        &self,
        topic: TopicId,
        range: Range<Offset>,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// Reads the messages at the given offsets (ascending), skipping offsets
    /// that hold no message. Callers bound how many they ask for.
    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// The lowest offset at or above the topic's `first_offset` from which
    /// every stored message was published at or after `time`; the topic's
    /// `next_offset` when there is none.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset>;

    /// The delayed messages of `topic` past `after` (all when `None`) and
    /// due at or before `until`, in (due, offset) order, at most `limit`;
    /// none for a topic that does not exist.
    async fn delayed(
        &self,
        topic: TopicId,
        after: Option<DuePosition>,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<DuePosition>>;

    /// How many delayed messages of `topic` are due after `time`; 0 for a
    /// topic that does not exist.
    async fn count_delayed(&self, topic: TopicId, time: SystemTime) -> StoreResult<u64>;

    /// Drops the index entries of `topic` due before `before`: messages
    /// that are due are found by reading the log. Nothing for a topic that
    /// does not exist.
    async fn forget_delayed(&self, topic: TopicId, before: SystemTime) -> StoreResult<()>;

    /// Creates a subscription with a fresh id and the given initial ack
    /// state.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when the topic does not exist.
    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        settings: SubscriptionSettings,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord>;

    /// Replaces a subscription's record with `record`, whose id, name,
    /// topic and creation time are those stored: only its settings change.
    /// Its delivery state stays as it is.
    ///
    /// # Errors
    /// [`StoreError::SubscriptionNotFound`] when there is no such
    /// subscription.
    async fn update_subscription(&self, record: SubscriptionRecord) -> StoreResult<()>;

    /// Deletes a subscription and its delivery state.
    ///
    /// # Errors
    /// [`StoreError::SubscriptionNotFound`] when there is no such
    /// subscription.
    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()>;

    /// Stores the delivery state of several subscriptions in one write.
    /// Updates of subscriptions that no longer exist are ignored.
    async fn save_deliveries(&self, updates: Vec<DeliveryUpdate>) -> StoreResult<()>;

    /// Appends messages and stores delivery state in one atomic write: a
    /// crash at any moment leaves all of it or none. Returns where each
    /// append landed, in order; the listener hears of each. Durable as an
    /// append is under the sync policy. Updates of subscriptions that no
    /// longer exist are ignored.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] for an append to a topic that does
    /// not exist; then nothing is written.
    async fn commit(&self, commit: Commit) -> StoreResult<Vec<Appended>>;

    /// Whether new messages may be stored now: [`StoreError::NoSpace`]
    /// while the disk is below its minimum of free space, when
    /// [`Store::append`] refuses them. [`Store::commit`] does not check:
    /// the broker checks here before a caller's commit publishes, so that
    /// its own commits (acks, dead-letter moves) go on.
    ///
    /// # Errors
    /// [`StoreError::NoSpace`], as [`Store::append`] would answer.
    fn accepts_messages(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Makes everything written so far durable and stops accepting writes.
    /// Later calls fail with [`StoreError::Closed`]; closing twice is fine.
    async fn close(&self) -> StoreResult<()>;
}

/// Microseconds since the Unix epoch, as stores keep times (0 before it).
pub(crate) fn micros_since_epoch(time: SystemTime) -> u64 {
    codec::to_micros(time)
}

/// A store shared by the broker's tasks.
pub type SharedStore = Arc<dyn Store>;

/// The outcome of an append that [`Store::start_append`] started.
pub type PendingAppend =
    std::pin::Pin<Box<dyn Future<Output = StoreResult<Appended>> + Send + 'static>>;
