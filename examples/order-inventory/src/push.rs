//! The push side of the bus: the body the broker POSTs to a push
//! subscription's endpoint, decoded, and the start-up step that makes sure
//! a push subscription exists and pushes where (and with what headers) its
//! endpoint expects.
//!
//! The body is `{"subscription": NAME, "message": ReceivedMessage}` in the
//! proto3 JSON mapping: camelCase names (the proto names are accepted
//! too), the payload in base64, 64-bit integers as strings. Nothing here
//! knows about orders, and nothing here serves HTTP.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::collections::BTreeMap;

use serde::Deserialize;
use tidings_client::{Client, PushConfig, SubscriptionConfig, SubscriptionUpdate};

/// One message as the broker pushed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedMessage {
    /// The push subscription it was delivered on.
    pub subscription: String,
    /// Its offset in its topic.
    pub offset: u64,
    /// Which POST of this message this is, from 1: failed pushes count.
    pub delivery_attempt: u32,
    /// Its key; empty for none.
    pub key: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// Its payload, decoded from base64.
    pub payload: Vec<u8>,
}

/// Why a body is not a pushed message.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The body is not the JSON the broker pushes.
    #[error(
        "the body is not a pushed message ({0}); expected {{\"subscription\": ..., \"message\": {{...}}}}"
    )]
    Json(#[source] serde_json::Error),
    /// `message.payload` is not base64.
    #[error("message.payload is not base64")]
    Payload,
    /// `message.offset` is not a whole number.
    #[error("message.offset {0:?} is not a whole number")]
    Offset(String),
}

/// The body, as the JSON has it.
#[derive(Deserialize)]
struct Body {
    subscription: String,
    message: WireMessage,
}

/// A `ReceivedMessage` in proto3 JSON; the fields the broker always writes
/// may still be left out by another sender (proto3 defaults).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    #[serde(default)]
    offset: Int64,
    #[serde(default, alias = "delivery_attempt")]
    delivery_attempt: u32,
    #[serde(default)]
    key: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    payload: String,
}

/// A 64-bit integer, a string in proto3 JSON, which also accepts a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Int64 {
    Text(String),
    Number(u64),
}

impl Default for Int64 {
    fn default() -> Self {
        Self::Number(0)
    }
}

impl PushedMessage {
    /// Decodes the body of a push.
    ///
    /// # Errors
    /// When `body` is not a pushed message, or its payload or offset does
    /// not decode.
    pub fn from_json(body: &[u8]) -> Result<Self, PushError> {
        let body: Body = serde_json::from_slice(body).map_err(PushError::Json)?;
        let message = body.message;
        let offset = match message.offset {
            Int64::Number(offset) => offset,
            Int64::Text(text) => text.parse().map_err(|_| PushError::Offset(text))?,
        };
        Ok(Self {
            subscription: body.subscription,
            offset,
            delivery_attempt: message.delivery_attempt,
            key: message.key,
            attributes: message.attributes,
            payload: decode_base64(&message.payload).ok_or(PushError::Payload)?,
        })
    }
}

/// Decodes base64 as the proto3 JSON mapping writes `bytes`: the standard
/// or the URL-safe alphabet, with or without padding. `None` when `text`
/// is not base64.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const EITHER_PADDING: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, EITHER_PADDING);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, EITHER_PADDING);
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// What [`ensure_push_subscription`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The subscription was missing and is created.
    Created,
    /// It existed with another push configuration, which is replaced.
    Updated,
    /// It existed as wanted.
    Unchanged,
}

/// Why [`ensure_push_subscription`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// A subscription of that name reads another topic.
    #[error("subscription {name:?} exists on topic {topic:?}; delete it or choose another name")]
    OtherTopic {
        /// The subscription.
        name: String,
        /// The topic it reads.
        topic: String,
    },
    /// The broker refused or could not be reached.
    #[error("cannot set up push subscription {name:?}")]
    Broker {
        /// The subscription.
        name: String,
        /// Why.
        #[source]
        source: tidings_client::Error,
    },
}

/// Makes sure the subscription `config.name` exists on `config.topic` and
/// pushes as `push` says. A missing subscription is created as `config`
/// says, with `push`. One that exists keeps its settings (an operator may
/// have set a retry or dead-letter policy) except its push configuration,
/// which is replaced when it differs: another endpoint (the service moved)
/// or other headers (another token).
///
/// # Errors
/// [`EnsureError::OtherTopic`] when the name is taken on another topic,
/// [`EnsureError::Broker`] when the broker refuses.
pub async fn ensure_push_subscription(
    client: &Client,
    config: SubscriptionConfig,
    push: PushConfig,
) -> Result<Ensured, EnsureError> {
    let (name, topic) = (config.name.clone(), config.topic.clone());
    let broker = |source| EnsureError::Broker {
        name: name.clone(),
        source,
    };
    let existing = match client.get_subscription(&name).await {
        Ok(existing) => existing,
        Err(err) if err.code() == tonic::Code::NotFound => {
            match client
                .create_subscription(config.push_config(push.clone()))
                .await
            {
                Ok(_) => return Ok(Ensured::Created),
                // Created meanwhile by another process: check it as found.
                Err(err) if err.code() == tonic::Code::AlreadyExists => {
                    client.get_subscription(&name).await.map_err(broker)?
                }
                Err(err) => return Err(broker(err)),
            }
        }
        Err(err) => return Err(broker(err)),
    };
    if existing.topic != topic {
        return Err(EnsureError::OtherTopic {
            name,
            topic: existing.topic,
        });
    }
    if existing.push_config.as_ref() == Some(&push) {
        return Ok(Ensured::Unchanged);
    }
    let update = SubscriptionUpdate::default().push_config(Some(push));
    client
        .update_subscription(&name, update)
        .await
        .map_err(broker)?;
    Ok(Ensured::Updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_both_alphabets_with_or_without_padding() {
        assert_eq!(decode_base64(""), Some(vec![]));
        assert_eq!(
            decode_base64("eyJ0b3RhbCI6IDQyfQ=="),
            Some(br#"{"total": 42}"#.to_vec())
        );
        assert_eq!(
            decode_base64("eyJ0b3RhbCI6IDQyfQ"),
            Some(br#"{"total": 42}"#.to_vec())
        );
        assert_eq!(decode_base64("Zm9vYmE="), Some(b"fooba".to_vec()));
        assert_eq!(decode_base64("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(decode_base64("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn what_is_not_base64_is_refused() {
        assert_eq!(decode_base64("Zm9v!"), None);
        assert_eq!(decode_base64("Zm9vY"), None, "one digit short of a byte");
        assert_eq!(decode_base64("Zm=9v"), None, "padding inside");
        assert_eq!(decode_base64("Zg==="), None, "too much padding");
    }

    #[test]
    fn a_pushed_body_decodes_as_the_broker_writes_it() {
        let body = br#"{"subscription": "notify", "message": {"offset": "7",
            "payload": "eyJ0b3RhbCI6IDQyfQ==", "key": "order-7",
            "attributes": {"currency": "EUR"}, "publishTime": "2026-12-03T10:00:00.123Z",
            "deliveryAttempt": 2, "ackId": "4-0-1", "id": ""}}"#;
        let pushed = PushedMessage::from_json(body).expect("decodes");
        assert_eq!(pushed.subscription, "notify");
        assert_eq!(pushed.offset, 7);
        assert_eq!(pushed.delivery_attempt, 2);
        assert_eq!(pushed.key, "order-7");
        assert_eq!(pushed.attributes["currency"], "EUR");
        assert_eq!(pushed.payload, br#"{"total": 42}"#);
    }

    #[test]
    fn a_body_that_is_not_a_push_says_why() {
        let not_json = PushedMessage::from_json(b"hello");
        assert!(matches!(not_json, Err(PushError::Json(_))), "{not_json:?}");
        let bad_offset =
            PushedMessage::from_json(br#"{"subscription": "s", "message": {"offset": "x"}}"#);
        assert!(
            matches!(bad_offset, Err(PushError::Offset(_))),
            "{bad_offset:?}"
        );
        let bad_payload =
            PushedMessage::from_json(br#"{"subscription": "s", "message": {"payload": "%"}}"#);
        assert!(
            matches!(bad_payload, Err(PushError::Payload)),
            "{bad_payload:?}"
        );
    }
}
