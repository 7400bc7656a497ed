//! Conversions between protobuf messages and the broker's types.
//!
//! Requests become domain values through `TryFrom`, which is where the
//! gRPC-level validation lives (names, oneofs, zero-means-default fields,
//! page tokens); failures are [`BrokerError`]s, so they reach the client
//! through the one mapping in `status.rs`. Results become protobuf messages
//! through `From`. Nothing here calls the broker.

use std::time::{Duration, SystemTime};

use bytestring::ByteString;
use tidings::v1;
use tidings::v1::start_position::Position;

use super::wire;
use crate::broker::{
    BrokerError, BrokerResult, DEFAULT_ACK_DEADLINE, DEFAULT_MINIMUM_BACKOFF,
    DEFAULT_PULL_MESSAGES, DEFAULT_PUSH_OUTSTANDING, DEFAULT_READ_MESSAGES, DeadLetterPolicy,
    Delivery, MAX_BACKOFF, MAX_READ_MESSAGES, Page, PullSpec, PushConfig, RetryPolicy,
    StartPosition, SubscribeSpec, SubscriptionInfo, SubscriptionSpec, SubscriptionUpdate,
    TopicInfo, TopicRead,
};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::Offset;
use crate::storage::NewMessage;
pub(crate) use call::{CallCommand, ReplyCommand, publish_message};
pub(crate) use commit::commit_spec;
use mask::UpdateFields;
#[cfg(test)]
use retention::storage_class;
use retention::{non_negative, retention_of, storage_of};

/// Page size when a request asks for 0.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// The most items one page holds.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// Checks a topic name from a request.
///
/// # Errors
/// [`BrokerError::InvalidName`].
pub(crate) fn topic_name(name: String) -> BrokerResult<TopicName> {
    Ok(TopicName::new(name)?)
}

/// Checks a subscription name from a request.
///
/// # Errors
/// [`BrokerError::InvalidName`].
pub(crate) fn subscription_name(name: String) -> BrokerResult<SubscriptionName> {
    Ok(SubscriptionName::new(name)?)
}

/// An optional topic name: empty means none.
///
/// # Errors
/// [`BrokerError::InvalidName`] for a non-empty invalid name.
pub(crate) fn optional_topic_name(name: String) -> BrokerResult<Option<TopicName>> {
    if name.is_empty() {
        Ok(None)
    } else {
        topic_name(name).map(Some)
    }
}

/// A validated `Publish` request.
#[derive(Debug)]
pub(crate) struct PublishCommand {
    /// The topic to append to.
    pub(crate) topic: TopicName,
    /// The messages, in request order.
    pub(crate) messages: Vec<NewMessage>,
}

impl TryFrom<v1::PublishRequest> for PublishCommand {
    type Error = BrokerError;

    fn try_from(request: v1::PublishRequest) -> BrokerResult<Self> {
        Self::try_from(wire::PublishRequest::from(request))
    }
}

impl TryFrom<wire::PublishRequest> for PublishCommand {
    type Error = BrokerError;

    fn try_from(request: wire::PublishRequest) -> BrokerResult<Self> {
        Ok(Self {
            topic: TopicName::new(request.topic)?,
            messages: request
                .messages
                .into_iter()
                .enumerate()
                .map(|(index, message)| new_message(index, message))
                .collect::<BrokerResult<_>>()?,
        })
    }
}

/// A subscription's delivery delay from the wire: unset is none.
///
/// # Errors
/// [`BrokerError::Invalid`] for a negative delay; the broker checks the
/// range.
fn delivery_delay(given: Option<prost_types::Duration>) -> BrokerResult<Duration> {
    Ok(non_negative("delivery_delay", "no delay", given)?.unwrap_or_default())
}

/// The message at `index` of a request, its delivery time converted; the
/// broker checks how far ahead it is.
///
/// # Errors
/// [`BrokerError::Invalid`] for an id that is not UTF-8, a negative
/// `deliver_after`, a `deliver_at` that is no time, or both given.
pub(crate) fn new_message(index: usize, message: wire::PublishMessage) -> BrokerResult<NewMessage> {
    let id = ByteString::try_from(message.id)
        .map_err(|_| BrokerError::Invalid(format!("messages[{index}].id is not valid UTF-8")))?;
    let mut attributes: Vec<(String, String)> = message.attributes.into_iter().collect();
    // A map has no order; sorting makes what is stored deterministic.
    attributes.sort_unstable();
    // The field's name is formatted only for a message that has one.
    let deliver_after = match message.deliver_after {
        None => None,
        given => non_negative(
            &format!("messages[{index}].deliver_after"),
            "no delay",
            given,
        )?,
    };
    let deliver_at = message
        .deliver_at
        .map(|at| {
            SystemTime::try_from(at).map_err(|_| {
                BrokerError::Invalid(format!(
                    "messages[{index}].deliver_at is not a valid time: {}s {}ns",
                    at.seconds, at.nanos
                ))
            })
        })
        .transpose()?;
    if deliver_after.is_some() && deliver_at.is_some() {
        return Err(BrokerError::Invalid(format!(
            "messages[{index}] sets both deliver_after and deliver_at; set one"
        )));
    }
    Ok(NewMessage {
        payload: message.payload,
        key: message.key,
        attributes,
        id,
        deliver_at,
        deliver_after,
    })
}

/// A validated `ReadTopic` request.
#[derive(Debug)]
pub(crate) struct ReadTopicCommand {
    /// The topic to read.
    pub(crate) topic: TopicName,
    /// The first offset to read.
    pub(crate) from: Offset,
    /// The most messages to return.
    pub(crate) max_messages: usize,
}

impl TryFrom<v1::ReadTopicRequest> for ReadTopicCommand {
    type Error = BrokerError;

    fn try_from(request: v1::ReadTopicRequest) -> BrokerResult<Self> {
        let max_messages = match request.max_messages {
            0 => DEFAULT_READ_MESSAGES,
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(MAX_READ_MESSAGES),
        };
        Ok(Self {
            topic: TopicName::new(request.topic)?,
            from: request.offset,
            max_messages,
        })
    }
}

/// A validated `Seek` request.
#[derive(Debug)]
pub(crate) struct SeekCommand {
    /// The subscription to move.
    pub(crate) subscription: SubscriptionName,
    /// Where to.
    pub(crate) position: StartPosition,
}

impl TryFrom<v1::SeekRequest> for SeekCommand {
    type Error = BrokerError;

    /// The position is required: a seek to "wherever" is a mistake.
    fn try_from(request: v1::SeekRequest) -> BrokerResult<Self> {
        if request
            .position
            .as_ref()
            .is_none_or(|p| p.position.is_none())
        {
            return Err(BrokerError::Invalid(
                "position is missing; set position.earliest, position.latest, position.offset \
                 or position.time"
                    .into(),
            ));
        }
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            position: start_position(request.position)?,
        })
    }
}

/// A topic's messages as `ReadTopic` answers them: not deliveries, so no
/// attempt and no ack id.
pub(crate) fn read_topic_response(read: TopicRead) -> v1::ReadTopicResponse {
    let messages = read
        .messages
        .into_iter()
        .map(|message| {
            v1::ReceivedMessage::from(Delivery {
                message,
                attempt: 0,
                ack_id: String::new(),
            })
        })
        .collect();
    v1::ReadTopicResponse {
        messages,
        next_offset: read.next_offset,
        end_offset: read.end_offset,
    }
}

/// A validated `Ack` request.
#[derive(Debug)]
pub(crate) struct AckCommand {
    /// The subscription the messages were delivered on.
    pub(crate) subscription: SubscriptionName,
    /// The offsets to acknowledge.
    pub(crate) offsets: Vec<Offset>,
    /// The deliveries to acknowledge.
    pub(crate) ack_ids: Vec<String>,
}

impl TryFrom<v1::AckRequest> for AckCommand {
    type Error = BrokerError;

    fn try_from(request: v1::AckRequest) -> BrokerResult<Self> {
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            offsets: request.offsets,
            ack_ids: request.ack_ids,
        })
    }
}

/// A `Pull` request, its defaults applied; the broker checks the ranges.
impl TryFrom<v1::PullRequest> for PullSpec {
    type Error = BrokerError;

    fn try_from(request: v1::PullRequest) -> BrokerResult<Self> {
        let max_messages = match request.max_messages {
            0 => DEFAULT_PULL_MESSAGES,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            max_messages,
            wait: non_negative("wait", "no wait", request.wait)?.unwrap_or_default(),
            pusher: false,
        })
    }
}

/// A validated `Nack` request.
#[derive(Debug)]
pub(crate) struct NackCommand {
    /// The subscription the messages were delivered on.
    pub(crate) subscription: SubscriptionName,
    /// The offsets to give back.
    pub(crate) offsets: Vec<Offset>,
    /// The deliveries to give back.
    pub(crate) ack_ids: Vec<String>,
    /// How long to wait before delivering them again.
    pub(crate) delay: Duration,
    /// Why; empty for no reason given.
    pub(crate) error: String,
}

/// The longest `error` a nack or a reject may give, in bytes.
pub(crate) const MAX_ERROR_BYTES: usize = 1024;

/// Checks the `error` of a nack or a reject.
fn settlement_error(error: String) -> BrokerResult<String> {
    if error.len() > MAX_ERROR_BYTES {
        return Err(BrokerError::Invalid(format!(
            "error is {} bytes; at most {MAX_ERROR_BYTES} are kept, so shorten it",
            error.len()
        )));
    }
    Ok(error)
}

/// A validated `Reject` request.
#[derive(Debug)]
pub(crate) struct RejectCommand {
    /// The subscription the messages were delivered on.
    pub(crate) subscription: SubscriptionName,
    /// The offsets to reject.
    pub(crate) offsets: Vec<Offset>,
    /// The deliveries to reject.
    pub(crate) ack_ids: Vec<String>,
    /// Why; empty for no reason given.
    pub(crate) error: String,
}

impl TryFrom<v1::RejectRequest> for RejectCommand {
    type Error = BrokerError;

    fn try_from(request: v1::RejectRequest) -> BrokerResult<Self> {
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            offsets: request.offsets,
            ack_ids: request.ack_ids,
            error: settlement_error(request.error)?,
        })
    }
}

impl TryFrom<v1::NackRequest> for NackCommand {
    type Error = BrokerError;

    fn try_from(request: v1::NackRequest) -> BrokerResult<Self> {
        let delay = match request.delay {
            None => Duration::ZERO,
            Some(delay) => Duration::try_from(delay).map_err(|_| {
                BrokerError::Invalid(format!(
                    "nack delay must not be negative, got {}s {}ns; leave it unset to deliver again at once",
                    delay.seconds, delay.nanos
                ))
            })?,
        };
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            offsets: request.offsets,
            ack_ids: request.ack_ids,
            delay,
            error: settlement_error(request.error)?,
        })
    }
}

/// A validated `ModifyAckDeadline` request.
#[derive(Debug)]
pub(crate) struct DeadlineCommand {
    /// The subscription the messages were delivered on.
    pub(crate) subscription: SubscriptionName,
    /// The offsets whose leases change.
    pub(crate) offsets: Vec<Offset>,
    /// The deliveries whose leases change.
    pub(crate) ack_ids: Vec<String>,
    /// The new lease from now; zero gives it up.
    pub(crate) deadline: Duration,
}

impl TryFrom<v1::ModifyAckDeadlineRequest> for DeadlineCommand {
    type Error = BrokerError;

    fn try_from(request: v1::ModifyAckDeadlineRequest) -> BrokerResult<Self> {
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            offsets: request.offsets,
            ack_ids: request.ack_ids,
            deadline: Duration::from_secs(request.ack_deadline_seconds.into()),
        })
    }
}

impl TryFrom<v1::SubscribeRequest> for SubscribeSpec {
    type Error = BrokerError;

    fn try_from(request: v1::SubscribeRequest) -> BrokerResult<Self> {
        Ok(Self {
            subscription: SubscriptionName::new(request.subscription)?,
            topic: optional_topic_name(request.topic)?,
            start: start_position(request.start)?,
            ack_deadline: ack_deadline(request.ack_deadline_seconds),
            max_outstanding: nonzero(request.max_outstanding_messages)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_outstanding_bytes: nonzero(request.max_outstanding_bytes)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_messages: nonzero(request.max_messages).map(u64::from),
        })
    }
}

impl TryFrom<v1::CreateSubscriptionRequest> for SubscriptionSpec {
    type Error = BrokerError;

    fn try_from(request: v1::CreateSubscriptionRequest) -> BrokerResult<Self> {
        Ok(Self {
            name: SubscriptionName::new(request.name)?,
            topic: TopicName::new(request.topic)?,
            ack_deadline: ack_deadline(request.ack_deadline_seconds),
            start: start_position(request.start)?,
            filter: request.filter,
            retry: retry_policy(request.retry_policy)?,
            ordered: request.enable_message_ordering,
            dead_letter: dead_letter_policy(request.dead_letter_policy)?,
            delivery_delay: delivery_delay(request.delivery_delay)?,
            push: request.push_config.map(push_config),
        })
    }
}

/// The fields of `Subscription`, as `UpdateSubscription`'s mask sees them.
const SUBSCRIPTION_FIELDS: UpdateFields = UpdateFields {
    resource: "subscription",
    message: "Subscription",
    changeable: "ack_deadline_seconds, filter, retry_policy, dead_letter_policy, delivery_delay, \
                 push_config",
    fixed: &["name", "topic", "enable_message_ordering"],
    fixed_hint: "; create a new subscription instead",
    reported: &[
        "backlog",
        "in_flight",
        "ack_floor",
        "create_time",
        "open_streams",
        "dead_lettered",
        "rejected",
        "delayed",
    ],
};

impl TryFrom<v1::UpdateSubscriptionRequest> for SubscriptionUpdate {
    type Error = BrokerError;

    /// Takes the fields the mask names, and only those.
    fn try_from(request: v1::UpdateSubscriptionRequest) -> BrokerResult<Self> {
        let Some(subscription) = request.subscription else {
            return Err(SUBSCRIPTION_FIELDS.missing());
        };
        let name = SubscriptionName::new(subscription.name)?;
        let paths = SUBSCRIPTION_FIELDS.paths(request.update_mask)?;
        let mut update = SubscriptionUpdate {
            name,
            ack_deadline: None,
            filter: None,
            retry: None,
            dead_letter: None,
            delivery_delay: None,
            push: None,
        };
        for path in paths {
            match path.as_str() {
                "ack_deadline_seconds" => {
                    update.ack_deadline = Some(
                        ack_deadline(subscription.ack_deadline_seconds)
                            .unwrap_or(DEFAULT_ACK_DEADLINE),
                    );
                }
                "filter" => update.filter = Some(subscription.filter.clone()),
                "retry_policy" => {
                    update.retry = Some(retry_policy(subscription.retry_policy)?);
                }
                "dead_letter_policy" => {
                    update.dead_letter =
                        Some(dead_letter_policy(subscription.dead_letter_policy.clone())?);
                }
                "delivery_delay" => {
                    update.delivery_delay = Some(delivery_delay(subscription.delivery_delay)?);
                }
                "push_config" => {
                    update.push = Some(subscription.push_config.clone().map(push_config));
                }
                other => return Err(SUBSCRIPTION_FIELDS.refuse(other)),
            }
        }
        Ok(update)
    }
}

/// A push configuration from the wire: 0 POSTs in flight is the default;
/// the broker checks the rest.
fn push_config(push: v1::PushConfig) -> PushConfig {
    PushConfig {
        endpoint: push.endpoint,
        headers: push.headers.into_iter().collect(),
        max_outstanding: match push.max_outstanding {
            0 => DEFAULT_PUSH_OUTSTANDING,
            n => n,
        },
    }
}

/// A retry policy from the wire: unset is none; within a set one, an unset
/// minimum is 10 s and an unset maximum 600 s, as in Pub/Sub.
///
/// # Errors
/// [`BrokerError::Invalid`] for a negative or unusable duration; the
/// broker checks the ranges.
pub(crate) fn retry_policy(policy: Option<v1::RetryPolicy>) -> BrokerResult<Option<RetryPolicy>> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let backoff = |what: &str, given: Option<prost_types::Duration>, default: Duration| {
        given.map_or(Ok(default), |d| {
            Duration::try_from(d).map_err(|_| {
                BrokerError::Invalid(format!(
                    "retry_policy.{what} must be a duration from 0 to 600 s, not {}s {}ns",
                    d.seconds, d.nanos
                ))
            })
        })
    };
    Ok(Some(RetryPolicy {
        minimum_backoff: backoff(
            "minimum_backoff",
            policy.minimum_backoff,
            DEFAULT_MINIMUM_BACKOFF,
        )?,
        maximum_backoff: backoff("maximum_backoff", policy.maximum_backoff, MAX_BACKOFF)?,
    }))
}

/// A dead-letter policy from the wire: unset is none. The broker checks
/// the attempts and the topic.
///
/// # Errors
/// [`BrokerError::Invalid`] for a topic name that breaks the grammar.
pub(crate) fn dead_letter_policy(
    policy: Option<v1::DeadLetterPolicy>,
) -> BrokerResult<Option<DeadLetterPolicy>> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let topic = TopicName::new(policy.dead_letter_topic).map_err(|err| {
        BrokerError::Invalid(format!("dead_letter_policy.dead_letter_topic: {err}"))
    })?;
    Ok(Some(DeadLetterPolicy {
        topic,
        max_delivery_attempts: policy.max_delivery_attempts,
    }))
}

/// A retry policy for the wire.
fn retry_policy_of(policy: RetryPolicy) -> v1::RetryPolicy {
    let wire = |d: Duration| prost_types::Duration::try_from(d).ok();
    v1::RetryPolicy {
        minimum_backoff: wire(policy.minimum_backoff),
        maximum_backoff: wire(policy.maximum_backoff),
    }
}

/// Where a new subscription begins; unset means the earliest message.
///
/// # Errors
/// [`BrokerError::Invalid`] for `earliest` or `latest` set to `false`, or a
/// time out of range.
pub(crate) fn start_position(start: Option<v1::StartPosition>) -> BrokerResult<StartPosition> {
    let Some(position) = start.and_then(|start| start.position) else {
        return Ok(StartPosition::Earliest);
    };
    match position {
        Position::Earliest(true) => Ok(StartPosition::Earliest),
        Position::Latest(true) => Ok(StartPosition::Latest),
        Position::Earliest(false) | Position::Latest(false) => Err(BrokerError::Invalid(
            "start.earliest and start.latest must be true when set; \
             leave start unset to begin at the earliest message"
                .into(),
        )),
        Position::Offset(offset) => Ok(StartPosition::Offset(offset)),
        Position::Time(time) => SystemTime::try_from(time)
            .map(StartPosition::Time)
            .map_err(|err| BrokerError::Invalid(format!("start.time is not a usable time: {err}"))),
    }
}

/// `0` means the default deadline.
fn ack_deadline(seconds: u32) -> Option<Duration> {
    nonzero(seconds).map(|seconds| Duration::from_secs(seconds.into()))
}

fn nonzero<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

/// Which page of a listing a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageQuery {
    /// List names after this one; `None` for the first page.
    pub(crate) after: Option<String>,
    /// The most items to return.
    pub(crate) limit: usize,
}

impl PageQuery {
    /// Reads `page_size` (0 means the default, capped) and `page_token` (the
    /// last name of the previous page, so it must be a valid name).
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] when the token is not a name.
    pub(crate) fn new(page_size: u32, page_token: String) -> BrokerResult<Self> {
        let limit = match usize::try_from(page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            // Topic and subscription names share one grammar.
            if TopicName::new(page_token.as_str()).is_err() {
                return Err(BrokerError::Invalid(format!(
                    "page_token {page_token:?} is not valid; pass the next_page_token of the \
                     previous page, or leave it empty for the first page"
                )));
            }
            Some(page_token)
        };
        Ok(Self { after, limit })
    }
}

/// The `next_page_token` of a page: empty on the last page.
pub(crate) fn next_page_token<T>(page: &Page<T>) -> String {
    page.next_after.clone().unwrap_or_default()
}

impl From<TopicInfo> for v1::Topic {
    fn from(info: TopicInfo) -> Self {
        Self {
            name: info.name.as_str().to_owned(),
            next_offset: info.next_offset,
            create_time: Some(info.created.into()),
            first_offset: info.first_offset,
            retention: Some(retention_of(info.retention)),
            retained_messages: info.retained_messages,
            retained_bytes: info.retained_bytes,
            dedup_window: prost_types::Duration::try_from(info.dedup_window).ok(),
            storage: storage_of(info.storage).into(),
        }
    }
}

impl From<SubscriptionInfo> for v1::Subscription {
    fn from(info: SubscriptionInfo) -> Self {
        Self {
            name: info.name.as_str().to_owned(),
            topic: info.topic.as_str().to_owned(),
            ack_deadline_seconds: u32::try_from(info.ack_deadline.as_secs()).unwrap_or(u32::MAX),
            backlog: info.backlog,
            in_flight: info.in_flight,
            ack_floor: info.ack_floor,
            create_time: Some(info.created.into()),
            open_streams: info.open_streams,
            filter: info.filter,
            retry_policy: info.retry.map(retry_policy_of),
            enable_message_ordering: info.ordered,
            dead_letter_policy: info.dead_letter.map(|policy| v1::DeadLetterPolicy {
                dead_letter_topic: policy.topic.to_string(),
                max_delivery_attempts: policy.max_delivery_attempts,
            }),
            dead_lettered: info.dead_lettered,
            rejected: info.rejected,
            delivery_delay: (!info.delivery_delay.is_zero())
                .then(|| prost_types::Duration::try_from(info.delivery_delay).ok())
                .flatten(),
            delayed: info.delayed,
            push_config: info.push.map(|push| v1::PushConfig {
                endpoint: push.endpoint,
                headers: push.headers.into_iter().collect(),
                max_outstanding: push.max_outstanding,
            }),
        }
    }
}

impl From<Delivery> for v1::ReceivedMessage {
    fn from(delivery: Delivery) -> Self {
        let message = delivery.message;
        Self {
            offset: message.offset,
            payload: message.payload,
            key: message.key,
            attributes: message.attributes.into_iter().collect(),
            publish_time: Some(message.publish_time.into()),
            delivery_attempt: delivery.attempt,
            ack_id: delivery.ack_id,
            id: message.id.into(),
        }
    }
}

/// One response frame of a `Subscribe` stream.
pub(crate) fn subscribe_frame(deliveries: Vec<Delivery>) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        messages: deliveries
            .into_iter()
            .map(v1::ReceivedMessage::from)
            .collect(),
    }
}

mod call;
mod commit;
mod mask;
mod retention;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
