//! The broker core: the [`Engine`] seam every front door (gRPC today)
//! calls, and [`Broker`], the local engine behind it: topics,
//! subscriptions, leases and redelivery over a [`Store`](crate::storage::Store).
//!
//! Plain async Rust with its own error type ([`BrokerError`]). It reaches
//! storage only through `Store` and never names tonic or RocksDB.
//! [`Broker`] is a cheap `Clone` handle over one `Arc`.
//!
//! - `engine` is the seam, and says why it sits where it does;
//! - `catalog` maps names to live topics and subscriptions and serves the
//!   calls; changes to what is stored run as tasks of their own, so a
//!   cancelled request cannot leave memory and storage apart;
//! - `topic` follows each topic's head as the store reports it;
//! - `book` holds the lease book of one subscription, `subscription` wraps
//!   it with its configuration;
//! - `stream` is the task behind one `Subscribe` stream;
//! - `acks` persists delivery state (acks, failure counts) in batches;
//! - `filter` parses and judges subscription filters.

use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::names::{SubscriptionName, TopicName};
use crate::offsets::Offset;
pub use crate::storage::{
    DEFAULT_DEDUP_WINDOW, DEFAULT_MEMORY_BYTES, DeadLetterPolicy, PushConfig, Retention,
    RetryPolicy, StorageClass, StorageTimings,
};
use crate::storage::{StoredMessage, SubscriptionId, TopicId};

mod acks;
mod book;
mod calls;
mod catalog;
mod checks;
mod delays;
mod engine;
mod error;
mod filter;
mod retention;
mod stream;
mod subscription;
mod topic;

pub use calls::{DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT};
pub use catalog::Broker;
pub use checks::{RESERVED_ATTRIBUTE_PREFIX, check_batch};
pub use engine::{
    CallReply, CommitAcks, CommitSpec, Engine, EngineTimings, PendingPublish, PullSpec, PushTarget,
    PushTargets, SharedEngine,
};
pub use error::{BrokerError, BrokerResult};
pub use filter::{Filter, FilterError, MAX_FILTER_BYTES};

/// The default ack deadline of a subscription.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// The longest ack deadline, and the longest lease extension or nack delay.
pub const MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);
/// The default of `max_outstanding_messages`.
pub const DEFAULT_MAX_OUTSTANDING: usize = 1000;
/// The minimum backoff of a retry policy that leaves it unset.
pub const DEFAULT_MINIMUM_BACKOFF: Duration = Duration::from_secs(10);
/// The longest backoff a retry policy may set.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The largest `max_outstanding_messages` a stream may ask for.
pub const MAX_OUTSTANDING: usize = 100_000;
/// The default number of messages one `ReadTopic` returns.
pub const DEFAULT_READ_MESSAGES: usize = 100;
/// The most messages one `ReadTopic` returns.
pub const MAX_READ_MESSAGES: usize = 1000;
/// POSTs a push subscription has in flight when its config does not say.
pub const DEFAULT_PUSH_OUTSTANDING: u32 = 100;
/// The most POSTs a push subscription may have in flight.
pub const MAX_PUSH_OUTSTANDING: u32 = 1000;
/// Messages a pull returns when the request does not say.
pub const DEFAULT_PULL_MESSAGES: usize = 100;
/// The most messages one pull returns.
pub const MAX_PULL_MESSAGES: usize = 1000;
/// The longest a pull waits for its first message.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(60);

/// Settings of the broker core.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Publishing to an unknown topic creates it instead of failing.
    pub auto_create_topics: bool,
    /// The largest message (payload, key and attributes) accepted, in bytes.
    pub max_message_bytes: usize,
    /// The most bytes of messages one `Subscribe` response frame carries
    /// (a single larger message still travels alone).
    pub max_frame_bytes: usize,
    /// What a topic created without a retention policy keeps.
    pub default_retention: Retention,
    /// How far ahead of their time delayed messages are handed to the
    /// subscriptions: what their lease books hold of the future.
    pub delay_look_ahead: Duration,
    /// The most topics, subscriptions and open streams the broker holds.
    pub limits: Limits,
    /// An idle `Subscribe` stream gets an empty frame this often, so that
    /// proxies keep it open and clients can tell it is alive; `None`: never.
    pub stream_heartbeat: Option<Duration>,
}

/// The default of [`BrokerConfig::stream_heartbeat`]: 30 s.
pub const DEFAULT_STREAM_HEARTBEAT: Duration = Duration::from_secs(30);

/// Limits an operator sets on what the broker holds; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Topics.
    pub topics: Option<usize>,
    /// Subscriptions.
    pub subscriptions: Option<usize>,
    /// `Subscribe` streams open at once, across all subscriptions.
    pub open_streams: Option<usize>,
}

/// The default of [`BrokerConfig::delay_look_ahead`]: 30 s.
pub const DEFAULT_DELAY_LOOK_AHEAD: Duration = Duration::from_secs(30);

/// The default of [`BrokerConfig::default_retention`]: 7 days.
pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: false,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: 1024 * 1024,
            default_retention: Retention {
                max_age: Some(DEFAULT_RETENTION_MAX_AGE),
                ..Retention::default()
            },
            delay_look_ahead: DEFAULT_DELAY_LOOK_AHEAD,
            limits: Limits::default(),
            stream_heartbeat: Some(DEFAULT_STREAM_HEARTBEAT),
        }
    }
}

/// A topic as reported to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its name.
    pub name: TopicName,
    /// The earliest offset that may hold a message; `next_offset` when the
    /// topic holds none.
    pub first_offset: Offset,
    /// The offset the next message will get.
    pub next_offset: Offset,
    /// When it was created.
    pub created: SystemTime,
    /// What it keeps.
    pub retention: Retention,
    /// Offsets from `first_offset` to `next_offset`.
    pub retained_messages: u64,
    /// The stored size of the retained messages.
    pub retained_bytes: u64,
    /// Bytes published to it (payload, key and attributes of each stored
    /// message) since the broker started.
    pub published_bytes: u64,
    /// How long message ids are remembered; zero for not at all.
    pub dedup_window: Duration,
    /// Where its messages are kept.
    pub storage: StorageClass,
}

/// A topic to create: what is `None` gets the broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: TopicName,
    /// What it keeps; `None` for [`BrokerConfig::default_retention`].
    pub retention: Option<Retention>,
    /// How long message ids are remembered; `None` for
    /// [`DEFAULT_DEDUP_WINDOW`], zero for not at all.
    pub dedup_window: Option<Duration>,
    /// Where its messages are kept; fixed once it is created.
    pub storage: StorageClass,
}

impl TopicSpec {
    /// A topic with every default: on disk.
    pub fn named(name: TopicName) -> Self {
        Self {
            name,
            retention: None,
            dedup_window: None,
            storage: StorageClass::Disk,
        }
    }
}

/// The longest dedup window a topic may have: 7 days.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest a message may wait for its delivery time: 30 days.
pub const MAX_DELIVERY_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest message id, in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 256;

/// A change of a topic: what is `Some` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicUpdate {
    /// The topic.
    pub name: TopicName,
    /// A new age limit (`Some(None)`: none).
    pub max_age: Option<Option<Duration>>,
    /// A new count limit (`Some(None)`: none).
    pub max_messages: Option<Option<u64>>,
    /// A new size limit (`Some(None)`: none).
    pub max_bytes: Option<Option<u64>>,
    /// Whether acknowledged messages are deleted.
    pub discard_acked: Option<bool>,
    /// A new dedup window (zero: none).
    pub dedup_window: Option<Duration>,
}

impl TopicUpdate {
    /// A change of nothing yet, of the topic `name`.
    pub fn of(name: TopicName) -> Self {
        Self {
            name,
            max_age: None,
            max_messages: None,
            max_bytes: None,
            discard_acked: None,
            dedup_window: None,
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.max_age.is_none()
            && self.max_messages.is_none()
            && self.max_bytes.is_none()
            && self.discard_acked.is_none()
            && self.dedup_window.is_none()
    }
}

/// A subscription as reported to users, with live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Its name.
    pub name: SubscriptionName,
    /// The topic it reads.
    pub topic: TopicName,
    /// How long a delivery is leased.
    pub ack_deadline: Duration,
    /// Its filter as given; empty for none.
    pub filter: String,
    /// How long redeliveries wait; `None` for not at all.
    pub retry: Option<RetryPolicy>,
    /// Messages of one key go in order, one at a time.
    pub ordered: bool,
    /// Where messages that keep failing go.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// Messages moved to the dead-letter topic and not redriven.
    pub dead_lettered: u64,
    /// Messages rejected while there was no dead-letter topic.
    pub rejected: u64,
    /// No message is delivered before its publish time plus this.
    pub delivery_delay: Duration,
    /// Where the broker pushes the messages; `None` for consumers to fetch.
    pub push: Option<PushConfig>,
    /// Messages waiting for their delivery time.
    pub delayed: u64,
    /// Published but not yet acknowledged.
    pub backlog: u64,
    /// Leased to a stream, awaiting acknowledgement.
    pub in_flight: u64,
    /// Every offset below it is acknowledged.
    pub ack_floor: Offset,
    /// Open `Subscribe` streams.
    pub open_streams: u32,
    /// What was delivered and settled since the broker started.
    pub counts: DeliveryCounts,
    /// When it was created.
    pub created: SystemTime,
}

/// What a subscription delivered and how deliveries were settled, counted
/// since the broker started (or the subscription was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Deliveries, first and repeated.
    pub delivered: u64,
    /// Deliveries of a message delivered before (attempt 2 and up).
    pub redelivered: u64,
    /// Messages acknowledged (by `Ack`, a commit or a 2xx push answer).
    pub acked: u64,
    /// Deliveries given back (by `Nack`, a zero ack deadline or a failed
    /// push); expired leases are not counted here.
    pub nacked: u64,
    /// Messages moved to the dead-letter topic.
    pub dead_lettered: u64,
}

/// Where a new subscription begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// At the earliest retained message.
    #[default]
    Earliest,
    /// At the topic's next offset when the subscription is created.
    Latest,
    /// At this offset (not above the topic's next offset).
    Offset(Offset),
    /// At the first message published at or after this time.
    Time(SystemTime),
}

/// What a new subscription looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Its name.
    pub name: SubscriptionName,
    /// The topic it reads.
    pub topic: TopicName,
    /// Its ack deadline; `None` for [`DEFAULT_ACK_DEADLINE`].
    pub ack_deadline: Option<Duration>,
    /// Where it begins.
    pub start: StartPosition,
    /// Its filter ([`Filter`]'s language); empty for none.
    pub filter: String,
    /// How long redeliveries wait; `None` for not at all.
    pub retry: Option<RetryPolicy>,
    /// Deliver the messages of each non-empty key in offset order, one at
    /// a time across all streams.
    pub ordered: bool,
    /// Where messages that keep failing go.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// No message is delivered before its publish time plus this.
    pub delivery_delay: Duration,
    /// Push the messages to an HTTP endpoint instead.
    pub push: Option<PushConfig>,
}

/// A change to a subscription: each field that is `Some` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    /// The subscription.
    pub name: SubscriptionName,
    /// A new ack deadline; it applies to leases granted from now on.
    pub ack_deadline: Option<Duration>,
    /// A new filter, empty to remove it; it applies to every message not
    /// yet delivered.
    pub filter: Option<String>,
    /// A new retry policy (`Some(None)` removes it); it applies to
    /// failures from now on.
    pub retry: Option<Option<RetryPolicy>>,
    /// A new dead-letter policy (`Some(None)` removes it).
    pub dead_letter: Option<Option<DeadLetterPolicy>>,
    /// A new delivery delay (zero: none); it applies to every message not
    /// yet delivered.
    pub delivery_delay: Option<Duration>,
    /// A new push configuration (`Some(None)` makes it a pull
    /// subscription).
    pub push: Option<Option<PushConfig>>,
}

/// A request to open a `Subscribe` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeSpec {
    /// The subscription to read.
    pub subscription: SubscriptionName,
    /// Its topic: required to create the subscription, checked when it
    /// exists.
    pub topic: Option<TopicName>,
    /// Where a subscription created by this call begins.
    pub start: StartPosition,
    /// Ack deadline of a subscription created by this call.
    pub ack_deadline: Option<Duration>,
    /// The most unacknowledged messages the stream holds; `None` for
    /// [`DEFAULT_MAX_OUTSTANDING`].
    pub max_outstanding: Option<usize>,
    /// The most bytes of unacknowledged messages the stream holds; `None`
    /// for no limit but `max_outstanding`.
    pub max_outstanding_bytes: Option<usize>,
    /// End the stream after this many deliveries.
    pub max_messages: Option<u64>,
}

/// One delivery of a message to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: StoredMessage,
    /// 1 on the first delivery on this subscription, then counting up.
    pub attempt: u32,
    /// Names this delivery (the message and its lease) for settlements.
    pub ack_id: String,
}

/// The local engine's ack id: a subscription, an offset and one lease on
/// it. Written as three decimal numbers joined by `-`; clients treat it as
/// opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckId {
    subscription: SubscriptionId,
    offset: Offset,
    lease: u64,
}

impl AckId {
    /// Parses an ack id as the broker wrote it.
    ///
    /// # Errors
    /// [`BrokerError::InvalidAckId`] for anything else.
    pub fn parse(text: &str) -> BrokerResult<Self> {
        // One pass over the bytes: acks name every message, so this is on
        // the hot path.
        let malformed = || BrokerError::InvalidAckId(text.to_owned());
        let mut numbers = [0u64; 3];
        let (mut index, mut digits) = (0, 0);
        for &byte in text.as_bytes() {
            match byte {
                b'0'..=b'9' => {
                    let number = &mut numbers[index];
                    *number = number
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                        .ok_or_else(malformed)?;
                    digits += 1;
                }
                b'-' if digits > 0 && index < 2 => (index, digits) = (index + 1, 0),
                _ => return Err(malformed()),
            }
        }
        if index != 2 || digits == 0 {
            return Err(malformed());
        }
        let [subscription, offset, lease] = numbers;
        Ok(Self {
            subscription: SubscriptionId(subscription),
            offset,
            lease,
        })
    }
}

impl AckId {
    /// The ack id as text: written for every delivery, so without the
    /// formatting machinery.
    pub fn encode(&self) -> String {
        let mut text = Vec::with_capacity(3 * 20 + 2);
        push_decimal(&mut text, self.subscription.0);
        text.push(b'-');
        push_decimal(&mut text, self.offset);
        text.push(b'-');
        push_decimal(&mut text, self.lease);
        // Digits and dashes are ASCII.
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Appends `value` in decimal ASCII digits.
fn push_decimal(text: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    text.extend_from_slice(&digits[start..]);
}

impl std::fmt::Display for AckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Messages read from a topic by offset, outside any subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRead {
    /// The messages, in offset order.
    pub messages: Vec<StoredMessage>,
    /// Where the next read continues.
    pub next_offset: Offset,
    /// The topic's next offset when it was read.
    pub end_offset: Offset,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in name order.
    pub items: Vec<T>,
    /// The name to pass as `after` for the next page; `None` on the last.
    pub next_after: Option<String>,
}

/// The receiving end of a `Subscribe` stream, itself a [`Stream`]: frames
/// of deliveries, then at most one error that ends the stream. It ends
/// without error after `max_messages` deliveries. Dropping it ends the
/// stream; its messages in flight become deliverable again.
///
/// The error travels apart from the frames, so it gets through however
/// far behind the reader is: it comes after every frame sent before it.
#[derive(Debug)]
pub struct DeliveryStream {
    frames_rx: mpsc::Receiver<Vec<Delivery>>,
    end_rx: Option<oneshot::Receiver<BrokerError>>,
}

impl DeliveryStream {
    /// The reading end of a stream fed by `frames_tx`, ended by what
    /// `end_tx` sends (or by dropping both, for an end without error).
    pub fn channel(
        buffer: usize,
    ) -> (
        mpsc::Sender<Vec<Delivery>>,
        oneshot::Sender<BrokerError>,
        Self,
    ) {
        let (frames_tx, frames_rx) = mpsc::channel(buffer);
        let (end_tx, end_rx) = oneshot::channel();
        let stream = Self {
            frames_rx,
            end_rx: Some(end_rx),
        };
        (frames_tx, end_tx, stream)
    }
}

impl Stream for DeliveryStream {
    type Item = BrokerResult<Vec<Delivery>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match self.frames_rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        let Some(end_rx) = self.end_rx.as_mut() else {
            return Poll::Ready(None);
        };
        let end = std::pin::Pin::new(end_rx).poll(cx);
        match end {
            Poll::Pending => Poll::Pending,
            Poll::Ready(end) => {
                self.end_rx = None;
                Poll::Ready(end.ok().map(Err))
            }
        }
    }
}

/// What one publish did, message by message in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Each message's offset; a duplicate has its original's.
    pub offsets: Vec<Offset>,
    /// Whether each message repeated an id stored within the topic's
    /// dedup window, and so was not stored again.
    pub duplicates: Vec<bool>,
}

#[cfg(test)]
mod test_store;
#[cfg(test)]
mod tests;
