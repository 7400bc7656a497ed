use bytes::Bytes;

use super::*;
use crate::broker::TopicUpdate;
use crate::storage::StoredMessage;

fn position(position: Position) -> Option<v1::StartPosition> {
    Some(v1::StartPosition {
        position: Some(position),
    })
}

fn invalid_message(result: BrokerResult<impl std::fmt::Debug>) -> String {
    match result {
        Err(BrokerError::Invalid(message)) => message,
        other => panic!("expected BrokerError::Invalid, got {other:?}"),
    }
}

#[test]
fn unset_start_is_earliest() {
    assert_eq!(start_position(None).ok(), Some(StartPosition::Earliest));
    let empty = Some(v1::StartPosition { position: None });
    assert_eq!(start_position(empty).ok(), Some(StartPosition::Earliest));
}

#[test]
fn start_positions_convert() {
    assert_eq!(
        start_position(position(Position::Earliest(true))).ok(),
        Some(StartPosition::Earliest)
    );
    assert_eq!(
        start_position(position(Position::Latest(true))).ok(),
        Some(StartPosition::Latest)
    );
    assert_eq!(
        start_position(position(Position::Offset(42))).ok(),
        Some(StartPosition::Offset(42))
    );
    let time = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 5,
    };
    let expected = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
    assert_eq!(
        start_position(position(Position::Time(time))).ok(),
        Some(StartPosition::Time(expected))
    );
}

#[test]
fn false_earliest_or_latest_is_rejected() {
    for pos in [Position::Earliest(false), Position::Latest(false)] {
        let message = invalid_message(start_position(position(pos)));
        assert!(message.contains("must be true"), "{message}");
    }
}

#[test]
fn publish_request_moves_payloads_and_sorts_attributes() {
    let payload = Bytes::from(vec![7u8; 1024]);
    let payload_ptr = payload.as_ptr();
    let request = v1::PublishRequest {
        topic: "order.placed".into(),
        messages: vec![v1::PublishMessage {
            payload,
            key: "order-1".into(),
            // Enough names that a map's own order is never sorted by chance.
            attributes: ('a'..='z')
                .map(|c| (c.to_string(), c.to_string()))
                .collect(),
            id: "order-1/placed".into(),
            ..v1::PublishMessage::default()
        }],
    };
    let command = PublishCommand::try_from(request).expect("valid request");
    assert_eq!(command.topic.as_str(), "order.placed");
    let message = &command.messages[0];
    assert_eq!(message.payload.as_ptr(), payload_ptr, "payload was copied");
    assert_eq!(message.key, "order-1");
    assert_eq!(message.id, "order-1/placed");
    let sorted: Vec<(String, String)> = ('a'..='z')
        .map(|c| (c.to_string(), c.to_string()))
        .collect();
    assert_eq!(message.attributes, sorted);
}

#[test]
fn bad_topic_name_is_invalid_name() {
    let request = v1::PublishRequest {
        topic: "no spaces".into(),
        messages: vec![],
    };
    assert!(matches!(
        PublishCommand::try_from(request),
        Err(BrokerError::InvalidName(_))
    ));
}

#[test]
fn subscribe_zeros_mean_defaults() {
    let spec = SubscribeSpec::try_from(v1::SubscribeRequest {
        subscription: "inventory".into(),
        ..Default::default()
    })
    .expect("valid request");
    assert_eq!(spec.subscription.as_str(), "inventory");
    assert_eq!(spec.topic, None);
    assert_eq!(spec.start, StartPosition::Earliest);
    assert_eq!(spec.ack_deadline, None);
    assert_eq!(spec.max_outstanding, None);
    assert_eq!(spec.max_messages, None);
}

#[test]
fn subscribe_fields_convert() {
    let spec = SubscribeSpec::try_from(v1::SubscribeRequest {
        subscription: "inventory".into(),
        topic: "order.placed".into(),
        start: position(Position::Latest(true)),
        max_outstanding_messages: 10,
        ack_deadline_seconds: 60,
        max_messages: 3,
        max_outstanding_bytes: 4096,
    })
    .expect("valid request");
    assert_eq!(
        spec.topic.as_ref().map(TopicName::as_str),
        Some("order.placed")
    );
    assert_eq!(spec.start, StartPosition::Latest);
    assert_eq!(spec.ack_deadline, Some(Duration::from_secs(60)));
    assert_eq!(spec.max_outstanding, Some(10));
    assert_eq!(spec.max_outstanding_bytes, Some(4096));
    assert_eq!(spec.max_messages, Some(3));
}

#[test]
fn create_subscription_defaults_deadline() {
    let spec = SubscriptionSpec::try_from(v1::CreateSubscriptionRequest {
        name: "s".into(),
        topic: "t".into(),
        ack_deadline_seconds: 0,
        start: None,
        ..Default::default()
    })
    .expect("valid request");
    assert_eq!(spec.ack_deadline, None);
    assert_eq!(spec.start, StartPosition::Earliest);
    let missing_topic = SubscriptionSpec::try_from(v1::CreateSubscriptionRequest {
        name: "s".into(),
        ..Default::default()
    });
    assert!(matches!(missing_topic, Err(BrokerError::InvalidName(_))));
}

#[test]
fn nack_delay_converts_and_rejects_negative() {
    let request = |delay| v1::NackRequest {
        subscription: "s".into(),
        offsets: vec![1, 2],
        delay,
        ack_ids: Vec::new(),
        error: String::new(),
    };
    let command = NackCommand::try_from(request(None)).expect("valid");
    assert_eq!(command.delay, Duration::ZERO);
    assert_eq!(command.offsets, vec![1, 2]);
    let delay = prost_types::Duration {
        seconds: 2,
        nanos: 500_000_000,
    };
    let command = NackCommand::try_from(request(Some(delay))).expect("valid");
    assert_eq!(command.delay, Duration::from_millis(2500));
    let negative = prost_types::Duration {
        seconds: -1,
        nanos: 0,
    };
    let message = invalid_message(NackCommand::try_from(request(Some(negative))));
    assert!(message.contains("must not be negative"), "{message}");
}

#[test]
fn zero_ack_deadline_gives_the_lease_up() {
    let command = DeadlineCommand::try_from(v1::ModifyAckDeadlineRequest {
        subscription: "s".into(),
        offsets: vec![4],
        ack_deadline_seconds: 0,
        ack_ids: Vec::new(),
    })
    .expect("valid");
    assert_eq!(command.deadline, Duration::ZERO);
}

#[test]
fn page_size_defaults_and_caps() {
    assert_eq!(
        PageQuery::new(0, String::new()).ok().map(|q| q.limit),
        Some(100)
    );
    assert_eq!(
        PageQuery::new(7, String::new()).ok().map(|q| q.limit),
        Some(7)
    );
    assert_eq!(
        PageQuery::new(5000, String::new()).ok().map(|q| q.limit),
        Some(1000)
    );
    let query = PageQuery::new(0, "orders".into()).expect("valid token");
    assert_eq!(query.after.as_deref(), Some("orders"));
    assert_eq!(
        PageQuery::new(0, String::new()).ok().and_then(|q| q.after),
        None
    );
}

#[test]
fn bad_page_token_is_rejected() {
    let message = invalid_message(PageQuery::new(0, "not/a name".into()));
    assert!(message.contains("page_token"), "{message}");
}

#[test]
fn next_page_token_is_empty_on_the_last_page() {
    let last: Page<()> = Page {
        items: vec![],
        next_after: None,
    };
    assert_eq!(next_page_token(&last), "");
    let more: Page<()> = Page {
        items: vec![],
        next_after: Some("m".into()),
    };
    assert_eq!(next_page_token(&more), "m");
}

#[test]
fn delivery_becomes_received_message() {
    let publish_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let delivery = Delivery {
        message: StoredMessage {
            offset: 9,
            publish_time,
            payload: Bytes::from_static(b"hello"),
            key: "k".into(),
            attributes: vec![("a".into(), "1".into())],
            id: "order-1/placed".into(),
            deliver_at: None,
        },
        attempt: 2,
        ack_id: "1-9-3".into(),
    };
    let frame = subscribe_frame(vec![delivery]);
    let received = &frame.messages[0];
    assert_eq!(received.offset, 9);
    assert_eq!(received.payload, Bytes::from_static(b"hello"));
    assert_eq!(received.key, "k");
    assert_eq!(received.attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(
        received.publish_time,
        Some(prost_types::Timestamp {
            seconds: 1_000,
            nanos: 0
        })
    );
    assert_eq!(received.delivery_attempt, 2);
    assert_eq!(received.ack_id, "1-9-3");
    assert_eq!(received.id, "order-1/placed");
}

#[test]
fn infos_become_resources() {
    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
    let topic = v1::Topic::from(TopicInfo {
        name: TopicName::new("t").expect("valid"),
        first_offset: 4,
        next_offset: 12,
        created,
        retention: crate::broker::Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_messages: None,
            max_bytes: Some(1 << 20),
            discard_acked: true,
        },
        retained_messages: 8,
        retained_bytes: 2048,
        published_bytes: 4096,
        dedup_window: Duration::from_secs(600),
        storage: crate::broker::StorageClass::Memory,
    });
    assert_eq!(topic.retained_bytes, 2048);
    assert_eq!(topic.storage(), v1::StorageClass::Memory);
    assert_eq!((topic.name.as_str(), topic.next_offset), ("t", 12));
    assert_eq!(topic.first_offset, 4);
    assert_eq!(topic.retained_messages, 8);
    let retention = topic.retention.expect("always reported");
    assert_eq!(retention.max_age.map(|d| d.seconds), Some(3600));
    assert_eq!(retention.max_messages, 0, "no limit");
    assert_eq!(retention.max_bytes, 1 << 20);
    assert!(retention.discard_acked);
    assert_eq!(topic.dedup_window.map(|d| d.seconds), Some(600));
    assert_eq!(topic.create_time.map(|t| t.seconds), Some(5));
    let subscription = v1::Subscription::from(SubscriptionInfo {
        name: SubscriptionName::new("s").expect("valid"),
        topic: TopicName::new("t").expect("valid"),
        ack_deadline: Duration::from_secs(30),
        backlog: 4,
        in_flight: 1,
        ack_floor: 8,
        open_streams: 2,
        counts: crate::broker::DeliveryCounts::default(),
        created,
        filter: "attributes:a".into(),
        retry: Some(RetryPolicy {
            minimum_backoff: Duration::from_millis(250),
            maximum_backoff: Duration::from_secs(60),
        }),
        ordered: true,
        dead_letter: Some(DeadLetterPolicy {
            topic: TopicName::new("t.dead").expect("valid"),
            max_delivery_attempts: 5,
        }),
        dead_lettered: 3,
        rejected: 1,
        delivery_delay: Duration::from_secs(60),
        push: None,
        delayed: 5,
    });
    assert_eq!(subscription.name, "s");
    assert_eq!(subscription.topic, "t");
    assert_eq!(subscription.ack_deadline_seconds, 30);
    assert_eq!(
        (
            subscription.backlog,
            subscription.in_flight,
            subscription.ack_floor
        ),
        (4, 1, 8)
    );
    assert_eq!(subscription.open_streams, 2);
    assert!(subscription.enable_message_ordering);
    assert_eq!((subscription.dead_lettered, subscription.rejected), (3, 1));
    assert_eq!(
        subscription.dead_letter_policy.map(|p| p.dead_letter_topic),
        Some("t.dead".to_owned())
    );
    let policy = subscription.retry_policy.expect("a retry policy");
    assert_eq!(
        policy.minimum_backoff,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
}

#[test]
fn a_retry_policy_fills_in_pub_subs_defaults_and_refuses_negative_waits() {
    assert_eq!(retry_policy(None).expect("converts"), None);
    let defaults = retry_policy(Some(v1::RetryPolicy::default())).expect("converts");
    assert_eq!(
        defaults,
        Some(RetryPolicy {
            minimum_backoff: Duration::from_secs(10),
            maximum_backoff: Duration::from_secs(600),
        })
    );
    let negative = retry_policy(Some(v1::RetryPolicy {
        minimum_backoff: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        maximum_backoff: None,
    }));
    let err = negative.expect_err("negative").to_string();
    assert!(err.contains("retry_policy.minimum_backoff"), "{err}");
}

#[test]
fn storage_classes_come_in_with_unspecified_as_disk_and_unknown_refused() {
    use crate::broker::StorageClass;
    let given = |class: v1::StorageClass| storage_class(class.into()).ok();
    assert_eq!(
        given(v1::StorageClass::Unspecified),
        Some(StorageClass::Disk)
    );
    assert_eq!(given(v1::StorageClass::Disk), Some(StorageClass::Disk));
    assert_eq!(given(v1::StorageClass::Memory), Some(StorageClass::Memory));
    let message = invalid_message(storage_class(7));
    assert!(message.contains("storage 7"), "{message}");
    assert!(message.contains("STORAGE_CLASS_MEMORY"), "{message}");
}

#[test]
fn an_update_naming_storage_is_refused_as_fixed() {
    let request = |paths: &[&str]| v1::UpdateTopicRequest {
        topic: Some(v1::Topic {
            name: "t".to_owned(),
            storage: v1::StorageClass::Memory.into(),
            ..v1::Topic::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    for paths in [&["storage"][..], &["dedup_window", "storage"]] {
        let message = invalid_message(TopicUpdate::try_from(request(paths)));
        assert!(
            message.contains("\"storage\"") && message.contains("fixed when the topic is created"),
            "{message}"
        );
    }
    assert!(TopicUpdate::try_from(request(&["dedup_window"])).is_ok());
}
