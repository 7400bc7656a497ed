//! The codec's round trips, and its refusals of bad bytes.

use super::*;
use bytestring::ByteString;

fn time(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

fn sample_message() -> NewMessage {
    NewMessage {
        payload: Bytes::from_static(b"\x00payload\xff"),
        key: "order-7".to_owned(),
        attributes: vec![
            ("kind".to_owned(), "placed".to_owned()),
            ("".to_owned(), "ünïcode".to_owned()),
        ],
        id: ByteString::new(),
        deliver_at: None,
        deliver_after: None,
    }
}

fn topic_record() -> TopicRecord {
    TopicRecord {
        id: TopicId(42),
        name: TopicName::new("order.placed").expect("valid name"),
        first_offset: 4,
        next_offset: 9,
        created: time(1_700_000_000_123_456),
        settings: TopicSettings {
            retention: crate::storage::Retention {
                max_age: Some(Duration::new(86_400, 5)),
                max_messages: Some(1000),
                max_bytes: Some(1 << 30),
                discard_acked: true,
            },
            dedup_window: Duration::from_secs(600),
        },
        // Stored with the head, not in the record.
        retained_bytes: 0,
        storage: StorageClass::Disk,
    }
}

fn subscription_record() -> SubscriptionRecord {
    SubscriptionRecord {
        id: SubscriptionId(7),
        name: SubscriptionName::new("inventory").expect("valid name"),
        topic: TopicId(42),
        settings: SubscriptionSettings {
            ack_deadline: Duration::new(30, 5),
            filter: String::new(),
            retry: None,
            ordered: false,
            dead_letter: None,
            delivery_delay: Duration::ZERO,
            push: None,
        },
        created: time(1_700_000_000_000_001),
    }
}

fn ack_state() -> AckState {
    let mut state = AckState::starting_at(10);
    for offset in [12, 13, 20, 1_000_000] {
        state.ack(offset);
    }
    state
}

fn assert_corrupt<T: std::fmt::Debug>(result: StoreResult<T>, input: &[u8]) {
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{input:?} gave {result:?}"
    );
}

#[test]
fn message_round_trips_and_payload_is_sliced() {
    let message = sample_message();
    let value = Bytes::from(encode_message(time(123), &message));
    let decoded = decode_message(5, value.clone()).expect("decodes");
    assert_eq!(decoded.offset, 5);
    assert_eq!(decoded.publish_time, time(123));
    assert_eq!(decoded.key, message.key);
    assert_eq!(decoded.attributes, message.attributes);
    assert_eq!(decoded.payload, message.payload);
    // The payload points into the value: no copy was made.
    let tail = &value[value.len() - message.payload.len()..];
    assert_eq!(decoded.payload.as_ptr(), tail.as_ptr());
    assert_eq!(decode_publish_time(&value).expect("decodes"), time(123));
}

#[test]
fn a_message_id_round_trips_and_its_absence_keeps_the_v1_format() {
    let plain = encode_message(time(7), &sample_message());
    assert_eq!(plain[0], FORMAT_V1);
    let with_id = NewMessage {
        id: "order-7/placed".into(),
        ..sample_message()
    };
    let value = Bytes::from(encode_message(time(7), &with_id));
    assert_eq!(value[0], MESSAGE_V2);
    let decoded = decode_message(3, value.clone()).expect("decodes");
    assert_eq!(decoded.id, with_id.id);
    assert_eq!(decoded.payload, with_id.payload);
    assert_eq!(decoded.attributes, with_id.attributes);
    assert_eq!(decode_publish_time(&value).expect("decodes"), time(7));
    assert_eq!(
        decode_message(3, Bytes::from(plain)).expect("decodes").id,
        ""
    );
    // Every cut inside the header is corrupt, and so is an unknown tag.
    let header = value.len() - with_id.payload.len();
    for cut in 0..header {
        assert_corrupt(decode_message(0, value.slice(..cut)), &value[..cut]);
    }
    let mut newer = value.to_vec();
    let tag_at = header - 1 - 4 - with_id.id.len() - 1;
    newer[tag_at] = 99;
    assert_corrupt(decode_message(0, Bytes::from(newer.clone())), &newer);
}

#[test]
fn remembered_ids_and_timed_keys_round_trip() {
    let ids = [(u128::MAX - 7, 41), (0, 42), (1 << 100, 45)];
    let value = encode_ids(41, ids.iter().copied());
    assert_eq!(value.len(), 1 + 4 + 3 * 20);
    assert_eq!(decode_ids(41, &value).expect("decodes"), ids);
    for cut in 0..value.len() {
        assert_corrupt(decode_ids(41, &value[..cut]), &value[..cut]);
    }
    let key = timed_key(TopicId(9), time(1_700_000_000_000_001), 5);
    assert_eq!(
        decode_timed_key("key", &key).expect("decodes"),
        (TopicId(9), 1_700_000_000_000_001, 5)
    );
    assert_corrupt(decode_timed_key("key", &key[..23]), &key[..23]);
    // Keys of one topic sort by time, then offset.
    assert!(timed_key(TopicId(9), time(1), 9) < timed_key(TopicId(9), time(2), 0));
    assert!(timed_key(TopicId(9), time(2), 0) < timed_key(TopicId(10), time(0), 0));
}

#[test]
fn an_id_past_the_last_offset_is_corrupt_not_an_overflow() {
    // Found by the property tests: a gap that runs past `u64::MAX`.
    let value = encode_ids(0, [(1, u64::from(u32::MAX))].into_iter());
    assert_corrupt(decode_ids(u64::MAX - 5, &value), &value);
    assert_eq!(
        decode_ids(5, &value).expect("decodes")[0].1,
        5 + u64::from(u32::MAX)
    );
}

#[test]
fn empty_message_round_trips() {
    let value = encode_message(time(0), &NewMessage::default());
    let decoded = decode_message(0, Bytes::from(value)).expect("decodes");
    assert!(decoded.payload.is_empty() && decoded.key.is_empty());
    assert!(decoded.attributes.is_empty());
}

#[test]
fn a_subscription_filter_round_trips_and_its_absence_keeps_the_old_format() {
    let plain = subscription_record();
    let mut filtered = plain.clone();
    filtered.settings.filter = r#"attributes.kind = "order""#.to_string();
    let encoded = encode_subscription(&filtered);
    assert_eq!(decode_subscription(&encoded).expect("decodes"), filtered);
    let mut retrying = filtered.clone();
    retrying.settings.retry = Some(RetryPolicy {
        minimum_backoff: Duration::from_millis(1500),
        maximum_backoff: Duration::from_secs(600),
    });
    let both = encode_subscription(&retrying);
    assert_eq!(decode_subscription(&both).expect("decodes"), retrying);
    retrying.settings.filter.clear();
    let retry_only = encode_subscription(&retrying);
    assert_eq!(decode_subscription(&retry_only).expect("decodes"), retrying);
    retrying.settings.ordered = true;
    let ordered = encode_subscription(&retrying);
    assert_eq!(decode_subscription(&ordered).expect("decodes"), retrying);
    retrying.settings.dead_letter = Some(DeadLetterPolicy {
        topic: TopicName::new("orders.dead").expect("valid name"),
        max_delivery_attempts: 5,
    });
    let dead = encode_subscription(&retrying);
    assert_eq!(decode_subscription(&dead).expect("decodes"), retrying);
    // Without a filter, the record is byte for byte what v0.1 wrote:
    // the fixed fields and nothing after the name.
    let old = encode_subscription(&plain);
    assert_eq!(old.len(), 1 + 8 + 8 + 8 + 4 + 8 + 4 + "inventory".len());
    assert_eq!(&encoded[..old.len()], &old[..]);
    // A setting this version does not know is refused, not dropped.
    let mut newer = old.clone();
    newer.extend_from_slice(&[99, 0, 0, 0, 0]);
    assert_corrupt(decode_subscription(&newer), &newer);
}

#[test]
fn the_memory_class_is_one_tag_and_a_disk_record_has_none() {
    let disk = topic_record();
    let memory = TopicRecord {
        storage: StorageClass::Memory,
        ..topic_record()
    };
    let (disk_bytes, memory_bytes) = (encode_topic(&disk), encode_topic(&memory));
    assert_eq!(memory_bytes.len(), disk_bytes.len() + 1);
    assert_eq!(memory_bytes.last(), Some(&MEMORY_TAG));
    assert_eq!(decode_topic(&memory_bytes, 4, 9).expect("decodes"), memory);
    assert_eq!(decode_topic(&disk_bytes, 4, 9).expect("decodes"), disk);
}

#[test]
fn encoded_len_is_the_length_of_the_encoding() {
    let plain = sample_message();
    let with_id = NewMessage {
        id: "order-17".into(),
        ..sample_message()
    };
    let delayed = NewMessage {
        deliver_after: Some(Duration::from_secs(60)),
        ..with_id.clone()
    };
    let at = time(1_700_000_000_000_000);
    for message in [plain, with_id, delayed, NewMessage::default()] {
        let encoded = encode_message(at, &message);
        assert_eq!(encoded_len(&message, at), encoded.len(), "{message:?}");
    }
}

#[test]
fn records_and_ack_states_round_trip() {
    let topic = topic_record();
    assert_eq!(
        decode_topic(&encode_topic(&topic), 4, 9).expect("decodes"),
        topic
    );
    // A record of a topic created before retention existed: no tags,
    // and it keeps everything.
    let old = TopicRecord {
        settings: TopicSettings::default(),
        ..topic_record()
    };
    let bytes = encode_topic(&old);
    assert_eq!(
        bytes.len(),
        1 + 8 + 8 + 4 + "order.placed".len(),
        "version, fields"
    );
    assert_eq!(decode_topic(&bytes, 4, 9).expect("decodes"), old);
    let sub = subscription_record();
    assert_eq!(
        decode_subscription(&encode_subscription(&sub)).expect("decodes"),
        sub
    );
    let state = ack_state();
    assert_eq!(
        decode_ack_state(&encode_ack_state(&state)).expect("decodes"),
        state
    );
    for record in [
        DeliveryRecord {
            failures: 3,
            redeliver_at: Some(time(1_700_000_000_000_007)),
        },
        DeliveryRecord {
            failures: 1,
            redeliver_at: None,
        },
    ] {
        let decoded = decode_delivery(&encode_delivery(&record)).expect("decodes");
        assert_eq!(decoded, record);
    }
    let empty = AckState::default();
    assert_eq!(
        decode_ack_state(&encode_ack_state(&empty)).expect("decodes"),
        empty
    );
    let dead = DeadLetters {
        offsets: ack_state().acked,
        rejected: 7,
    };
    assert_eq!(
        decode_dead_letters(&encode_dead_letters(&dead)).expect("decodes"),
        dead
    );
    let none = DeadLetters::default();
    assert_eq!(
        decode_dead_letters(&encode_dead_letters(&none)).expect("decodes"),
        none
    );
}

#[test]
fn truncated_values_are_corrupt_not_panics() {
    let message = encode_message(time(1), &sample_message());
    // The payload runs to the end, so only cuts inside the header fail.
    let header = message.len() - sample_message().payload.len();
    for cut in 0..header {
        assert_corrupt(
            decode_message(0, Bytes::copy_from_slice(&message[..cut])),
            &message[..cut],
        );
    }
    // A cut between two settings leaves a shorter valid record; every
    // other cut is corrupt.
    let untagged = encode_topic(&TopicRecord {
        settings: TopicSettings::default(),
        ..topic_record()
    });
    let topic = encode_topic(&topic_record());
    let whole_settings = [
        untagged.len(),
        untagged.len() + 13,
        untagged.len() + 22,
        untagged.len() + 23,
        untagged.len() + 32,
    ];
    for cut in (0..topic.len()).filter(|cut| !whole_settings.contains(cut)) {
        assert_corrupt(decode_topic(&topic[..cut], 0, 0), &topic[..cut]);
    }
    let sub = encode_subscription(&subscription_record());
    for cut in 0..sub.len() {
        assert_corrupt(decode_subscription(&sub[..cut]), &sub[..cut]);
    }
    let state = encode_ack_state(&ack_state());
    for cut in 0..state.len() {
        assert_corrupt(decode_ack_state(&state[..cut]), &state[..cut]);
    }
}

#[test]
fn garbage_is_corrupt_not_panics() {
    let inputs: [&[u8]; 5] = [
        b"",
        b"\x09whatever",
        b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        &[1; 64],
        &[0xff; 64],
    ];
    for input in inputs {
        assert_corrupt(decode_message(0, Bytes::copy_from_slice(input)), input);
        assert_corrupt(decode_topic(input, 0, 0), input);
        assert_corrupt(decode_subscription(input), input);
        assert_corrupt(decode_ack_state(input), input);
    }
    // A record is 13 bytes: a format byte, a count and a time.
    for input in [&b""[..], b"\x09whatever", &[1; 12], &[1; 14]] {
        assert_corrupt(decode_delivery(input), input);
    }
    let mut extra = encode_topic(&topic_record());
    extra.push(0);
    assert_corrupt(decode_topic(&extra, 0, 0), &extra);
}

#[test]
fn invalid_names_and_overlapping_ranges_are_corrupt() {
    // The name ends a record without settings; a space breaks it.
    let mut record = encode_topic(&TopicRecord {
        settings: TopicSettings::default(),
        ..topic_record()
    });
    let last = record.len() - 1;
    record[last] = b' ';
    assert_corrupt(decode_topic(&record, 0, 0), &record);

    let mut w = Writer::new(40);
    w.u64(0);
    w.u32(2);
    for bound in [5, 9, 8, 12] {
        w.u64(bound);
    }
    assert_corrupt(decode_ack_state(&w.0), &w.0);
}

#[test]
fn message_keys_sort_by_topic_then_offset() {
    assert!(message_key(TopicId(1), u64::MAX) < message_key(TopicId(2), 0));
    assert!(message_key(TopicId(1), 255) < message_key(TopicId(1), 256));
    let key = message_key(TopicId(3), 77);
    assert_eq!(message_key_offset(&key).expect("decodes"), 77);
    assert_corrupt(message_key_offset(&key[..15]), &key[..15]);
}

#[test]
fn times_keep_microseconds() {
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    assert_eq!(
        truncate_to_micros(t),
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000)
    );
    assert_eq!(to_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
}
