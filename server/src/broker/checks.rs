//! Checks and small helpers of the [`Broker`](super::Broker) calls:
//! publish batches and durations against their limits, and listing a page
//! of names. Pure functions; no state, no I/O.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::topic::Topic;
use super::{
    BrokerError, BrokerResult, DeadLetterPolicy, MAX_ACK_DEADLINE, MAX_BACKOFF, MAX_DEDUP_WINDOW,
    MAX_DELIVERY_DELAY, MAX_MESSAGE_ID_BYTES, MAX_PULL_MESSAGES, MAX_PULL_WAIT,
    MAX_PUSH_OUTSTANDING, Page, PushConfig, Retention, RetryPolicy,
};
use crate::names::TopicName;
use crate::storage::{NewMessage, StoreError};

/// Attribute names with this prefix are the broker's own (the provenance
/// of a dead-lettered message, say): nobody else may set them.
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "tidings.";

/// Checks a publish batch against the message size limit: not empty, no
/// attribute without a name or with a reserved one, no message over
/// `limit` bytes. Returns its total size. Every engine checks batches with
/// it.
///
/// # Errors
/// [`BrokerError::EmptyBatch`], [`BrokerError::EmptyAttributeName`],
/// [`BrokerError::ReservedAttribute`], [`BrokerError::MessageTooLarge`].
pub fn check_batch(messages: &[NewMessage], limit: usize) -> BrokerResult<usize> {
    if messages.is_empty() {
        return Err(BrokerError::EmptyBatch);
    }
    let mut total = 0;
    for (index, message) in messages.iter().enumerate() {
        if message.attributes.iter().any(|(name, _)| name.is_empty()) {
            return Err(BrokerError::EmptyAttributeName { index });
        }
        if let Some((name, _)) = message
            .attributes
            .iter()
            .find(|(name, _)| name.starts_with(RESERVED_ATTRIBUTE_PREFIX))
        {
            return Err(BrokerError::ReservedAttribute {
                index,
                name: name.clone(),
            });
        }
        // The clock is read only for a message with a delivery time.
        if message
            .deliver_after
            .is_some_and(|after| after > MAX_DELIVERY_DELAY)
            || message.deliver_at.is_some_and(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|ahead| ahead > MAX_DELIVERY_DELAY)
            })
        {
            return Err(BrokerError::TooFarAhead { index });
        }
        if message.id.len() > MAX_MESSAGE_ID_BYTES {
            return Err(BrokerError::IdTooLong {
                index,
                len: message.id.len(),
            });
        }
        let size = message.size();
        if size > limit {
            return Err(BrokerError::MessageTooLarge { index, size, limit });
        }
        total += size;
    }
    Ok(total)
}

pub(super) fn check_duration(
    what: &'static str,
    given: Duration,
    min: Duration,
) -> BrokerResult<()> {
    if given < min || given > MAX_ACK_DEADLINE {
        return Err(BrokerError::DurationOutOfRange {
            what,
            given,
            min,
            max: MAX_ACK_DEADLINE,
        });
    }
    Ok(())
}

/// Checks a pull: 1 to [`MAX_PULL_MESSAGES`] messages, a wait of at most
/// [`MAX_PULL_WAIT`].
pub(super) fn check_pull(max_messages: usize, wait: Duration) -> BrokerResult<()> {
    if max_messages == 0 || max_messages > MAX_PULL_MESSAGES {
        return Err(BrokerError::CountOutOfRange {
            what: "max_messages",
            given: max_messages as u64,
            max: MAX_PULL_MESSAGES as u64,
        });
    }
    if wait > MAX_PULL_WAIT {
        return Err(BrokerError::DurationOutOfRange {
            what: "wait",
            given: wait,
            min: Duration::ZERO,
            max: MAX_PULL_WAIT,
        });
    }
    Ok(())
}

/// The longest push endpoint URL, in bytes.
const MAX_ENDPOINT_BYTES: usize = 2048;
/// The most headers a push configuration sets.
const MAX_PUSH_HEADERS: usize = 64;
/// Headers the broker sets itself on a push.
const OWN_HEADERS: [&str; 3] = ["content-type", "content-length", "host"];

/// Checks a push configuration: an absolute http(s) URL, valid headers
/// the broker does not set itself, and 1 to [`MAX_PUSH_OUTSTANDING`]
/// POSTs in flight.
pub(super) fn check_push(push: &PushConfig) -> BrokerResult<()> {
    let invalid = |text: String| Err(BrokerError::Invalid(text));
    let endpoint = &push.endpoint;
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return invalid(format!(
            "push_config.endpoint is {} bytes; at most {MAX_ENDPOINT_BYTES}",
            endpoint.len()
        ));
    }
    let uri: http::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(err) => {
            return invalid(format!(
                "push_config.endpoint \"{endpoint}\" is not a URL: {err}"
            ));
        }
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return invalid(format!(
            "push_config.endpoint \"{endpoint}\" must be an absolute http:// or https:// URL"
        ));
    }
    if push.headers.len() > MAX_PUSH_HEADERS {
        return invalid(format!(
            "push_config.headers has {} headers; at most {MAX_PUSH_HEADERS}",
            push.headers.len()
        ));
    }
    for (name, value) in &push.headers {
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            return invalid(format!(
                "push_config.headers: \"{name}\" is not a valid HTTP header name"
            ));
        };
        if OWN_HEADERS.contains(&header.as_str()) {
            return invalid(format!(
                "push_config.headers: {name} is set by the broker and cannot be configured"
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return invalid(format!(
                "push_config.headers: the value of {name} is not a valid HTTP header value"
            ));
        }
    }
    if push.max_outstanding == 0 || push.max_outstanding > MAX_PUSH_OUTSTANDING {
        return Err(BrokerError::CountOutOfRange {
            what: "push_config.max_outstanding",
            given: u64::from(push.max_outstanding),
            max: u64::from(MAX_PUSH_OUTSTANDING),
        });
    }
    Ok(())
}

/// The longest retention by age: 100 years.
const MAX_RETENTION_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks a retention policy: an age limit of at least a second and at
/// most [`MAX_RETENTION_AGE`].
pub(super) fn check_retention(retention: &Retention) -> BrokerResult<()> {
    let Some(age) = retention.max_age else {
        return Ok(());
    };
    let min = Duration::from_secs(1);
    if age < min || age > MAX_RETENTION_AGE {
        return Err(BrokerError::DurationOutOfRange {
            what: "retention.max_age",
            given: age,
            min,
            max: MAX_RETENTION_AGE,
        });
    }
    Ok(())
}

/// Checks a dedup window: at most [`MAX_DEDUP_WINDOW`] (zero turns
/// deduplication off).
pub(super) fn check_dedup_window(window: Duration) -> BrokerResult<()> {
    if window > MAX_DEDUP_WINDOW {
        return Err(BrokerError::DurationOutOfRange {
            what: "dedup_window",
            given: window,
            min: Duration::ZERO,
            max: MAX_DEDUP_WINDOW,
        });
    }
    Ok(())
}

/// Checks a subscription's delivery delay: at most
/// [`MAX_DELIVERY_DELAY`].
pub(super) fn check_delivery_delay(delay: Duration) -> BrokerResult<()> {
    if delay > MAX_DELIVERY_DELAY {
        return Err(BrokerError::DurationOutOfRange {
            what: "delivery_delay",
            given: delay,
            min: Duration::ZERO,
            max: MAX_DELIVERY_DELAY,
        });
    }
    Ok(())
}

/// Checks a retry policy: each backoff at most [`MAX_BACKOFF`], the
/// minimum not above the maximum.
pub(super) fn check_retry(retry: Option<&RetryPolicy>) -> BrokerResult<()> {
    let Some(retry) = retry else {
        return Ok(());
    };
    for (what, backoff) in [
        ("retry_policy.minimum_backoff", retry.minimum_backoff),
        ("retry_policy.maximum_backoff", retry.maximum_backoff),
    ] {
        if backoff > MAX_BACKOFF {
            return Err(BrokerError::DurationOutOfRange {
                what,
                given: backoff,
                min: Duration::ZERO,
                max: MAX_BACKOFF,
            });
        }
    }
    if retry.minimum_backoff > retry.maximum_backoff {
        return Err(BrokerError::Invalid(format!(
            "retry_policy.minimum_backoff ({:?}) is above retry_policy.maximum_backoff ({:?}); \
             the minimum is the first wait, the maximum the longest",
            retry.minimum_backoff, retry.maximum_backoff
        )));
    }
    Ok(())
}

/// The fewest and most `max_delivery_attempts` of a dead-letter policy.
pub(super) const DELIVERY_ATTEMPTS: std::ops::RangeInclusive<u32> = 2..=100;

/// Checks what a dead-letter policy says on its own: the attempts in
/// range, the topic not the subscription's own. (Whether the topic exists
/// is checked under the admin lock.)
pub(super) fn check_dead_letter(
    policy: Option<&DeadLetterPolicy>,
    own_topic: &TopicName,
) -> BrokerResult<()> {
    let Some(policy) = policy else {
        return Ok(());
    };
    if !DELIVERY_ATTEMPTS.contains(&policy.max_delivery_attempts) {
        return Err(BrokerError::Invalid(format!(
            "dead_letter_policy.max_delivery_attempts must be between {} and {}, not {}",
            DELIVERY_ATTEMPTS.start(),
            DELIVERY_ATTEMPTS.end(),
            policy.max_delivery_attempts
        )));
    }
    if policy.topic == *own_topic {
        return Err(BrokerError::Invalid(format!(
            "dead_letter_policy.dead_letter_topic is the subscription's own topic \"{own_topic}\"; \
             a message would come back where it failed: name another topic"
        )));
    }
    Ok(())
}

/// A topic deleted between the name lookup and the store call is reported
/// by name.
pub(super) fn not_found_as_topic(err: StoreError, topic: &Topic) -> BrokerError {
    match err {
        StoreError::TopicNotFound(_) => BrokerError::TopicNotFound(topic.name.clone()),
        other => other.into(),
    }
}

pub(super) fn page<K, V, T>(
    map: &BTreeMap<K, V>,
    after: Option<&str>,
    limit: usize,
    wanted: impl Fn(&V) -> bool,
    info: impl Fn(&V) -> T,
) -> Page<T>
where
    K: Ord + AsRef<str> + std::borrow::Borrow<str>,
{
    use std::ops::Bound;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut selected = map
        .range::<str, _>((start, Bound::Unbounded))
        .filter(|(_, v)| wanted(v));
    let items: Vec<(&K, &V)> = selected.by_ref().take(limit.max(1)).collect();
    let next_after = match selected.next() {
        Some(_) => items.last().map(|(k, _)| k.as_ref().to_owned()),
        None => None,
    };
    Page {
        items: items.into_iter().map(|(_, v)| info(v)).collect(),
        next_after,
    }
}
