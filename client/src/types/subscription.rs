//! Subscriptions as plain data: [`Subscription`] with its
//! [`RetryPolicy`], [`DeadLetterPolicy`] and [`PushConfig`], where a new
//! one begins ([`StartPosition`]), and what
//! [`Client::create_subscription`](crate::Client::create_subscription) and
//! [`Client::update_subscription`](crate::Client::update_subscription) send
//! ([`SubscriptionConfig`], [`SubscriptionUpdate`]), with their wire
//! conversions.
//!
//! Nothing here talks to the broker; these are values and conversions only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tidings::v1;
use tidings::v1::start_position::Position;

use super::{deadline_seconds, wire_duration};

/// A subscription with its live figures, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The subscription's name.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// How long a delivery stays leased before it is delivered again.
    pub ack_deadline: Duration,
    /// Messages published but not yet acknowledged (including those in
    /// flight).
    pub backlog: u64,
    /// Messages currently leased to a stream, awaiting acknowledgement.
    pub in_flight: u64,
    /// Every message below this offset is acknowledged.
    pub ack_floor: u64,
    /// `Subscribe` streams currently open on the subscription.
    pub open_streams: u32,
    /// When the subscription was created, when the broker says.
    pub create_time: Option<SystemTime>,
    /// Its filter; empty for none.
    pub filter: String,
    /// How long redeliveries wait; `None` for not at all.
    pub retry_policy: Option<RetryPolicy>,
    /// Messages of one key are delivered in order, one at a time.
    pub enable_message_ordering: bool,
    /// Where messages that fail too often, or are rejected, go.
    pub dead_letter_policy: Option<DeadLetterPolicy>,
    /// Messages moved to the dead-letter topic and not redriven.
    pub dead_lettered: u64,
    /// Messages rejected while there was no dead-letter policy.
    pub rejected: u64,
    /// No message is delivered before its publish time plus this; zero
    /// for no delay.
    pub delivery_delay: Duration,
    /// Messages waiting for their delivery time (part of the backlog):
    /// those published with a delay whose time has not come, and with a
    /// delivery delay those published less than that long ago.
    pub delayed: u64,
    /// Set for a push subscription: the broker POSTs its messages to an
    /// HTTP endpoint, and nobody subscribes to it.
    pub push_config: Option<PushConfig>,
}

/// Where and how the broker pushes a subscription's messages: one `POST`
/// per message to `endpoint`, with a JSON body `{"subscription": NAME,
/// "message": ReceivedMessage}` and `headers`; a 2xx answer acknowledges
/// the message, anything else (or no answer within the ack deadline) is a
/// failed delivery, retried with the retry policy (1 s doubling to 60 s
/// when there is none) and dead-lettered by the dead-letter policy.
///
/// ```
/// use tidings_client::PushConfig;
///
/// let push = PushConfig::new("https://hooks.example/orders")
///     .header("authorization", "Bearer s3cret")
///     .max_outstanding(20);
/// assert_eq!(push.headers.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// An absolute `http://` or `https://` URL.
    pub endpoint: String,
    /// Headers sent with every POST (not `content-type`).
    pub headers: BTreeMap<String, String>,
    /// The most POSTs in flight at once, 1 to 1000; `None` for the
    /// broker's default of 100.
    pub max_outstanding: Option<u32>,
}

impl PushConfig {
    /// Pushes to `endpoint`, with no extra headers and the default
    /// concurrency.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: BTreeMap::new(),
            max_outstanding: None,
        }
    }

    /// Adds a header to every POST.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets how many POSTs may be in flight at once.
    pub fn max_outstanding(mut self, max: u32) -> Self {
        self.max_outstanding = Some(max);
        self
    }
}

impl From<PushConfig> for v1::PushConfig {
    fn from(push: PushConfig) -> Self {
        Self {
            endpoint: push.endpoint,
            headers: push.headers.into_iter().collect(),
            max_outstanding: push.max_outstanding.unwrap_or(0),
        }
    }
}

impl From<v1::PushConfig> for PushConfig {
    fn from(push: v1::PushConfig) -> Self {
        Self {
            endpoint: push.endpoint,
            headers: push.headers.into_iter().collect(),
            max_outstanding: (push.max_outstanding != 0).then_some(push.max_outstanding),
        }
    }
}

/// Where a subscription moves a message that failed
/// `max_delivery_attempts` deliveries, or that a subscriber rejected: a
/// copy with the provenance attributes (`tidings.source_topic`,
/// `tidings.source_subscription`, `tidings.source_offset`,
/// `tidings.delivery_attempts`, `tidings.dead_letter_reason`,
/// `tidings.last_error`) is published to `topic` and the message is
/// settled, in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// The dead-letter topic; it must exist and not be the subscription's
    /// own topic.
    pub topic: String,
    /// Failed deliveries before the move, 2 to 100.
    pub max_delivery_attempts: u32,
}

impl DeadLetterPolicy {
    /// Moves messages to `topic` after `max_delivery_attempts` failures.
    pub fn new(topic: impl Into<String>, max_delivery_attempts: u32) -> Self {
        Self {
            topic: topic.into(),
            max_delivery_attempts,
        }
    }
}

impl From<DeadLetterPolicy> for v1::DeadLetterPolicy {
    fn from(policy: DeadLetterPolicy) -> Self {
        Self {
            dead_letter_topic: policy.topic,
            max_delivery_attempts: policy.max_delivery_attempts,
        }
    }
}

/// How long a message waits before it is delivered again after a failed
/// delivery (a nack without a delay, an expired lease, a stream that ended
/// holding it): `minimum_backoff × 2^(n−1)` after the n-th failure, at most
/// `maximum_backoff`, plus up to 10 % jitter. Each is 0 to 600 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub minimum_backoff: Duration,
    /// The longest wait.
    pub maximum_backoff: Duration,
}

impl RetryPolicy {
    /// A policy from its first and longest wait.
    pub fn new(minimum_backoff: Duration, maximum_backoff: Duration) -> Self {
        Self {
            minimum_backoff,
            maximum_backoff,
        }
    }
}

impl From<RetryPolicy> for v1::RetryPolicy {
    fn from(policy: RetryPolicy) -> Self {
        let wire = |d: Duration| prost_types::Duration::try_from(d).ok();
        Self {
            minimum_backoff: wire(policy.minimum_backoff),
            maximum_backoff: wire(policy.maximum_backoff),
        }
    }
}

impl From<v1::RetryPolicy> for RetryPolicy {
    /// As the broker reports it; what it leaves out (it never does) or
    /// cannot be a duration reads as zero.
    fn from(policy: v1::RetryPolicy) -> Self {
        let local = |d: Option<prost_types::Duration>| {
            d.and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default()
        };
        Self {
            minimum_backoff: local(policy.minimum_backoff),
            maximum_backoff: local(policy.maximum_backoff),
        }
    }
}

impl From<v1::Subscription> for Subscription {
    fn from(sub: v1::Subscription) -> Self {
        Self {
            name: sub.name,
            topic: sub.topic,
            ack_deadline: Duration::from_secs(sub.ack_deadline_seconds.into()),
            backlog: sub.backlog,
            in_flight: sub.in_flight,
            ack_floor: sub.ack_floor,
            open_streams: sub.open_streams,
            create_time: sub.create_time.and_then(|t| SystemTime::try_from(t).ok()),
            filter: sub.filter,
            retry_policy: sub.retry_policy.map(RetryPolicy::from),
            enable_message_ordering: sub.enable_message_ordering,
            dead_letter_policy: sub.dead_letter_policy.map(|policy| DeadLetterPolicy {
                topic: policy.dead_letter_topic,
                max_delivery_attempts: policy.max_delivery_attempts,
            }),
            dead_lettered: sub.dead_lettered,
            rejected: sub.rejected,
            delivery_delay: sub
                .delivery_delay
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default(),
            delayed: sub.delayed,
            push_config: sub.push_config.map(PushConfig::from),
        }
    }
}

/// Where a *new* subscription begins. It has no effect on a subscription
/// that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// At the earliest retained message (the default), so that a consumer
    /// deployed after its publisher misses nothing.
    #[default]
    Earliest,
    /// After the last message published so far: only newer messages.
    Latest,
    /// At this offset (at most the topic's `next_offset`).
    Offset(u64),
    /// At the first message published at or after this time.
    Time(SystemTime),
}

impl From<StartPosition> for v1::StartPosition {
    fn from(start: StartPosition) -> Self {
        let position = match start {
            StartPosition::Earliest => Position::Earliest(true),
            StartPosition::Latest => Position::Latest(true),
            StartPosition::Offset(offset) => Position::Offset(offset),
            StartPosition::Time(time) => Position::Time(time.into()),
        };
        Self {
            position: Some(position),
        }
    }
}

/// What [`Client::create_subscription`](crate::Client::create_subscription)
/// creates.
///
/// ```
/// use std::time::Duration;
/// use tidings_client::{StartPosition, SubscriptionConfig};
///
/// let config = SubscriptionConfig::new("inventory", "order.placed")
///     .ack_deadline(Duration::from_secs(60))
///     .start(StartPosition::Latest);
/// assert_eq!(config.topic, "order.placed");
/// ```
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// The new subscription's name.
    pub name: String,
    /// The topic to subscribe to; it must exist.
    pub topic: String,
    /// The ack deadline, in whole seconds (rounded up) from 1 s to 600 s;
    /// `None` for the broker's default of 30 s.
    pub ack_deadline: Option<Duration>,
    /// Where the subscription begins; the earliest message by default.
    pub start: StartPosition,
    /// Deliver only messages whose attributes match this filter, in
    /// Pub/Sub's syntax (`attributes.kind = "order"`); empty for all.
    pub filter: String,
    /// How long redeliveries wait; `None` for not at all.
    pub retry_policy: Option<RetryPolicy>,
    /// Deliver the messages of each non-empty key in offset order, one at
    /// a time across all streams; fixed at creation.
    pub enable_message_ordering: bool,
    /// Where messages that keep failing go; `None` for nowhere.
    pub dead_letter_policy: Option<DeadLetterPolicy>,
    /// No message is delivered before its publish time plus this (at most
    /// 30 days); zero for no delay.
    pub delivery_delay: Duration,
    /// Push the messages to an HTTP endpoint; `None` for consumers to
    /// subscribe.
    pub push_config: Option<PushConfig>,
}

impl SubscriptionConfig {
    /// A subscription `name` on `topic`, with the default ack deadline,
    /// starting at the earliest message.
    pub fn new(name: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            ack_deadline: None,
            start: StartPosition::Earliest,
            filter: String::new(),
            retry_policy: None,
            enable_message_ordering: false,
            dead_letter_policy: None,
            delivery_delay: Duration::ZERO,
            push_config: None,
        }
    }

    /// Sets the ack deadline (whole seconds, rounded up; 1 s to 600 s).
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = Some(deadline);
        self
    }

    /// Sets where the subscription begins.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets the filter: only messages whose attributes match it are
    /// delivered, the others are acknowledged without delivery.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = filter.into();
        self
    }

    /// Sets the retry policy: failed deliveries wait before they come
    /// again, longer after each failure.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// Delivers the messages of each non-empty key in offset order, one at
    /// a time across all streams: the next message of a key comes once the
    /// previous one is acknowledged. A failure holds back only its key.
    pub fn enable_message_ordering(mut self, ordered: bool) -> Self {
        self.enable_message_ordering = ordered;
        self
    }

    /// Sets the dead-letter policy: a message that fails
    /// `max_delivery_attempts` deliveries, or is rejected, is moved to its
    /// topic.
    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.dead_letter_policy = Some(policy);
        self
    }

    /// Delays every delivery: no message goes before its publish time plus
    /// `delay`.
    pub fn delivery_delay(mut self, delay: Duration) -> Self {
        self.delivery_delay = delay;
        self
    }

    /// Makes it a push subscription: the broker POSTs each message to the
    /// endpoint.
    pub fn push_config(mut self, push: PushConfig) -> Self {
        self.push_config = Some(push);
        self
    }
}

/// What [`Client::update_subscription`](crate::Client::update_subscription)
/// changes: each setting that is `Some`.
///
/// ```
/// use tidings_client::SubscriptionUpdate;
///
/// let update = SubscriptionUpdate::default().filter(r#"attributes.region = "eu""#);
/// assert!(update.ack_deadline.is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct SubscriptionUpdate {
    /// A new ack deadline, in whole seconds (rounded up) from 1 s to 600 s.
    pub ack_deadline: Option<Duration>,
    /// A new filter; empty removes it.
    pub filter: Option<String>,
    /// A new retry policy; `Some(None)` removes it.
    pub retry_policy: Option<Option<RetryPolicy>>,
    /// A new dead-letter policy; `Some(None)` removes it.
    pub dead_letter_policy: Option<Option<DeadLetterPolicy>>,
    /// A new delivery delay; zero removes it.
    pub delivery_delay: Option<Duration>,
    /// A new push configuration; `Some(None)` removes it, making it a
    /// subscription consumers subscribe to.
    pub push_config: Option<Option<PushConfig>>,
}

impl SubscriptionUpdate {
    /// Changes the ack deadline of leases granted from now on.
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = Some(deadline);
        self
    }

    /// Changes the filter (empty removes it); it applies to every message
    /// not yet delivered.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Changes the retry policy (`None` removes it); it applies to
    /// failures from now on.
    pub fn retry_policy(mut self, policy: Option<RetryPolicy>) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// Changes the dead-letter policy (`None` removes it).
    pub fn dead_letter_policy(mut self, policy: Option<DeadLetterPolicy>) -> Self {
        self.dead_letter_policy = Some(policy);
        self
    }

    /// Changes the delivery delay (zero removes it); it applies to every
    /// message not yet delivered.
    pub fn delivery_delay(mut self, delay: Duration) -> Self {
        self.delivery_delay = Some(delay);
        self
    }

    /// Changes the push configuration (`None` removes it); the broker's
    /// pusher follows at once.
    pub fn push_config(mut self, push: Option<PushConfig>) -> Self {
        self.push_config = Some(push);
        self
    }

    /// The request that makes this change to subscription `name`.
    pub(crate) fn into_request(self, name: &str) -> v1::UpdateSubscriptionRequest {
        let mut paths = Vec::new();
        let mut subscription = v1::Subscription {
            name: name.to_owned(),
            ..v1::Subscription::default()
        };
        if let Some(deadline) = self.ack_deadline {
            subscription.ack_deadline_seconds = deadline_seconds(deadline);
            paths.push("ack_deadline_seconds".to_owned());
        }
        if let Some(filter) = self.filter {
            subscription.filter = filter;
            paths.push("filter".to_owned());
        }
        if let Some(policy) = self.retry_policy {
            subscription.retry_policy = policy.map(Into::into);
            paths.push("retry_policy".to_owned());
        }
        if let Some(policy) = self.dead_letter_policy {
            subscription.dead_letter_policy = policy.map(Into::into);
            paths.push("dead_letter_policy".to_owned());
        }
        if let Some(delay) = self.delivery_delay {
            subscription.delivery_delay = Some(wire_duration(delay));
            paths.push("delivery_delay".to_owned());
        }
        if let Some(push) = self.push_config {
            subscription.push_config = push.map(Into::into);
            paths.push("push_config".to_owned());
        }
        v1::UpdateSubscriptionRequest {
            subscription: Some(subscription),
            update_mask: Some(prost_types::FieldMask { paths }),
        }
    }
}

impl From<SubscriptionConfig> for v1::CreateSubscriptionRequest {
    fn from(config: SubscriptionConfig) -> Self {
        Self {
            name: config.name,
            topic: config.topic,
            ack_deadline_seconds: config.ack_deadline.map_or(0, deadline_seconds),
            start: Some(config.start.into()),
            filter: config.filter,
            retry_policy: config.retry_policy.map(Into::into),
            enable_message_ordering: config.enable_message_ordering,
            dead_letter_policy: config.dead_letter_policy.map(Into::into),
            delivery_delay: (!config.delivery_delay.is_zero())
                .then(|| wire_duration(config.delivery_delay)),
            push_config: config.push_config.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_config_becomes_a_request() {
        let request = v1::CreateSubscriptionRequest::from(
            SubscriptionConfig::new("inventory", "order.placed")
                .ack_deadline(Duration::from_secs(45))
                .start(StartPosition::Offset(7)),
        );
        assert_eq!(request.name, "inventory");
        assert_eq!(request.topic, "order.placed");
        assert_eq!(request.ack_deadline_seconds, 45);
        assert_eq!(
            request.start.and_then(|s| s.position),
            Some(Position::Offset(7))
        );
        let default = v1::CreateSubscriptionRequest::from(SubscriptionConfig::new("a", "b"));
        assert_eq!(default.ack_deadline_seconds, 0);
        assert_eq!(
            default.start.and_then(|s| s.position),
            Some(Position::Earliest(true))
        );
    }

    #[test]
    fn start_time_converts_to_a_timestamp() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let start = v1::StartPosition::from(StartPosition::Time(time));
        let Some(Position::Time(timestamp)) = start.position else {
            panic!("expected a time position, got {start:?}");
        };
        assert_eq!((timestamp.seconds, timestamp.nanos), (1_700_000_000, 5));
    }

    #[test]
    fn subscription_converts_from_the_wire() {
        let sub = Subscription::from(v1::Subscription {
            name: "s".into(),
            topic: "t".into(),
            ack_deadline_seconds: 10,
            backlog: 3,
            in_flight: 1,
            ack_floor: 2,
            create_time: None,
            open_streams: 1,
            filter: "attributes:a".into(),
            retry_policy: Some(v1::RetryPolicy {
                minimum_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                maximum_backoff: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }),

            enable_message_ordering: true,
            dead_letter_policy: Some(v1::DeadLetterPolicy {
                dead_letter_topic: "t.dead".into(),
                max_delivery_attempts: 4,
            }),
            dead_lettered: 2,
            rejected: 1,
            delivery_delay: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            delayed: 7,
            push_config: Some(v1::PushConfig {
                endpoint: "http://h/x".into(),
                headers: [("a".to_owned(), "b".to_owned())].into(),
                max_outstanding: 0,
            }),
        });
        assert_eq!(
            sub.push_config,
            Some(PushConfig::new("http://h/x").header("a", "b"))
        );
        assert_eq!(sub.ack_deadline, Duration::from_secs(10));
        assert_eq!(
            (sub.delivery_delay, sub.delayed),
            (Duration::from_secs(30), 7)
        );
        assert_eq!(sub.filter, "attributes:a");
        assert!(sub.enable_message_ordering);
        assert_eq!(
            sub.dead_letter_policy,
            Some(DeadLetterPolicy::new("t.dead", 4))
        );
        assert_eq!((sub.dead_lettered, sub.rejected), (2, 1));
        assert_eq!(
            sub.retry_policy,
            Some(RetryPolicy::new(
                Duration::from_millis(1500),
                Duration::from_secs(60)
            ))
        );
        assert_eq!((sub.backlog, sub.in_flight, sub.ack_floor), (3, 1, 2));
        assert_eq!(sub.create_time, None);
    }
}
