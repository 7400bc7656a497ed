//! The broker's one error type. The gRPC layer maps it to a status in one
//! place (`grpc::status`); nothing here knows about gRPC.

use std::time::Duration;

use crate::names::{NameError, SubscriptionName, TopicName};
use crate::offsets::Offset;
use crate::storage::StoreError;

/// What a broker call can fail with. Messages are lowercase, name the thing,
/// and say what to do where that helps.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A name broke the grammar.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The topic does not exist.
    #[error("topic \"{0}\" does not exist; create it first (AdminService.CreateTopic)")]
    TopicNotFound(TopicName),
    /// The subscription does not exist.
    #[error(
        "subscription \"{0}\" does not exist; create it (AdminService.CreateSubscription) or pass a topic to Subscribe"
    )]
    SubscriptionNotFound(SubscriptionName),
    /// A topic of that name exists already.
    #[error("topic \"{0}\" already exists")]
    TopicExists(TopicName),
    /// A subscription of that name exists already.
    #[error("subscription \"{0}\" already exists")]
    SubscriptionExists(SubscriptionName),
    /// The subscription exists, on another topic than the one named.
    #[error(
        "subscription \"{subscription}\" is on topic \"{actual}\", not \"{requested}\"; use another subscription name or leave the topic empty"
    )]
    TopicMismatch {
        /// The subscription.
        subscription: SubscriptionName,
        /// The topic it is on.
        actual: TopicName,
        /// The topic the caller named.
        requested: TopicName,
    },
    /// A limit the operator set was reached.
    #[error(
        "the broker holds {limit} {what}, its limit (--{flag}); {hint}, or ask the operator to raise the limit"
    )]
    LimitReached {
        /// What is limited: `topics`, `subscriptions`, `open streams`.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The flag that sets it.
        flag: &'static str,
        /// What the caller can do.
        hint: &'static str,
    },
    /// Subscribe or Pull on a push subscription.
    #[error(
        "subscription \"{0}\" is a push subscription: the broker POSTs its messages to its endpoint; remove its push_config (AdminService.UpdateSubscription) to subscribe or pull"
    )]
    PushSubscription(SubscriptionName),
    /// The topic was deleted while a stream was reading it.
    #[error("topic \"{0}\" was deleted")]
    TopicDeleted(TopicName),
    /// The subscription was deleted while a stream was reading it.
    #[error("subscription \"{0}\" was deleted")]
    SubscriptionDeleted(SubscriptionName),
    /// A publish request held no message.
    #[error("publish request holds no message; send at least one")]
    EmptyBatch,
    /// A message is over the size limit.
    #[error(
        "message {index} is {size} bytes (payload, key and attributes); the limit is {limit} bytes (--max-message-bytes)"
    )]
    MessageTooLarge {
        /// Its position in the request.
        index: usize,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An attribute had an empty name.
    #[error("message {index} has an attribute with an empty name")]
    EmptyAttributeName {
        /// The message's position in the request.
        index: usize,
    },
    /// An offset named in an ack, nack or start position was never published.
    #[error(
        "offset {offset} has not been published on topic \"{topic}\" (its next offset is {next_offset})"
    )]
    OffsetNotPublished {
        /// The topic.
        topic: TopicName,
        /// The offset asked for.
        offset: Offset,
        /// The topic's next offset.
        next_offset: Offset,
    },
    /// A duration was outside its allowed range.
    #[error("{what} must be between {min:?} and {max:?}, not {given:?}")]
    DurationOutOfRange {
        /// Which setting.
        what: &'static str,
        /// The value given.
        given: Duration,
        /// The smallest allowed.
        min: Duration,
        /// The largest allowed.
        max: Duration,
    },
    /// A count was outside its allowed range.
    #[error("{what} must be at most {max}, not {given}")]
    CountOutOfRange {
        /// Which setting.
        what: &'static str,
        /// The value given.
        given: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A dead-letter policy names a topic that does not exist.
    #[error("dead-letter topic \"{0}\" does not exist; create it first (AdminService.CreateTopic)")]
    DeadLetterTopicNotFound(TopicName),
    /// A subscription filter that does not parse.
    #[error("filter is not valid: {0}")]
    InvalidFilter(#[source] super::FilterError),
    /// An update that changes nothing.
    #[error("{0}")]
    NothingToUpdate(&'static str),
    /// An attribute name the broker keeps for itself.
    #[error(
        "message {index} has attribute \"{name}\": names starting with \"tidings.\" are reserved for the broker; rename it"
    )]
    ReservedAttribute {
        /// The message's position in the request.
        index: usize,
        /// The attribute's name.
        name: String,
    },
    /// An ack id that the broker did not write.
    #[error(
        "ack_id {0:?} is malformed; pass the ack_id of a received message unchanged, or use offsets"
    )]
    InvalidAckId(String),
    /// Any other request the broker cannot act on, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// A message is to be delivered more than
    /// [`MAX_DELIVERY_DELAY`](super::MAX_DELIVERY_DELAY) from now.
    #[error(
        "messages[{index}] is to be delivered more than 30 days from now (deliver_after or \
         deliver_at); the longest delay is 30 days"
    )]
    TooFarAhead {
        /// The message's index in the batch.
        index: usize,
    },
    /// A message's id is longer than [`MAX_MESSAGE_ID_BYTES`](super::MAX_MESSAGE_ID_BYTES).
    #[error(
        "messages[{index}].id is {len} bytes; ids are at most {max} bytes",
        max = super::MAX_MESSAGE_ID_BYTES
    )]
    IdTooLong {
        /// The message's index in the batch.
        index: usize,
        /// The id's length in bytes.
        len: usize,
    },
    /// A commit acknowledges a message that is settled already (or taken
    /// by another commit of the same moment): nothing was committed.
    #[error(
        "message {offset} of subscription \"{subscription}\" is already acknowledged or \
         dead-lettered (or acknowledged by another commit at the same moment); nothing was \
         committed"
    )]
    AlreadySettled {
        /// The subscription.
        subscription: SubscriptionName,
        /// The message's offset.
        offset: Offset,
    },
    /// An error in one part of a request of several (a commit's
    /// publishes or acks), named by where it is.
    #[error("{part}: {source}")]
    InPart {
        /// Where, as `publishes[2]` or `acks[0]`.
        part: String,
        /// What is wrong there.
        #[source]
        source: Box<BrokerError>,
    },
    /// Nobody answered a call in time.
    #[error(
        "nobody answered the request (offset {offset} of topic \"{topic}\") within {timeout:?}; \
         it stays in the topic for responders"
    )]
    CallTimedOut {
        /// The request's topic.
        topic: TopicName,
        /// The request's offset.
        offset: Offset,
        /// How long the call waited.
        timeout: Duration,
    },
    /// A reply names no waiting call.
    #[error(
        "no call waits for reply_to {0:?}: it was answered already, stopped waiting, or the token \
         is not one the broker wrote"
    )]
    CallNotFound(String),
    /// The broker is shutting down.
    #[error("broker is shutting down; reconnect and retry")]
    ShuttingDown,
    /// The disk is full or below `--min-free-disk`: nothing is published
    /// until space is freed.
    #[error("{0}")]
    NoSpace(String),
    /// Storage failed.
    #[error("storage failed")]
    Storage(#[source] StoreError),
}

impl From<StoreError> for BrokerError {
    /// A closed store means the broker is shutting down (a request that
    /// outlived the drain, say): the caller should retry elsewhere or
    /// later, not report an internal error.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Closed => Self::ShuttingDown,
            StoreError::NoSpace { detail } => Self::NoSpace(detail),
            other => Self::Storage(other),
        }
    }
}

/// Shorthand for broker results.
pub type BrokerResult<T> = Result<T, BrokerError>;

impl BrokerError {
    /// Names the part of a request of several that this error is about.
    pub(crate) fn in_part(self, part: impl Into<String>) -> Self {
        Self::InPart {
            part: part.into(),
            source: Box::new(self),
        }
    }

    /// The error itself, under the parts that name where it is.
    pub fn innermost(&self) -> &Self {
        match self {
            Self::InPart { source, .. } => source.innermost(),
            other => other,
        }
    }
}
