//! Property tests of the codec: decoding arbitrary bytes never panics
//! (it decodes or answers `Corrupt`), and whatever is encoded decodes to
//! itself. 256 cases each; `PROPTEST_CASES=10000 cargo test -p
//! tidings-server --lib codec::fuzz` runs more.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::storage::{
    DeadLetterPolicy, PushConfig, Retention, RetryPolicy, SubscriptionSettings, TopicSettings,
};

/// Times the codec keeps: whole microseconds, up to the year 2200.
fn time() -> impl Strategy<Value = SystemTime> {
    (0..7_258_118_400_000_000u64).prop_map(|micros| UNIX_EPOCH + Duration::from_micros(micros))
}

fn duration() -> impl Strategy<Value = Duration> {
    (0..1_000_000_000u64, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n))
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,40}"
}

fn offsets() -> impl Strategy<Value = OffsetRanges> {
    prop::collection::vec(prop_oneof![0..64u64, any::<u64>()], 0..24).prop_map(|offsets| {
        let mut ranges = OffsetRanges::new();
        for offset in offsets {
            ranges.insert(offset);
        }
        ranges
    })
}

prop_compose! {
    fn new_message()(
        payload in prop::collection::vec(any::<u8>(), 0..64),
        key in "\\PC{0,12}",
        attributes in prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4),
        id in prop_oneof![Just(String::new()), "\\PC{1,16}"],
        deliver_at in prop::option::of(time()),
    ) -> NewMessage {
        NewMessage {
            payload: Bytes::from(payload),
            key,
            attributes,
            id: id.into(),
            deliver_at,
            deliver_after: None,
        }
    }
}

prop_compose! {
    fn topic_record()(
        id in any::<u64>(),
        name in name(),
        (first_offset, next_offset) in (any::<u64>(), any::<u64>()),
        created in time(),
        max_age in prop::option::of(duration()),
        max_messages in prop::option::of(1..u64::MAX),
        max_bytes in prop::option::of(1..u64::MAX),
        discard_acked in any::<bool>(),
        dedup_window in duration(),
        memory in any::<bool>(),
    ) -> TopicRecord {
        TopicRecord {
            id: TopicId(id),
            name: TopicName::new(name).expect("the pattern makes valid names"),
            first_offset,
            next_offset,
            created,
            settings: TopicSettings {
                retention: Retention { max_age, max_messages, max_bytes, discard_acked },
                dedup_window,
            },
            retained_bytes: 0,
            storage: if memory { StorageClass::Memory } else { StorageClass::Disk },
        }
    }
}

prop_compose! {
    fn push_config()(
        endpoint in "\\PC{0,30}",
        headers in prop::collection::btree_map("[a-z-]{1,10}", "\\PC{0,10}", 0..4),
        max_outstanding in any::<u32>(),
    ) -> PushConfig {
        PushConfig { endpoint, headers: headers.into_iter().collect::<BTreeMap<_, _>>(), max_outstanding }
    }
}

prop_compose! {
    fn subscription_record()(
        (id, topic) in (any::<u64>(), any::<u64>()),
        name in name(),
        created in time(),
        ack_deadline in duration(),
        filter in "\\PC{0,30}",
        retry in prop::option::of((duration(), duration())),
        ordered in any::<bool>(),
        dead_letter in prop::option::of((name(), any::<u32>())),
        delivery_delay in duration(),
        push in prop::option::of(push_config()),
    ) -> SubscriptionRecord {
        SubscriptionRecord {
            id: SubscriptionId(id),
            name: SubscriptionName::new(name).expect("the pattern makes valid names"),
            topic: TopicId(topic),
            settings: SubscriptionSettings {
                ack_deadline,
                filter,
                retry: retry.map(|(minimum_backoff, maximum_backoff)| RetryPolicy {
                    minimum_backoff,
                    maximum_backoff,
                }),
                ordered,
                dead_letter: dead_letter.map(|(topic, max_delivery_attempts)| DeadLetterPolicy {
                    topic: TopicName::new(topic).expect("the pattern makes valid names"),
                    max_delivery_attempts,
                }),
                delivery_delay,
                push,
            },
            created,
        }
    }
}

/// Decoding `bytes` gives a value or `Corrupt`, never a panic or another
/// error.
fn decodes_or_corrupt<T: std::fmt::Debug>(decoded: StoreResult<T>) -> Result<(), TestCaseError> {
    if let Err(err) = decoded {
        prop_assert!(matches!(err, StoreError::Corrupt { .. }), "{:?}", err);
    }
    Ok(())
}

/// Bytes that decoders see: arbitrary, or a valid value cut or altered.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let valid = (new_message(), time()).prop_map(|(m, t)| encode_message(t, &m));
    let altered = (
        valid,
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(mut bytes, at, byte, cut)| {
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                if cut {
                    bytes.truncate(at);
                } else {
                    bytes[at] = byte;
                }
            }
            bytes
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..80),
        1 => altered,
        1 => subscription_record().prop_map(|r| encode_subscription(&r)),
        1 => topic_record().prop_map(|r| encode_topic(&r)),
        1 => prop::collection::vec((any::<u128>(), any::<u32>()), 0..4)
            .prop_map(|ids| encode_ids(0, ids.into_iter().map(|(id, gap)| (id, u64::from(gap))))),
    ]
}

/// Offsets anywhere, and near the top of the range.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), u64::MAX - 1000..=u64::MAX]
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(
        bytes in value(),
        (first, next) in (offset(), offset()),
    ) {
        decodes_or_corrupt(decode_message(first, Bytes::from(bytes.clone())))?;
        decodes_or_corrupt(decode_publish_time(&bytes))?;
        decodes_or_corrupt(decode_head(&bytes))?;
        decodes_or_corrupt(message_key_offset(&bytes))?;
        decodes_or_corrupt(decode_timed_key("key", &bytes))?;
        decodes_or_corrupt(decode_delayed_key(&bytes))?;
        decodes_or_corrupt(decode_ids(first, &bytes))?;
        decodes_or_corrupt(decode_u64("value", &bytes))?;
        decodes_or_corrupt(decode_ack_state(&bytes))?;
        decodes_or_corrupt(decode_dead_letters(&bytes))?;
        decodes_or_corrupt(decode_topic(&bytes, first, next))?;
        decodes_or_corrupt(decode_subscription(&bytes))?;
        decodes_or_corrupt(decode_delivery(&bytes))?;
    }

    #[test]
    fn messages_round_trip(message in new_message(), published in time(), offset in any::<u64>()) {
        let encoded = encode_message(published, &message);
        prop_assert_eq!(encoded.len(), encoded_len(&message, published));
        let decoded = decode_message(offset, Bytes::from(encoded.clone())).expect("decodes");
        let expected = StoredMessage {
            offset,
            publish_time: published,
            payload: message.payload.clone(),
            key: message.key.clone(),
            attributes: message.attributes.clone(),
            id: message.id.clone(),
            deliver_at: message.due(published),
        };
        prop_assert_eq!(decoded, expected);
        prop_assert_eq!(decode_publish_time(&encoded).expect("decodes"), published);
    }

    #[test]
    fn records_round_trip(topic in topic_record(), subscription in subscription_record()) {
        let decoded = decode_topic(&encode_topic(&topic), topic.first_offset, topic.next_offset);
        prop_assert_eq!(decoded.expect("decodes"), topic);
        let decoded = decode_subscription(&encode_subscription(&subscription));
        prop_assert_eq!(decoded.expect("decodes"), subscription);
    }

    #[test]
    fn delivery_state_round_trips(
        floor in any::<u64>(),
        acked in offsets(),
        dead in offsets(),
        rejected in any::<u64>(),
        failures in any::<u32>(),
        redeliver_at in prop::option::of(time()),
    ) {
        let mut state = AckState::starting_at(floor);
        for range in acked.ranges() {
            for offset in range.take(8) {
                state.ack(offset);
            }
        }
        prop_assert_eq!(decode_ack_state(&encode_ack_state(&state)).expect("decodes"), state);
        let dead = DeadLetters { offsets: dead, rejected };
        let decoded = decode_dead_letters(&encode_dead_letters(&dead)).expect("decodes");
        prop_assert_eq!(decoded, dead);
        let record = DeliveryRecord { failures, redeliver_at };
        prop_assert_eq!(decode_delivery(&encode_delivery(&record)).expect("decodes"), record);
    }

    #[test]
    fn keys_and_ids_round_trip(
        (topic, offset, first) in (any::<u64>(), any::<u64>(), any::<u64>()),
        at in time(),
        ids in prop::collection::vec((any::<u128>(), any::<u32>()), 0..8),
        (next, retained) in (any::<u64>(), any::<u64>()),
    ) {
        prop_assert_eq!(message_key_offset(&message_key(TopicId(topic), offset)).expect("decodes"), offset);
        let key = delayed_key(TopicId(topic), at, offset);
        prop_assert_eq!(decode_delayed_key(&key).expect("decodes"), (at, offset));
        let first = first.min(u64::MAX - u64::from(u32::MAX));
        let ids: Vec<(u128, Offset)> =
            ids.into_iter().map(|(id, gap)| (id, first + u64::from(gap))).collect();
        let encoded = encode_ids(first, ids.iter().copied());
        prop_assert_eq!(decode_ids(first, &encoded).expect("decodes"), ids);
        prop_assert_eq!(decode_head(&encode_head(next, retained)).expect("decodes"), (next, Some(retained)));
    }
}
