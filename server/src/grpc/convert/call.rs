//! `Call` and `Reply` from the wire, and a reply back onto it.

use std::time::Duration;

use tidings::v1;

use super::new_message;
use crate::broker::{BrokerError, BrokerResult};
use crate::names::TopicName;
use crate::storage::NewMessage;

/// A validated `Call` request.
#[derive(Debug)]
pub(crate) struct CallCommand {
    pub(crate) topic: TopicName,
    pub(crate) message: NewMessage,
    /// `None`: the default.
    pub(crate) timeout: Option<Duration>,
}

impl TryFrom<v1::CallRequest> for CallCommand {
    type Error = BrokerError;

    fn try_from(request: v1::CallRequest) -> BrokerResult<Self> {
        Ok(Self {
            topic: TopicName::new(request.topic)?,
            message: required_message(request.message)?,
            timeout: call_timeout(request.timeout)?,
        })
    }
}

/// A validated `Reply` request.
#[derive(Debug)]
pub(crate) struct ReplyCommand {
    pub(crate) reply_to: String,
    pub(crate) message: NewMessage,
}

impl TryFrom<v1::ReplyRequest> for ReplyCommand {
    type Error = BrokerError;

    fn try_from(request: v1::ReplyRequest) -> BrokerResult<Self> {
        Ok(Self {
            reply_to: request.reply_to,
            message: required_message(request.message)?,
        })
    }
}

/// A call's timeout from the wire: unset is the default; the broker
/// checks the range.
fn call_timeout(given: Option<prost_types::Duration>) -> BrokerResult<Option<Duration>> {
    given
        .map(|wire| {
            Duration::try_from(wire).map_err(|_| {
                BrokerError::Invalid(format!(
                    "timeout must be a positive duration, not {}s {}ns",
                    wire.seconds, wire.nanos
                ))
            })
        })
        .transpose()
}

fn required_message(message: Option<v1::PublishMessage>) -> BrokerResult<NewMessage> {
    let message = message.ok_or_else(|| {
        BrokerError::Invalid("message is missing; send the request or reply in `message`".into())
    })?;
    new_message(0, message.into())
}

/// A reply as the caller receives it: payload, key, attributes and id, as
/// the responder sent them.
pub(crate) fn publish_message(message: NewMessage) -> v1::PublishMessage {
    v1::PublishMessage {
        payload: message.payload,
        key: message.key,
        attributes: message.attributes.into_iter().collect(),
        id: message.id.into(),
        ..v1::PublishMessage::default()
    }
}
