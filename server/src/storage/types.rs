//! The records and values that cross the [`Store`](super::Store) seam:
//! identities, topic and subscription records with their settings, the
//! messages going in and coming out, and what an append answers. Plain
//! data; the trait and its errors are in `mod.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;

#[cfg(doc)]
use super::Store;
use super::codec;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset, OffsetRanges};

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
    /// Shares the buffer it arrived in, as the payload does: whatever
    /// outlives the message keeps a copy, not this.
    pub id: ByteString,
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
    pub id: ByteString,
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
