//! Plain data of the client API: [`Message`] and [`Published`] here; in
//! `subscription.rs` [`Subscription`] with its policies, [`PushConfig`],
//! [`StartPosition`], [`SubscriptionConfig`] and [`SubscriptionUpdate`];
//! in `topic.rs` [`Topic`] with its [`Retention`] and [`StorageClass`],
//! [`TopicConfig`] and [`TopicUpdate`]; all with their conversions from and
//! to the generated wire types.
//!
//! Nothing here talks to the broker; these are values and conversions only.

mod subscription;
mod topic;

pub use subscription::{
    DeadLetterPolicy, PushConfig, RetryPolicy, StartPosition, Subscription, SubscriptionConfig,
    SubscriptionUpdate,
};
pub use topic::{Retention, StorageClass, Topic, TopicConfig, TopicUpdate};

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tidings::v1;

/// A duration as the whole seconds the wire API takes: rounded up, so that
/// a short non-zero deadline never becomes 0 (which means "the default" or
/// "give the lease up"), and saturating rather than wrapping.
pub(crate) fn deadline_seconds(duration: Duration) -> u32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// A duration for the wire; one too long for it is sent as the longest,
/// which the broker refuses by name.
pub(crate) fn wire_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A message to publish.
///
/// ```
/// use tidings_client::Message;
///
/// let message = Message::new(r#"{"order":42}"#)
///     .with_key("order-42")
///     .with_attribute("content-type", "application/json");
/// assert_eq!(message.key, "order-42");
/// let plain: Message = "hello".into();
/// assert_eq!(&plain.payload[..], b"hello");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body: any bytes.
    pub payload: Bytes,
    /// An optional key (for example an order id), delivered with the
    /// message.
    pub key: String,
    /// Optional string attributes, delivered with the message. Names must
    /// not be empty, and names starting with `tidings.` are the broker's.
    pub attributes: HashMap<String, String>,
    /// An optional idempotency key, at most 256 bytes: while the topic
    /// remembers it (its dedup window, 2 minutes unless set), a message
    /// with an id that was stored already is not stored again, and its
    /// offset is the original's. Give every message a unique id (an order
    /// id with the event's name, say) and a publish repeated after a lost
    /// answer stores nothing twice.
    pub id: String,
    /// Deliver on no subscription before this long after the broker stores
    /// it (at most 30 days).
    pub deliver_after: Option<Duration>,
    /// Deliver on no subscription before this time (at most 30 days
    /// ahead; a time passed means at once). Not with `deliver_after`.
    pub deliver_at: Option<SystemTime>,
}

impl Message {
    /// A message with this payload, no key and no attributes.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Adds (or replaces) an attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the idempotency key (see [`Message::id`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Delays its delivery: no subscription gets it before `delay` after
    /// the broker stores it.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.deliver_after = Some(delay);
        self.deliver_at = None;
        self
    }

    /// Delays its delivery until `time`.
    pub fn deliver_at(mut self, time: SystemTime) -> Self {
        self.deliver_at = Some(time);
        self.deliver_after = None;
        self
    }
}

/// What became of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its offset in the topic; for a duplicate, the original's.
    pub offset: u64,
    /// Its id was stored already within the topic's dedup window, so it
    /// was not stored again.
    pub duplicate: bool,
}

impl From<&'static str> for Message {
    fn from(payload: &'static str) -> Self {
        Self::new(payload)
    }
}

impl From<String> for Message {
    fn from(payload: String) -> Self {
        Self::new(payload)
    }
}

impl From<Vec<u8>> for Message {
    fn from(payload: Vec<u8>) -> Self {
        Self::new(payload)
    }
}

impl From<Bytes> for Message {
    fn from(payload: Bytes) -> Self {
        Self::new(payload)
    }
}

impl From<Message> for v1::PublishMessage {
    fn from(message: Message) -> Self {
        Self {
            payload: message.payload,
            key: message.key,
            attributes: message.attributes,
            id: message.id,
            deliver_after: message.deliver_after.map(wire_duration),
            deliver_at: message.deliver_at.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_seconds() {
        assert_eq!(deadline_seconds(Duration::ZERO), 0);
        assert_eq!(deadline_seconds(Duration::from_millis(1)), 1);
        assert_eq!(deadline_seconds(Duration::from_secs(30)), 30);
        assert_eq!(deadline_seconds(Duration::from_millis(30_001)), 31);
        assert_eq!(deadline_seconds(Duration::MAX), u32::MAX);
    }

    #[test]
    fn message_builders_and_conversions() {
        let message = Message::new(vec![1u8, 2])
            .with_key("k")
            .with_attribute("a", "1");
        let wire = v1::PublishMessage::from(message.clone());
        assert_eq!(&wire.payload[..], [1, 2]);
        assert_eq!(wire.key, "k");
        assert_eq!(wire.attributes.get("a").map(String::as_str), Some("1"));
        assert_eq!(Message::from(String::from("x")).payload, Bytes::from("x"));
        assert_eq!(Message::from(Bytes::from("y")).payload, Bytes::from("y"));
    }
}
