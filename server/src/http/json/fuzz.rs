//! Property tests of the HTTP bus's JSON bodies: any body decodes as each
//! request message or is refused as a syntax error (400, never a 500),
//! and what the codec writes it reads back to the same JSON. 256 cases each;
//! `PROPTEST_CASES=10000 cargo test -p tidings-server --lib json::fuzz`
//! runs more.

use proptest::prelude::*;
use serde_json::Value;
use tidings::v1;

use super::*;
use crate::fuzzing::message;

/// Field names the bodies use (both spellings), and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&[
            "messages", "payload", "key", "attributes", "id", "deliverAt", "deliver_at",
            "deliverAfter", "deliver_after", "offsets", "ackIds", "ack_ids", "delay", "error",
            "maxMessages", "max_messages", "wait", "topic", "subscription", "seconds", "nanos",
        ][..]).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

/// JSON values of every kind, nested.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            "-?[0-9]{1,25}(\\.[0-9]{0,12})?(e[0-9]{1,4})?s?",
            "[A-Za-z0-9+/=_-]{0,16}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?",
            "\\PC{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Bodies: JSON (mostly objects), and bytes that need not be JSON.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => "[ \t\r\n]{0,4}".prop_map(String::into_bytes),
    ]
}

/// A body is read as the message or refused as bad syntax, never as a
/// failure of the broker.
fn read_or_refused<T: Message + Default>(
    codec: &JsonCodec,
    name: &str,
    body: &[u8],
) -> Result<(), TestCaseError> {
    match codec.decode::<T>(name, body) {
        Ok(_) | Err(JsonError::Syntax { .. }) => Ok(()),
        Err(err) => Err(TestCaseError::fail(format!("{name}: {err}"))),
    }
}

/// Writes `message`, reads it back and writes it again: the same JSON.
/// (Reading may normalise: a duration of 1 s and -999999999 ns comes
/// back as 1 ns, as JSON wrote it.)
fn round_trips<T>(codec: &JsonCodec, name: &str, message: &T) -> Result<(), TestCaseError>
where
    T: Message + Default + PartialEq + std::fmt::Debug,
{
    let Ok(json) = codec.encode(name, message) else {
        // Values JSON cannot carry (an out-of-range duration, say).
        return Ok(());
    };
    let read: T = codec
        .decode(name, &json)
        .map_err(|err| TestCaseError::fail(format!("{name}: {err}")))?;
    let again = codec
        .encode(name, &read)
        .map_err(|err| TestCaseError::fail(format!("{name}: {err}")))?;
    // As JSON values: maps come out in any order.
    let parse =
        |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).expect("the codec writes JSON");
    prop_assert_eq!(parse(&again), parse(&json));
    Ok(())
}

proptest! {
    #[test]
    fn any_body_is_read_or_refused_as_bad_syntax(body in body()) {
        let codec = JsonCodec::new().expect("the API's descriptors decode");
        read_or_refused::<v1::PublishRequest>(&codec, "tidings.v1.PublishRequest", &body)?;
        read_or_refused::<v1::PullRequest>(&codec, "tidings.v1.PullRequest", &body)?;
        read_or_refused::<v1::AckRequest>(&codec, "tidings.v1.AckRequest", &body)?;
        read_or_refused::<v1::NackRequest>(&codec, "tidings.v1.NackRequest", &body)?;
    }

    #[test]
    fn what_is_written_reads_back(
        publish in message::<v1::PublishRequest>(),
        nack in message::<v1::NackRequest>(),
        pulled in message::<v1::PullResponse>(),
    ) {
        let codec = JsonCodec::new().expect("the API's descriptors decode");
        round_trips(&codec, "tidings.v1.PublishRequest", &publish)?;
        round_trips(&codec, "tidings.v1.NackRequest", &nack)?;
        round_trips(&codec, "tidings.v1.PullResponse", &pulled)?;
    }
}
