//! The broker core: topics, subscriptions, leases and redelivery.
//!
//! Plain async Rust with its own error type ([`BrokerError`]). It reaches
//! storage only through [`Store`](crate::storage::Store) and never names
//! tonic or RocksDB. [`Broker`] is a cheap `Clone` handle over one `Arc`.
//!
//! - `catalog` maps names to live topics and subscriptions;
//! - `subscription` holds the lease book of one subscription: what is in
//!   flight, to which stream, until when, and what is due again;
//! - `stream` is the task behind one `Subscribe` stream;
//! - `acks` persists acknowledgements in batches.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::names::{SubscriptionName, TopicName};
use crate::offsets::Offset;
use crate::storage::StoredMessage;

mod acks;
mod catalog;
mod checks;
mod error;
mod stream;
mod subscription;
mod topic;

pub use catalog::Broker;
pub use error::{BrokerError, BrokerResult};

/// The default ack deadline of a subscription.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// The longest ack deadline, and the longest lease extension or nack delay.
pub const MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);
/// The default of `max_outstanding_messages`.
pub const DEFAULT_MAX_OUTSTANDING: usize = 1000;
/// The largest `max_outstanding_messages` a stream may ask for.
pub const MAX_OUTSTANDING: usize = 100_000;

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
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: false,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: 1024 * 1024,
        }
    }
}

/// A topic as reported to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its name.
    pub name: TopicName,
    /// The offset the next message will get.
    pub next_offset: Offset,
    /// When it was created.
    pub created: SystemTime,
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
    /// Published but not yet acknowledged.
    pub backlog: u64,
    /// Leased to a stream, awaiting acknowledgement.
    pub in_flight: u64,
    /// Every offset below it is acknowledged.
    pub ack_floor: Offset,
    /// Open `Subscribe` streams.
    pub open_streams: u32,
    /// When it was created.
    pub created: SystemTime,
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
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in name order.
    pub items: Vec<T>,
    /// The name to pass as `after` for the next page; `None` on the last.
    pub next_after: Option<String>,
}

/// The receiving end of a `Subscribe` stream: frames of deliveries, then at
/// most one error that ends the stream. The stream ends without error after
/// `max_messages` deliveries. Dropping it ends the stream; its messages in
/// flight become deliverable again.
#[derive(Debug)]
pub struct DeliveryStream {
    /// Frames, as the stream task produces them.
    pub frames_rx: mpsc::Receiver<BrokerResult<Vec<Delivery>>>,
}

/// Offsets handed out by one publish.
pub type PublishedOffsets = Range<Offset>;

#[cfg(test)]
mod tests;
