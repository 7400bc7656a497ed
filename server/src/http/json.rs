//! The proto3 JSON mapping of the API's messages, by prost-reflect over the
//! same descriptor set that gRPC reflection serves.
//!
//! JSON is read into a dynamic message and re-encoded as protobuf for the
//! generated type, and the other way round on output. That costs a copy of
//! each message, which is small beside an HTTP request, and in return every
//! rule of the mapping (base64 bytes, 64-bit integers as strings, durations
//! as `"5s"`, RFC 3339 timestamps, camelCase or proto names on input) comes
//! from one library instead of code written per message.

use prost::Message;
use prost_reflect::{
    DescriptorError, DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor,
    SerializeOptions,
};

/// Reads and writes the API's messages as JSON.
#[derive(Debug, Clone)]
pub(crate) struct JsonCodec {
    pool: DescriptorPool,
}

/// Why a request body is not the message it should be.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    /// Not JSON, or JSON that does not fit the message; says where.
    #[error("the body is not a valid {message}: {cause}")]
    Syntax {
        /// The message's full name.
        message: String,
        /// What serde_json found, with its line and column.
        cause: serde_json::Error,
    },
    /// A message outside the descriptor set: a bug of the broker.
    #[error("no message {0} in the API's descriptors")]
    Unknown(String),
    /// The dynamic message did not convert: a bug of the broker.
    #[error("cannot convert {message}: {detail}")]
    Convert {
        /// The message's full name.
        message: String,
        /// What failed.
        detail: String,
    },
}

impl JsonCodec {
    /// A codec over the API's descriptor set.
    ///
    /// # Errors
    /// When the descriptor set built into the API crate does not decode.
    pub(crate) fn new() -> Result<Self, DescriptorError> {
        Ok(Self {
            pool: DescriptorPool::decode(tidings::FILE_DESCRIPTOR_SET)?,
        })
    }

    fn descriptor(&self, name: &str) -> Result<MessageDescriptor, JsonError> {
        self.pool
            .get_message_by_name(name)
            .ok_or_else(|| JsonError::Unknown(name.to_owned()))
    }

    /// Reads `body` as the message named `name` (`tidings.v1.…`); an empty
    /// body is the empty message. Unknown fields are errors.
    ///
    /// # Errors
    /// [`JsonError::Syntax`] for a body that is not that message in JSON.
    pub(crate) fn decode<T: Message + Default>(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<T, JsonError> {
        let desc = self.descriptor(name)?;
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            body
        };
        let syntax = |cause| JsonError::Syntax {
            message: name.to_owned(),
            cause,
        };
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let dynamic = DynamicMessage::deserialize_with_options(
            desc,
            &mut deserializer,
            &DeserializeOptions::new(),
        )
        .map_err(syntax)?;
        deserializer.end().map_err(syntax)?;
        T::decode(dynamic.encode_to_vec().as_slice()).map_err(|err| JsonError::Convert {
            message: name.to_owned(),
            detail: err.to_string(),
        })
    }

    /// Writes `message`, named `name`, as JSON with camelCase names and
    /// every field, default values included.
    ///
    /// # Errors
    /// Only for a broker bug (a name outside the descriptors).
    pub(crate) fn encode<T: Message>(&self, name: &str, message: &T) -> Result<Vec<u8>, JsonError> {
        let convert = |detail: String| JsonError::Convert {
            message: name.to_owned(),
            detail,
        };
        let dynamic =
            DynamicMessage::decode(self.descriptor(name)?, message.encode_to_vec().as_slice())
                .map_err(|err| convert(err.to_string()))?;
        let mut serializer = serde_json::Serializer::new(Vec::new());
        dynamic
            .serialize_with_options(
                &mut serializer,
                &SerializeOptions::new().skip_default_fields(false),
            )
            .map_err(|err| convert(err.to_string()))?;
        Ok(serializer.into_inner())
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use tidings::v1;

    use super::*;

    fn codec() -> JsonCodec {
        JsonCodec::new().expect("the API's descriptors decode")
    }

    #[test]
    fn reads_camel_case_and_proto_names_bytes_as_base64_and_durations() {
        let codec = codec();
        let camel: v1::NackRequest = codec
            .decode(
                "tidings.v1.NackRequest",
                br#"{"ackIds": ["1-2-3"], "offsets": ["7", 8], "delay": "1.5s"}"#,
            )
            .expect("decodes");
        let snake: v1::NackRequest = codec
            .decode(
                "tidings.v1.NackRequest",
                br#"{"ack_ids": ["1-2-3"], "offsets": ["7", 8], "delay": "1.5s"}"#,
            )
            .expect("decodes");
        assert_eq!(camel, snake);
        assert_eq!(camel.offsets, vec![7, 8]);
        assert_eq!(
            camel.delay,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let publish: v1::PublishRequest = codec
            .decode(
                "tidings.v1.PublishRequest",
                br#"{"messages": [{"payload": "aGk=", "attributes": {"a": "b"}}]}"#,
            )
            .expect("decodes");
        assert_eq!(publish.messages[0].payload.as_ref(), b"hi");
    }

    #[test]
    fn an_empty_body_is_the_empty_message() {
        let pull: v1::PullRequest = codec()
            .decode("tidings.v1.PullRequest", b" \n")
            .expect("decodes");
        assert_eq!(pull, v1::PullRequest::default());
    }

    #[test]
    fn bad_json_says_where() {
        let codec = codec();
        for (body, expected) in [
            (
                &br#"{"messages": [}"#[..],
                "expected value at line 1 column 15",
            ),
            (
                br#"{"nope": 1}"#,
                "unrecognized field name 'nope' at line 1",
            ),
            (
                br#"{"messages": [{"payload": "not base64!"}]}"#,
                "invalid base64",
            ),
            (br#"{} trailing"#, "trailing characters at line 1 column 4"),
        ] {
            let err = codec
                .decode::<v1::PublishRequest>("tidings.v1.PublishRequest", body)
                .expect_err("refused");
            let text = err.to_string();
            assert!(
                text.starts_with("the body is not a valid tidings.v1.PublishRequest: "),
                "{text}"
            );
            assert!(text.contains(expected), "{body:?}: {text}");
        }
    }

    #[test]
    fn writes_defaults_64_bit_integers_as_strings_and_camel_case() {
        let json = codec()
            .encode(
                "tidings.v1.PublishResponse",
                &v1::PublishResponse {
                    offsets: vec![0, 1 << 60],
                    duplicates: vec![false, true],
                },
            )
            .expect("encodes");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"offsets": ["0", "1152921504606846976"], "duplicates": [false, true]})
        );
        let json = codec()
            .encode(
                "tidings.v1.ReceivedMessage",
                &v1::ReceivedMessage::default(),
            )
            .expect("encodes");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(value["offset"], "0");
        assert_eq!(value["deliveryAttempt"], 0);
        assert_eq!(value["ackId"], "");
    }
}
