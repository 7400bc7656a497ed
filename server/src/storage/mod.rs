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
//!
//! The trait and its errors are here; the records and values it takes and
//! gives live in `types.rs` (re-exported here).

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use crate::latency::LatencySnapshot;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};
use async_trait::async_trait;

mod codec;
#[cfg(test)]
mod conformance;
pub mod memory;
mod ram;
pub mod rocks;
mod types;

pub use memory::MemoryStore;
pub use rocks::{RepairReport, RocksStore, SyncPolicy};
pub use types::*;

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
