//! The broker's own decoding of `PublishRequest`: the same messages on the
//! wire as `tidings.v1.PublishRequest` and `PublishMessage`, but a
//! message's `id` is kept as a slice of the request's buffer, as its
//! payload is, instead of being copied into a `String` of its own.
//!
//! Publishing with ids costs an allocation per message otherwise (made on
//! a request thread, freed on the writer's), which is most of what ids add
//! to a publish after the remembered-ids table itself. `Publish` and
//! `PublishStream` arrive as these types (see `routes.rs`); the HTTP bus
//! and everything else that holds a `v1::PublishRequest` converts it with
//! [`From`], which moves its strings without copying them.
//!
//! A `string` and a `bytes` field are encoded alike, so only UTF-8 is left
//! to check, which [`crate::grpc::convert`] does when it turns the message
//! into a [`NewMessage`](crate::storage::NewMessage). The tests below hold
//! these types to the descriptor: a field added to the proto must be added
//! here too.

use std::collections::HashMap;

use bytes::Bytes;
use tidings::v1;

/// `tidings.v1.PublishRequest`, as the broker decodes it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PublishRequest {
    /// The topic to append to.
    #[prost(string, tag = "1")]
    pub(crate) topic: String,
    /// The messages, in order.
    #[prost(message, repeated, tag = "2")]
    pub(crate) messages: Vec<PublishMessage>,
}

/// `tidings.v1.PublishMessage`, as the broker decodes it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PublishMessage {
    /// The body.
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
    /// The ordering key.
    #[prost(string, tag = "2")]
    pub(crate) key: String,
    /// The attributes.
    #[prost(map = "string, string", tag = "3")]
    pub(crate) attributes: HashMap<String, String>,
    /// The idempotency key: a `string` on the wire, not yet checked to be
    /// UTF-8.
    #[prost(bytes = "bytes", tag = "4")]
    pub(crate) id: Bytes,
    /// The delivery delay.
    #[prost(message, optional, tag = "5")]
    pub(crate) deliver_after: Option<prost_types::Duration>,
    /// The delivery time.
    #[prost(message, optional, tag = "6")]
    pub(crate) deliver_at: Option<prost_types::Timestamp>,
}

impl From<v1::PublishRequest> for PublishRequest {
    fn from(request: v1::PublishRequest) -> Self {
        Self {
            topic: request.topic,
            messages: request.messages.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<v1::PublishMessage> for PublishMessage {
    fn from(message: v1::PublishMessage) -> Self {
        Self {
            payload: message.payload,
            key: message.key,
            attributes: message.attributes,
            id: Bytes::from(message.id),
            deliver_after: message.deliver_after,
            deliver_at: message.deliver_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::DescriptorPool;
    use tidings::v1;

    use super::{PublishMessage, PublishRequest};

    /// The fields of `message` in the descriptor: number, name, and whether
    /// it is a list or a map.
    fn fields(message: &str) -> Vec<(u32, String, bool, bool)> {
        let pool = DescriptorPool::decode(tidings::FILE_DESCRIPTOR_SET).expect("the descriptor");
        let message = pool.get_message_by_name(message).expect("the message");
        let mut fields: Vec<_> = message
            .fields()
            .map(|f| (f.number(), f.name().to_owned(), f.is_list(), f.is_map()))
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn the_mirrors_have_every_field_of_the_proto() {
        let expected = |names: &[(u32, &str, bool, bool)]| -> Vec<_> {
            names
                .iter()
                .map(|&(n, name, list, map)| (n, name.to_owned(), list, map))
                .collect()
        };
        // A field added to the proto fails here: add it to the mirror
        // (and to the round trip below), or `Publish` would drop it.
        assert_eq!(
            fields("tidings.v1.PublishRequest"),
            expected(&[(1, "topic", false, false), (2, "messages", true, false)])
        );
        assert_eq!(
            fields("tidings.v1.PublishMessage"),
            expected(&[
                (1, "payload", false, false),
                (2, "key", false, false),
                (3, "attributes", false, true),
                (4, "id", false, false),
                (5, "deliver_after", false, false),
                (6, "deliver_at", false, false),
            ])
        );
    }

    fn every_field_set() -> v1::PublishRequest {
        v1::PublishRequest {
            topic: "orders".into(),
            messages: vec![
                v1::PublishMessage {
                    payload: "placed".into(),
                    key: "order-1".into(),
                    attributes: [("kind".into(), "placed".into())].into(),
                    id: "order-1/placed".into(),
                    deliver_after: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 5,
                    }),
                    deliver_at: Some(prost_types::Timestamp {
                        seconds: 1_800_000_000,
                        nanos: 7,
                    }),
                },
                v1::PublishMessage::default(),
            ],
        }
    }

    #[test]
    fn a_request_decodes_and_converts_to_the_same_values() -> Result<(), prost::DecodeError> {
        let sent = every_field_set();
        let decoded = PublishRequest::decode(sent.encode_to_vec().as_slice())?;
        assert_eq!(decoded, PublishRequest::from(sent.clone()));
        assert_eq!(&decoded.messages[0].id[..], b"order-1/placed");
        // And back: nothing was lost on the way.
        assert_eq!(
            v1::PublishRequest::decode(decoded.encode_to_vec().as_slice())?,
            sent
        );
        Ok(())
    }

    #[test]
    fn an_id_is_a_slice_of_the_request_not_a_copy() -> Result<(), prost::DecodeError> {
        let buffer = bytes::Bytes::from(every_field_set().encode_to_vec());
        let decoded = PublishRequest::decode(buffer.clone())?;
        let id = decoded.messages[0].id.as_ptr_range();
        let whole = buffer.as_ptr_range();
        assert!(whole.start <= id.start && id.end <= whole.end);
        Ok(())
    }

    #[test]
    fn an_id_that_is_not_utf8_still_decodes_for_the_broker_to_refuse() {
        let message = PublishMessage {
            id: bytes::Bytes::from_static(b"\xff\xfe"),
            ..PublishMessage::default()
        };
        let encoded = PublishRequest {
            topic: "orders".into(),
            messages: vec![message.clone()],
        }
        .encode_to_vec();
        assert!(v1::PublishRequest::decode(encoded.as_slice()).is_err());
        let decoded = PublishRequest::decode(encoded.as_slice()).map(|r| r.messages);
        assert_eq!(decoded, Ok(vec![message]));
    }
}
