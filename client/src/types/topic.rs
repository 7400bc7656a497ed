//! Topics as plain data: [`Topic`], its [`Retention`] policy and
//! [`StorageClass`], and what
//! [`Client::create_topic_with`](crate::Client::create_topic_with) and
//! [`Client::update_topic`](crate::Client::update_topic) send
//! ([`TopicConfig`], [`TopicUpdate`]), with their wire conversions.
//!
//! Nothing here talks to the broker; these are values and conversions only.

use std::time::{Duration, SystemTime};

use tidings::v1;

/// A topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The topic's name, for example `order.placed`.
    pub name: String,
    /// The earliest offset that may still hold a message (messages below it
    /// were deleted); `next_offset` when the topic holds none. It follows
    /// the retention policy within seconds.
    pub first_offset: u64,
    /// The offset the next published message will get. Offsets are never
    /// reused.
    pub next_offset: u64,
    /// When the topic was created, when the broker says.
    pub create_time: Option<SystemTime>,
    /// What the topic keeps. A broker that reports no policy (one older
    /// than retention) reads as [`Retention::unlimited`].
    pub retention: Retention,
    /// The messages the topic holds: the offsets from `first_offset` to
    /// `next_offset`.
    pub retained_messages: u64,
    /// Their size as stored: payload, key, attributes and a few dozen
    /// bytes of framing each, before the broker's storage compresses them.
    pub retained_bytes: u64,
    /// How long published message ids are remembered
    /// ([`Message::id`](crate::Message::id)); zero when they are not (and
    /// from a broker older than deduplication).
    pub dedup_window: Duration,
    /// Where the topic keeps its messages ([`StorageClass::Disk`] from a
    /// broker older than memory topics).
    pub storage: StorageClass,
}

/// Where a topic keeps its messages; chosen when it is created
/// ([`TopicConfig::storage`]) and fixed after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StorageClass {
    /// On the broker's disk: messages survive restarts and crashes (and a
    /// power loss, as far as the broker's sync policy promises).
    #[default]
    Disk,
    /// In the broker's memory only: publishing writes no message data to
    /// disk, and a restart or crash of the broker loses every message of
    /// the topic. The topic, its subscriptions and their acknowledgements
    /// survive, and offsets are never reused. The topic keeps at most its
    /// [`Retention::max_bytes`] (64 MiB when unset): each publish beyond it
    /// drops the oldest messages at once. Message ids are remembered
    /// within the dedup window while the broker runs, not across restarts.
    Memory,
}

impl StorageClass {
    /// Its name in lower case: `disk` or `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Disk => "disk",
            StorageClass::Memory => "memory",
        }
    }
}

impl std::fmt::Display for StorageClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<StorageClass> for v1::StorageClass {
    fn from(storage: StorageClass) -> Self {
        match storage {
            StorageClass::Disk => v1::StorageClass::Disk,
            StorageClass::Memory => v1::StorageClass::Memory,
        }
    }
}

impl From<v1::StorageClass> for StorageClass {
    /// Unspecified (from a broker older than memory topics) is disk.
    fn from(storage: v1::StorageClass) -> Self {
        match storage {
            v1::StorageClass::Memory => StorageClass::Memory,
            v1::StorageClass::Disk | v1::StorageClass::Unspecified => StorageClass::Disk,
        }
    }
}

impl From<v1::Topic> for Topic {
    fn from(topic: v1::Topic) -> Self {
        // A number this client does not know reads as unspecified.
        let storage = topic.storage().into();
        Self {
            name: topic.name,
            first_offset: topic.first_offset,
            next_offset: topic.next_offset,
            create_time: topic.create_time.and_then(|t| SystemTime::try_from(t).ok()),
            retention: topic.retention.map(Retention::from).unwrap_or_default(),
            retained_messages: topic.retained_messages,
            retained_bytes: topic.retained_bytes,
            dedup_window: topic
                .dedup_window
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default(),
            storage,
        }
    }
}

/// How long a topic keeps its messages, acknowledged or not. Each limit
/// that is set deletes the oldest messages beyond it; the default,
/// [`Retention::unlimited`], keeps everything. Deleted messages are never
/// delivered or read again.
///
/// ```
/// use std::time::Duration;
/// use tidings_client::Retention;
///
/// let retention = Retention::unlimited()
///     .max_age(Duration::from_secs(24 * 3600))
///     .max_messages(1_000_000);
/// assert!(!retention.discard_acked);
/// assert_eq!(Retention::default(), Retention::unlimited());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Messages older than this (since they were published) are deleted,
    /// and never delivered or read even before they are. At least 1 s, at
    /// most 100 years; `None` (or zero) for no age limit.
    pub max_age: Option<Duration>,
    /// At most this many messages are kept: the oldest beyond it go.
    /// `None` (or zero) for no limit.
    pub max_messages: Option<u64>,
    /// At most this many bytes of messages (as [`Topic::retained_bytes`]
    /// counts them) are kept: the oldest beyond it go. `None` (or zero)
    /// for no limit.
    pub max_bytes: Option<u64>,
    /// A message is deleted once every subscription of the topic has
    /// acknowledged it. Nothing is deleted while the topic has no
    /// subscription, so a consumer deployed later misses nothing.
    pub discard_acked: bool,
}

impl Retention {
    /// Keeps every message: no age limit, no count limit, acknowledged
    /// messages kept.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Sets the age limit (zero for none).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age).filter(|age| !age.is_zero());
        self
    }

    /// Sets the count limit (zero for none).
    pub fn max_messages(mut self, max_messages: u64) -> Self {
        self.max_messages = Some(max_messages).filter(|&n| n != 0);
        self
    }

    /// Sets the size limit in bytes (zero for none).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes).filter(|&n| n != 0);
        self
    }

    /// Deletes (or keeps) messages every subscription has acknowledged.
    pub fn discard_acked(mut self, discard_acked: bool) -> Self {
        self.discard_acked = discard_acked;
        self
    }

    /// Whether the policy keeps every message.
    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none_or(|age| age.is_zero())
            && self.max_messages.is_none_or(|n| n == 0)
            && self.max_bytes.is_none_or(|n| n == 0)
            && !self.discard_acked
    }
}

impl From<Retention> for v1::RetentionPolicy {
    /// On the wire, no limit is an unset `max_age` and a `max_messages` of
    /// 0. An age too long for the wire is sent as the longest one, for the
    /// broker to refuse.
    fn from(retention: Retention) -> Self {
        Self {
            max_age: wire_age(retention.max_age),
            max_messages: retention.max_messages.unwrap_or(0),
            max_bytes: retention.max_bytes.unwrap_or(0),
            discard_acked: retention.discard_acked,
        }
    }
}

impl From<v1::RetentionPolicy> for Retention {
    /// As the broker reports it: an unset or zero field is no limit, and so
    /// is an age that cannot be a duration (negative; the broker never
    /// sends one).
    fn from(policy: v1::RetentionPolicy) -> Self {
        Self {
            max_age: policy
                .max_age
                .and_then(|age| Duration::try_from(age).ok())
                .filter(|age| !age.is_zero()),
            max_messages: Some(policy.max_messages).filter(|&n| n != 0),
            max_bytes: Some(policy.max_bytes).filter(|&n| n != 0),
            discard_acked: policy.discard_acked,
        }
    }
}

/// An age limit as the wire carries it: unset for none (or zero), and
/// saturated rather than dropped when it is too long for the wire, so
/// that the broker refuses it instead of keeping everything.
fn wire_age(age: Option<Duration>) -> Option<prost_types::Duration> {
    let age = age.filter(|age| !age.is_zero())?;
    Some(wire_duration(age))
}

/// What [`Client::create_topic_with`](crate::Client::create_topic_with)
/// creates.
///
/// ```
/// use std::time::Duration;
/// use tidings_client::{Retention, TopicConfig};
///
/// // Keeps a day of messages, at most a million.
/// let config = TopicConfig::new("order.placed").retention(
///     Retention::unlimited()
///         .max_age(Duration::from_secs(24 * 3600))
///         .max_messages(1_000_000),
/// );
/// assert_eq!(config.name, "order.placed");
/// // Without a policy, the broker's default applies (7 days unless set).
/// assert_eq!(TopicConfig::new("audit").retention, None);
///
/// // Kept in the broker's memory, at most 16 MiB of it.
/// use tidings_client::StorageClass;
/// let prices = TopicConfig::new("prices")
///     .storage(StorageClass::Memory)
///     .retention(Retention::unlimited().max_bytes(16 << 20));
/// assert_eq!(prices.storage, StorageClass::Memory);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// The new topic's name: 1 to 255 ASCII letters, digits, `.`, `_` and
    /// `-`, starting with a letter or digit.
    pub name: String,
    /// What the topic keeps; `None` for the broker's default (its
    /// `--retention-max-age`, 7 days unless set). A policy given is taken
    /// as it is: [`Retention::unlimited`] keeps everything.
    pub retention: Option<Retention>,
    /// How long published message ids are remembered; `None` for the
    /// broker's default (2 minutes), zero for not at all, at most 7 days.
    pub dedup_window: Option<Duration>,
    /// Where the topic keeps its messages; [`StorageClass::Disk`] unless
    /// set. It cannot change later.
    pub storage: StorageClass,
}

impl TopicConfig {
    /// A topic `name` with the broker's defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            retention: None,
            dedup_window: None,
            storage: StorageClass::Disk,
        }
    }

    /// Sets where the topic keeps its messages.
    pub fn storage(mut self, storage: StorageClass) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the retention policy, instead of the broker's default.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Sets how long message ids are remembered (zero: not at all).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }
}

impl From<TopicConfig> for v1::CreateTopicRequest {
    fn from(config: TopicConfig) -> Self {
        Self {
            name: config.name,
            retention: config.retention.map(Into::into),
            dedup_window: config.dedup_window.map(wire_duration),
            storage: v1::StorageClass::from(config.storage).into(),
        }
    }
}

use super::wire_duration;

/// What [`Client::update_topic`](crate::Client::update_topic) changes:
/// each setting that is `Some`, and nothing else.
///
/// [`TopicUpdate::retention`] replaces the whole policy; the other
/// settings change one limit and keep the rest. Given with a whole policy,
/// they change that policy before it is sent.
///
/// ```
/// use tidings_client::TopicUpdate;
///
/// // Keeps at most 5000 messages; the age limit stays as it is.
/// let update = TopicUpdate::default().max_messages(Some(5000));
/// assert!(update.max_age.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicUpdate {
    /// A whole new retention policy.
    pub retention: Option<Retention>,
    /// A new age limit; `Some(None)` removes it.
    pub max_age: Option<Option<Duration>>,
    /// A new count limit; `Some(None)` removes it.
    pub max_messages: Option<Option<u64>>,
    /// A new size limit in bytes; `Some(None)` removes it.
    pub max_bytes: Option<Option<u64>>,
    /// Whether to delete messages every subscription has acknowledged.
    pub discard_acked: Option<bool>,
    /// A new dedup window; zero turns deduplication off.
    pub dedup_window: Option<Duration>,
}

impl TopicUpdate {
    /// Replaces the whole retention policy ([`Retention::unlimited`] keeps
    /// everything from now on).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Changes the age limit (`None` or zero removes it); the other limits
    /// stay.
    pub fn max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Changes the count limit (`None` or zero removes it); the other
    /// limits stay.
    pub fn max_messages(mut self, max_messages: Option<u64>) -> Self {
        self.max_messages = Some(max_messages);
        self
    }

    /// Changes the size limit in bytes (`None` or zero removes it); the
    /// other limits stay.
    pub fn max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Changes whether messages every subscription has acknowledged are
    /// deleted; the limits stay.
    pub fn discard_acked(mut self, discard_acked: bool) -> Self {
        self.discard_acked = Some(discard_acked);
        self
    }

    /// Changes how long message ids are remembered (zero: not at all).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// The request that makes this change to topic `name`: the whole
    /// policy under the mask path `retention` when one is given, else each
    /// sub-field given under its own path.
    pub(crate) fn into_request(self, name: &str) -> v1::UpdateTopicRequest {
        let mut paths = Vec::new();
        let mut retention = self.retention.unwrap_or_default();
        if let Some(max_age) = self.max_age {
            retention.max_age = max_age;
            paths.push("retention.max_age");
        }
        if let Some(max_messages) = self.max_messages {
            retention.max_messages = max_messages;
            paths.push("retention.max_messages");
        }
        if let Some(max_bytes) = self.max_bytes {
            retention.max_bytes = max_bytes;
            paths.push("retention.max_bytes");
        }
        if let Some(discard_acked) = self.discard_acked {
            retention.discard_acked = discard_acked;
            paths.push("retention.discard_acked");
        }
        if self.retention.is_some() {
            paths = vec!["retention"];
        }
        if self.dedup_window.is_some() {
            paths.push("dedup_window");
        }
        let topic = v1::Topic {
            name: name.to_owned(),
            retention: Some(retention.into()),
            dedup_window: self.dedup_window.map(wire_duration),
            ..v1::Topic::default()
        };
        v1::UpdateTopicRequest {
            topic: Some(topic),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.into_iter().map(str::to_owned).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn wire_duration(seconds: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos: 0 })
    }

    #[test]
    fn no_limit_is_unset_or_zero_on_the_wire() {
        let wire = v1::RetentionPolicy::from(Retention::unlimited());
        assert_eq!(wire, v1::RetentionPolicy::default());
        let zeroes = Retention {
            max_age: Some(Duration::ZERO),
            max_messages: Some(0),
            max_bytes: Some(0),
            discard_acked: false,
        };
        assert_eq!(
            v1::RetentionPolicy::from(zeroes),
            v1::RetentionPolicy::default()
        );
        assert!(zeroes.is_unlimited());
        assert_eq!(
            Retention::from(v1::RetentionPolicy {
                max_age: wire_duration(0),
                ..v1::RetentionPolicy::default()
            }),
            Retention::unlimited()
        );
    }

    #[test]
    fn limits_convert_both_ways() {
        let retention = Retention::unlimited()
            .max_age(DAY)
            .max_messages(10)
            .max_bytes(1 << 20)
            .discard_acked(true);
        let wire = v1::RetentionPolicy::from(retention);
        assert_eq!(wire.max_age, wire_duration(86_400));
        assert_eq!((wire.max_messages, wire.discard_acked), (10, true));
        assert_eq!(wire.max_bytes, 1 << 20);
        assert_eq!(Retention::from(wire), retention);
        assert!(!retention.is_unlimited());
    }

    #[test]
    fn builders_take_zero_as_no_limit() {
        let retention = Retention::unlimited()
            .max_age(Duration::ZERO)
            .max_messages(0)
            .max_bytes(0);
        assert_eq!(retention, Retention::unlimited());
    }

    #[test]
    fn an_age_too_long_for_the_wire_is_saturated_not_dropped() {
        let wire = v1::RetentionPolicy::from(Retention::unlimited().max_age(Duration::MAX));
        assert_eq!(wire.max_age.map(|age| age.seconds), Some(i64::MAX));
    }

    #[test]
    fn a_negative_age_from_the_wire_is_no_limit() {
        let retention = Retention::from(v1::RetentionPolicy {
            max_age: wire_duration(-5),
            ..v1::RetentionPolicy::default()
        });
        assert_eq!(retention.max_age, None);
    }

    #[test]
    fn topic_reads_retention_and_retained_messages() {
        let topic = Topic::from(v1::Topic {
            name: "orders".into(),
            next_offset: 12,
            first_offset: 2,
            create_time: None,
            retention: Some(v1::RetentionPolicy {
                max_age: wire_duration(3600),
                discard_acked: true,
                ..v1::RetentionPolicy::default()
            }),
            retained_messages: 10,
            retained_bytes: 2560,
            dedup_window: wire_duration(600),
            storage: v1::StorageClass::Memory.into(),
        });
        assert_eq!(topic.storage, StorageClass::Memory);
        assert_eq!((topic.retained_messages, topic.retained_bytes), (10, 2560));
        assert_eq!(topic.dedup_window, Duration::from_secs(600));
        assert_eq!(
            topic.retention,
            Retention::unlimited()
                .max_age(Duration::from_secs(3600))
                .discard_acked(true)
        );
        let old_broker = Topic::from(v1::Topic::default());
        assert_eq!(old_broker.retention, Retention::unlimited());
        assert_eq!(
            old_broker.storage,
            StorageClass::Disk,
            "unspecified is disk"
        );
    }

    #[test]
    fn storage_classes_convert_both_ways_and_unknown_numbers_read_as_disk() {
        for storage in [StorageClass::Disk, StorageClass::Memory] {
            let request = v1::CreateTopicRequest::from(TopicConfig::new("t").storage(storage));
            assert_eq!(request.storage(), v1::StorageClass::from(storage));
            assert_eq!(StorageClass::from(request.storage()), storage);
        }
        let request = v1::CreateTopicRequest::from(TopicConfig::new("t"));
        assert_eq!(
            request.storage(),
            v1::StorageClass::Disk,
            "disk said outright"
        );
        let newer = Topic::from(v1::Topic {
            storage: 99,
            ..v1::Topic::default()
        });
        assert_eq!(newer.storage, StorageClass::Disk);
        assert_eq!(StorageClass::Memory.to_string(), "memory");
    }

    #[test]
    fn topic_config_without_retention_leaves_the_broker_default() {
        let request = v1::CreateTopicRequest::from(TopicConfig::new("orders"));
        assert_eq!(request.name, "orders");
        assert_eq!(request.retention, None);
        let keep_all = v1::CreateTopicRequest::from(
            TopicConfig::new("audit").retention(Retention::unlimited()),
        );
        assert_eq!(keep_all.retention, Some(v1::RetentionPolicy::default()));
    }

    fn paths(request: &v1::UpdateTopicRequest) -> Vec<&str> {
        request
            .update_mask
            .as_ref()
            .map(|mask| mask.paths.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn policy(request: &v1::UpdateTopicRequest) -> v1::RetentionPolicy {
        request
            .topic
            .as_ref()
            .and_then(|topic| topic.retention)
            .unwrap_or_default()
    }

    #[test]
    fn an_update_masks_only_what_it_sets() {
        let request = TopicUpdate::default()
            .max_messages(Some(5))
            .into_request("orders");
        assert_eq!(paths(&request), ["retention.max_messages"]);
        assert_eq!(
            request.topic.as_ref().map(|t| t.name.as_str()),
            Some("orders")
        );
        assert_eq!(policy(&request).max_messages, 5);

        let request = TopicUpdate::default()
            .max_age(Some(DAY))
            .max_messages(None)
            .discard_acked(false)
            .into_request("orders");
        assert_eq!(
            paths(&request),
            [
                "retention.max_age",
                "retention.max_messages",
                "retention.discard_acked"
            ]
        );
        assert_eq!(policy(&request).max_age, wire_duration(86_400));
        assert_eq!(policy(&request).max_messages, 0);

        let nothing = TopicUpdate::default().into_request("orders");
        assert!(paths(&nothing).is_empty());
    }

    #[test]
    fn a_whole_policy_is_one_path_with_the_single_settings_applied() {
        let request = TopicUpdate::default()
            .retention(Retention::unlimited().max_age(DAY))
            .max_messages(Some(7))
            .into_request("orders");
        assert_eq!(paths(&request), ["retention"]);
        let sent = policy(&request);
        assert_eq!(sent.max_age, wire_duration(86_400));
        assert_eq!(sent.max_messages, 7);
        assert!(!sent.discard_acked);
    }
}
