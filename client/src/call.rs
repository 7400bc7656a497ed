//! Request and reply over a topic: [`Client::call`] publishes a request and
//! waits for its answer; a responder that consumes the topic answers with
//! [`Client::reply`].

use std::time::{Duration, SystemTime};

use tidings::v1::{self, CallRequest, ReplyRequest};

use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::{Error, Result};
use crate::types::Message;

/// The attribute naming the call a request belongs to.
pub const REPLY_TO_ATTRIBUTE: &str = "tidings.reply_to";
/// The attribute saying until when the caller waits (RFC 3339).
pub const REPLY_DEADLINE_ATTRIBUTE: &str = "tidings.reply_deadline";

/// How much longer than the call's own timeout its gRPC deadline is, so
/// that the broker's DEADLINE_EXCEEDED, which says what happened, comes
/// first.
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// What a [`Client::call`] got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReply {
    /// The responder's answer: payload, key, attributes and id as it sent
    /// them.
    pub reply: Message,
    /// The request's offset in the topic.
    pub offset: u64,
}

impl Client {
    /// Publishes `request` to `topic` (durably, like a publish) and waits
    /// up to `timeout` (at most 600 s) for a responder to answer it with
    /// [`Client::reply`].
    ///
    /// # Errors
    /// `DEADLINE_EXCEEDED` when nobody answered in time (the request stays
    /// in the topic, and responders may still take it), `NOT_FOUND` for an
    /// unknown topic, `INVALID_ARGUMENT` for a bad message or timeout,
    /// `UNAVAILABLE` when the broker stopped while the call waited.
    pub async fn call(
        &self,
        topic: &str,
        request: impl Into<Message>,
        timeout: Duration,
    ) -> Result<CallReply> {
        let wire_timeout = prost_types::Duration::try_from(timeout)
            .map_err(|_| Error::InvalidArgument(format!("call timeout {timeout:?} is too long")))?;
        let mut call = tonic::Request::new(CallRequest {
            topic: topic.to_owned(),
            message: Some(request.into().into()),
            timeout: Some(wire_timeout),
        });
        call.set_timeout(timeout.saturating_add(CALL_MARGIN));
        let answer = self.publisher_service().call(call).await?.into_inner();
        Ok(CallReply {
            reply: answer.reply.map(message_of).unwrap_or_default(),
            offset: answer.offset,
        })
    }

    /// Answers the call that `request` (a delivery of a request published
    /// by [`Client::call`]) belongs to. Acknowledge the request as well,
    /// once answered, or it is delivered again.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` when the delivery is not a call's request;
    /// `NOT_FOUND` when its call no longer waits (answered already, or
    /// timed out — see [`Delivery::reply_deadline`] to skip such requests).
    pub async fn reply(&self, request: &Delivery, reply: impl Into<Message>) -> Result<()> {
        let reply_to = request.reply_to().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the message at offset {} is not a call's request: it has no {REPLY_TO_ATTRIBUTE}",
                request.offset()
            ))
        })?;
        let answer = self.request(ReplyRequest {
            reply_to: reply_to.to_owned(),
            message: Some(reply.into().into()),
        });
        self.publisher_service().reply(answer).await?;
        Ok(())
    }
}

impl Delivery {
    /// The token of the call this request belongs to, when it is one.
    pub fn reply_to(&self) -> Option<&str> {
        self.attributes()
            .get(REPLY_TO_ATTRIBUTE)
            .map(String::as_str)
    }

    /// Until when the caller of this request waits, when it is one: a
    /// responder can skip a request whose deadline has passed, since
    /// nobody waits for its answer.
    pub fn reply_deadline(&self) -> Option<SystemTime> {
        let deadline = self.attributes().get(REPLY_DEADLINE_ATTRIBUTE)?;
        humantime::parse_rfc3339(deadline).ok()
    }
}

fn message_of(wire: v1::PublishMessage) -> Message {
    Message {
        payload: wire.payload,
        key: wire.key,
        attributes: wire.attributes,
        id: wire.id,
        ..Message::default()
    }
}
