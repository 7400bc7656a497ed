//! Topics' settings between the wire and the broker: `CreateTopic`'s
//! retention policy, dedup window and storage class, `UpdateTopic`'s mask,
//! and what `Topic` reports.

use std::time::Duration;

use tidings::v1;

use super::mask::UpdateFields;
use crate::broker::{BrokerError, BrokerResult, Retention, StorageClass, TopicSpec, TopicUpdate};
use crate::names::TopicName;

/// The fields of `Topic`, as `UpdateTopic`'s mask sees them.
const TOPIC_FIELDS: UpdateFields = UpdateFields {
    resource: "topic",
    message: "Topic",
    changeable: "retention, retention.max_age, retention.max_bytes, retention.max_messages, \
                 retention.discard_acked, dedup_window",
    fixed: &["name", "create_time", "storage"],
    fixed_hint: "",
    reported: &[
        "next_offset",
        "first_offset",
        "retained_messages",
        "retained_bytes",
    ],
};

/// A retention policy from the wire: 0 (or unset) in a field is no limit.
///
/// # Errors
/// [`BrokerError::Invalid`] for a negative age; the broker checks ranges.
pub(crate) fn retention(policy: v1::RetentionPolicy) -> BrokerResult<Retention> {
    Ok(Retention {
        max_age: max_age(policy.max_age)?,
        max_messages: (policy.max_messages > 0).then_some(policy.max_messages),
        max_bytes: (policy.max_bytes > 0).then_some(policy.max_bytes),
        discard_acked: policy.discard_acked,
    })
}

/// An age limit from the wire: unset or zero is none.
fn max_age(given: Option<prost_types::Duration>) -> BrokerResult<Option<Duration>> {
    let age = non_negative("retention.max_age", "no limit", given)?;
    Ok(age.filter(|age| !age.is_zero()))
}

/// A dedup window from the wire: `None` when unset, zero for none.
///
/// # Errors
/// [`BrokerError::Invalid`] for a negative window; the broker checks the
/// range.
pub(crate) fn dedup_window(given: Option<prost_types::Duration>) -> BrokerResult<Option<Duration>> {
    non_negative("dedup_window", "no deduplication", given)
}

/// A duration from the wire that must not be negative; `zero` says what
/// 0 means, for the error message.
pub(crate) fn non_negative(
    what: &str,
    zero: &str,
    given: Option<prost_types::Duration>,
) -> BrokerResult<Option<Duration>> {
    let Some(given) = given else {
        return Ok(None);
    };
    let duration = Duration::try_from(given).map_err(|_| {
        BrokerError::Invalid(format!(
            "{what} must be a positive duration (or 0 for {zero}), not {}s {}ns",
            given.seconds, given.nanos
        ))
    })?;
    Ok(Some(duration))
}

/// A storage class from the wire: unspecified is disk.
///
/// # Errors
/// [`BrokerError::Invalid`] for a number that names no class.
pub(crate) fn storage_class(given: i32) -> BrokerResult<StorageClass> {
    match v1::StorageClass::try_from(given) {
        Ok(v1::StorageClass::Unspecified | v1::StorageClass::Disk) => Ok(StorageClass::Disk),
        Ok(v1::StorageClass::Memory) => Ok(StorageClass::Memory),
        Err(_) => Err(BrokerError::Invalid(format!(
            "storage {given} is not a storage class: use STORAGE_CLASS_DISK (1) or \
             STORAGE_CLASS_MEMORY (2)"
        ))),
    }
}

/// A storage class for the wire; never unspecified.
pub(crate) fn storage_of(storage: StorageClass) -> v1::StorageClass {
    match storage {
        StorageClass::Disk => v1::StorageClass::Disk,
        StorageClass::Memory => v1::StorageClass::Memory,
    }
}

/// A retention policy for the wire.
pub(crate) fn retention_of(retention: Retention) -> v1::RetentionPolicy {
    v1::RetentionPolicy {
        max_age: retention
            .max_age
            .and_then(|age| prost_types::Duration::try_from(age).ok()),
        max_messages: retention.max_messages.unwrap_or(0),
        max_bytes: retention.max_bytes.unwrap_or(0),
        discard_acked: retention.discard_acked,
    }
}

impl TryFrom<v1::CreateTopicRequest> for TopicSpec {
    type Error = BrokerError;

    fn try_from(request: v1::CreateTopicRequest) -> BrokerResult<Self> {
        Ok(TopicSpec {
            name: TopicName::new(request.name)?,
            retention: request.retention.map(retention).transpose()?,
            dedup_window: dedup_window(request.dedup_window)?,
            storage: storage_class(request.storage)?,
        })
    }
}

impl TryFrom<v1::UpdateTopicRequest> for TopicUpdate {
    type Error = BrokerError;

    /// Takes the fields the mask names, and only those.
    fn try_from(request: v1::UpdateTopicRequest) -> BrokerResult<Self> {
        let Some(topic) = request.topic else {
            return Err(TOPIC_FIELDS.missing());
        };
        let name = TopicName::new(topic.name)?;
        let paths = TOPIC_FIELDS.paths(request.update_mask)?;
        let given = retention(topic.retention.unwrap_or_default())?;
        let window = dedup_window(topic.dedup_window)?;
        let mut update = TopicUpdate::of(name);
        for path in paths {
            match path.as_str() {
                "retention" => {
                    update.max_age = Some(given.max_age);
                    update.max_messages = Some(given.max_messages);
                    update.max_bytes = Some(given.max_bytes);
                    update.discard_acked = Some(given.discard_acked);
                }
                "retention.max_age" => update.max_age = Some(given.max_age),
                "retention.max_messages" => update.max_messages = Some(given.max_messages),
                "retention.max_bytes" => update.max_bytes = Some(given.max_bytes),
                "retention.discard_acked" => update.discard_acked = Some(given.discard_acked),
                // Unset is 0, as in any proto3 field: deduplication off.
                "dedup_window" => update.dedup_window = Some(window.unwrap_or_default()),
                other => return Err(TOPIC_FIELDS.refuse(other)),
            }
        }
        Ok(update)
    }
}
