//! Proptest strategies for the property tests that throw arbitrary input
//! at the broker: [`message`] makes any protobuf message type, mostly
//! invalid as a request and sometimes valid, without a hand-written
//! generator per type.
//!
//! Most messages are built from the API's schema (its descriptors): each
//! field set or not, with a value of its type — numbers at the edges,
//! text that may or may not be a valid name (names come from a small set
//! often, so that requests meet what earlier ones created), nested
//! messages, lists and maps. The others are built the way a decoder sees
//! a message: a run of wire-format fields with arbitrary numbers, wire
//! types and values, each merged on its own, those that do not fit left
//! out.
//!
//! Compiled for the crate's own tests, and for other crates' with the
//! `fuzzing` feature.

use proptest::prelude::*;
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    Value as ReflectValue,
};

/// One wire-format field.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    Bytes(u32, Vec<u8>),
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Field::Varint(tag, value) => {
                encode_key(*tag, WireType::Varint, out);
                encode_varint(*value, out);
            }
            Field::Fixed32(tag, value) => {
                encode_key(*tag, WireType::ThirtyTwoBit, out);
                out.put_u32_le(*value);
            }
            Field::Fixed64(tag, value) => {
                encode_key(*tag, WireType::SixtyFourBit, out);
                out.put_u64_le(*value);
            }
            Field::Bytes(tag, value) => {
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(value.len() as u64, out);
                out.put_slice(value);
            }
        }
    }
}

/// Field numbers: those the requests use (the first few, which name the
/// topic or subscription, most), and some beyond.
fn tag() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1..=2u32, 8 => 3..=12u32, 1 => 13..=40u32]
}

/// Integers near the edges as often as anywhere.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..8u64,
        2 => any::<u64>(),
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
        // Negative numbers as a varint encodes them.
        1 => (-100i64..0).prop_map(|n| n as u64),
        1 => Just(i64::MAX as u64),
    ]
}

/// The names [`text`] gives most often: a test that creates topics and
/// subscriptions of these names has random requests meet them.
pub const NAMES: &[&str] = &["a", "b", "orders", "dlq"];

/// Text that requests carry: some valid names, and much that is not.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        // A few names again and again, so that requests meet what earlier
        // ones created.
        3 => prop::sample::select(NAMES).prop_map(str::to_owned),
        2 => "[a-z][a-z0-9._-]{0,6}",
        1 => Just(String::new()),
        1 => "[0-9]{1,20}",
        1 => "[0-9]{1,6}-[0-9]{1,6}-[0-9]{1,6}",
        1 => "(attributes:|attributes\\.|hasPrefix\\(|NOT |AND |OR |[ ()=\":a-z]){0,12}",
        1 => "[0-9]{1,5}(ns|us|ms|s|m|h|d|KiB|MiB|GiB|B|x)?",
        2 => "\\PC{0,24}",
        1 => "[a-z]{250,300}",
        1 => "(https?://)?[a-z:/.0-9]{0,30}",
    ]
}

/// Length-delimited values: text or bytes, or (while `depth` lasts) a
/// nested run of fields.
fn value(depth: u32) -> BoxedStrategy<Vec<u8>> {
    let leaf = prop_oneof![
        3 => text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let nested = prop::collection::vec(field_with(value(depth - 1)), 0..6)
        .prop_map(|fields| encode(&fields));
    prop_oneof![1 => leaf, 1 => nested].boxed()
}

/// Runs of fields, nested up to `depth` deep in length-delimited values.
fn fields(depth: u32) -> BoxedStrategy<Vec<Field>> {
    prop::collection::vec(field_with(value(depth)), 0..10).boxed()
}

fn field_with(bytes: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (tag(), number()).prop_map(|(t, v)| Field::Varint(t, v)),
        1 => (tag(), any::<u32>()).prop_map(|(t, v)| Field::Fixed32(t, v)),
        1 => (tag(), any::<u64>()).prop_map(|(t, v)| Field::Fixed64(t, v)),
        5 => (tag(), bytes).prop_map(|(t, v)| Field::Bytes(t, v)),
    ]
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        field.encode(&mut out);
    }
    out
}

/// Any message of type `M`: mostly built from its schema (each field set
/// or not, with values of its type: edge numbers, names valid or not,
/// nested messages, lists and maps), sometimes merged field by field from
/// arbitrary wire-format fields, those that do not fit left out.
///
/// # Panics
/// When `M` is not a message of the API (`tidings::v1`).
pub fn message<M>() -> impl Strategy<Value = M>
where
    M: Message + Default + Clone + std::fmt::Debug,
{
    // `tidings::v1::PublishRequest` is `tidings.v1.PublishRequest`.
    let name = std::any::type_name::<M>().replace("::", ".");
    let pool = DescriptorPool::decode(tidings::FILE_DESCRIPTOR_SET).expect("the API's descriptors");
    let descriptor = pool
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is not a message of the API"));
    let typed = dynamic(descriptor, 3).prop_map(|dynamic| {
        M::decode(dynamic.encode_to_vec().as_slice()).expect("the same schema")
    });
    let merged = fields(4).prop_map(|fields| {
        let mut message = M::default();
        let mut encoded = Vec::new();
        for field in fields {
            encoded.clear();
            field.encode(&mut encoded);
            let mut next = message.clone();
            if next.merge(encoded.as_slice()).is_ok() {
                message = next;
            }
        }
        message
    });
    prop_oneof![3 => typed, 1 => merged]
}

/// A message of `descriptor` with each field set or not; sub-messages
/// while `depth` lasts.
fn dynamic(descriptor: MessageDescriptor, depth: u32) -> BoxedStrategy<DynamicMessage> {
    let fields: Vec<BoxedStrategy<Option<(FieldDescriptor, ReflectValue)>>> = descriptor
        .fields()
        .filter_map(|field| {
            let value = field_value(&field, depth)?;
            Some(prop::option::weighted(0.6, value.prop_map(move |v| (field.clone(), v))).boxed())
        })
        .collect();
    fields
        .prop_map(move |set| {
            let mut message = DynamicMessage::new(descriptor.clone());
            for (field, value) in set.into_iter().flatten() {
                message.set_field(&field, value);
            }
            message
        })
        .boxed()
}

/// Values of a field: one, a list or a map as it is declared.
fn field_value(field: &FieldDescriptor, depth: u32) -> Option<BoxedStrategy<ReflectValue>> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return None;
        };
        let key = single(&entry.map_entry_key_field().kind(), depth)?;
        let value = single(&entry.map_entry_value_field().kind(), depth)?;
        let pairs = prop::collection::vec((key, value), 0..4);
        return Some(
            pairs
                .prop_map(|pairs| {
                    let map = pairs
                        .into_iter()
                        .filter_map(|(k, v)| Some((map_key(k)?, v)))
                        .collect();
                    ReflectValue::Map(map)
                })
                .boxed(),
        );
    }
    let one = single(&field.kind(), depth)?;
    if field.is_list() {
        return Some(
            prop::collection::vec(one, 0..4)
                .prop_map(ReflectValue::List)
                .boxed(),
        );
    }
    Some(one)
}

fn map_key(value: ReflectValue) -> Option<MapKey> {
    Some(match value {
        ReflectValue::String(s) => MapKey::String(s),
        ReflectValue::Bool(b) => MapKey::Bool(b),
        ReflectValue::I32(n) => MapKey::I32(n),
        ReflectValue::I64(n) => MapKey::I64(n),
        ReflectValue::U32(n) => MapKey::U32(n),
        ReflectValue::U64(n) => MapKey::U64(n),
        _ => return None,
    })
}

/// One value of a kind; `None` for a message once `depth` is spent.
fn single(kind: &Kind, depth: u32) -> Option<BoxedStrategy<ReflectValue>> {
    // Numbers as varints see them: truncating keeps the edges (0, -1,
    // the maxima) at every width.
    let n = number();
    Some(match kind {
        Kind::Bool => any::<bool>().prop_map(ReflectValue::Bool).boxed(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            n.prop_map(|v| ReflectValue::I32(v as i32)).boxed()
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            n.prop_map(|v| ReflectValue::I64(v as i64)).boxed()
        }
        Kind::Uint32 | Kind::Fixed32 => n.prop_map(|v| ReflectValue::U32(v as u32)).boxed(),
        Kind::Uint64 | Kind::Fixed64 => n.prop_map(ReflectValue::U64).boxed(),
        Kind::Float => any::<f32>().prop_map(ReflectValue::F32).boxed(),
        Kind::Double => any::<f64>().prop_map(ReflectValue::F64).boxed(),
        Kind::String => text().prop_map(ReflectValue::String).boxed(),
        Kind::Bytes => prop_oneof![
            text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..24),
        ]
        .prop_map(|b| ReflectValue::Bytes(b.into()))
        .boxed(),
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            prop_oneof![
                4 => prop::sample::select(known),
                1 => n.prop_map(|v| v as i32),
            ]
            .prop_map(ReflectValue::EnumNumber)
            .boxed()
        }
        Kind::Message(m) => {
            if depth == 0 {
                return None;
            }
            dynamic(m.clone(), depth - 1)
                .prop_map(ReflectValue::Message)
                .boxed()
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use tidings::v1;

    use super::*;

    #[test]
    fn messages_get_nested_fields_set() {
        // Over a few hundred draws, the nested parts a request has are
        // reached: a retry policy's duration, a message's attributes.
        let mut runner = TestRunner::deterministic();
        let strategy = message::<v1::CreateSubscriptionRequest>();
        let mut with_backoff = 0;
        let mut named = 0;
        for _ in 0..500 {
            let request = strategy.new_tree(&mut runner).expect("draws").current();
            let backoff = request.retry_policy.and_then(|p| p.minimum_backoff);
            with_backoff += usize::from(backoff.is_some());
            named += usize::from(!request.name.is_empty());
        }
        assert!(with_backoff > 0 && named > 0, "{with_backoff} {named}");
        let strategy = message::<v1::PublishRequest>();
        let attributes = (0..500)
            .filter(|_| {
                let request = strategy.new_tree(&mut runner).expect("draws").current();
                request.messages.iter().any(|m| !m.attributes.is_empty())
            })
            .count();
        assert!(attributes > 0);
    }
}
