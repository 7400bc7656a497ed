//! The storage seam: everything the broker keeps on disk goes through
//! [`Store`].
//!
//! The broker core names only this trait and its types; RocksDB is named in
//! [`rocks`] alone, and [`memory`] is an in-memory implementation for fast
//! tests. A second engine (a NATS JetStream cluster, say) implements the same
//! trait. Every implementation passes the conformance suite in
//! `conformance.rs`.
//!
//! The store owns offsets: [`Store::append`] hands them out, contiguously per
//! batch and never twice, across crashes too. Leases, deadlines and streams
//! are not stored: they live in the broker's memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};

mod codec;
#[cfg(test)]
mod conformance;
pub mod memory;
pub mod rocks;

pub use memory::MemoryStore;
pub use rocks::{RocksStore, SyncPolicy};

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
    /// The offset the next appended message gets.
    pub next_offset: Offset,
    /// When it was created.
    pub created: SystemTime,
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
    /// How long a delivery is leased.
    pub ack_deadline: Duration,
    /// When it was created.
    pub created: SystemTime,
}

/// What a store holds, as read when the broker starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Every topic, in id order.
    pub topics: Vec<TopicRecord>,
    /// Every subscription with its last saved ack state, in id order.
    pub subscriptions: Vec<(SubscriptionRecord, AckState)>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The offset of the batch's first message; the others follow it.
    pub first_offset: Offset,
    /// The publish time given to every message of the batch.
    pub publish_time: SystemTime,
}

/// Bounds on one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    /// Return at most this many messages.
    pub max_messages: usize,
    /// Stop after the first message that brings the total payload to this
    /// many bytes. At least one message is returned when one is there.
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

/// Durable storage of topics, messages and subscriptions.
///
/// # Contract
///
/// Every implementation must hold to this; `conformance.rs` checks it.
///
/// - **Offsets.** [`append`](Store::append) gives a batch contiguous offsets
///   starting at the topic's `next_offset` (0 for a new topic) and advances
///   it by the batch's length. An offset is never handed out twice, even
///   after a crash. A batch is stored whole or not at all.
/// - **Durability.** When `append` returns `Ok`, the batch survives a crash of
///   the process; with the store's strictest sync policy, a power loss too.
///   When it returns, every batch appended to any topic before it (by any
///   caller, whose call had returned `Ok`) is as durable as it is.
/// - **Acknowledgements.** [`save_ack_states`](Store::save_ack_states) stores
///   the given states whole, replacing earlier ones; when it returns `Ok`
///   they survive a crash of the process. States of deleted subscriptions
///   are ignored.
/// - **Deletion.** After [`delete_topic`](Store::delete_topic) returns, the
///   topic's messages and subscriptions are gone from reads and from
///   [`load`](Store::load); appends to it fail with
///   [`StoreError::TopicNotFound`].
/// - **Reads** see every batch whose `append` has returned, in offset order,
///   with offsets that were never appended simply absent.
/// - **Threads.** Methods may be called concurrently from any task. No
///   implementation blocks the async worker thread it is polled on.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads every topic and subscription, for the broker's start.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when stored metadata cannot be decoded.
    async fn load(&self) -> StoreResult<Catalog>;

    /// Creates a topic with a fresh id and `next_offset` 0. Name uniqueness
    /// is the broker's business, not the store's.
    async fn create_topic(&self, name: &TopicName) -> StoreResult<TopicRecord>;

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

    /// Reads messages with offsets from `from` upward, in offset order,
    /// within `limit`. Returns an empty vector when there are none.
    async fn read(
        &self,
        topic: TopicId,
        from: Offset,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// Reads the messages at the given offsets (ascending), skipping offsets
    /// that hold no message.
    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// The offset of the first message published at or after `time`, or the
    /// topic's `next_offset` when there is none.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when there is no such topic.
    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset>;

    /// Creates a subscription with a fresh id and the given initial ack
    /// state.
    ///
    /// # Errors
    /// [`StoreError::TopicNotFound`] when the topic does not exist.
    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        ack_deadline: Duration,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord>;

    /// Deletes a subscription.
    ///
    /// # Errors
    /// [`StoreError::SubscriptionNotFound`] when there is no such
    /// subscription.
    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()>;

    /// Stores the ack states of several subscriptions in one write.
    async fn save_ack_states(&self, states: Vec<(SubscriptionId, AckState)>) -> StoreResult<()>;

    /// Makes everything written so far durable and stops accepting writes.
    /// Later calls fail with [`StoreError::Closed`]; closing twice is fine.
    async fn close(&self) -> StoreResult<()>;
}

/// A store shared by the broker's tasks.
pub type SharedStore = Arc<dyn Store>;
