//! Memory topics end to end: messages kept in the broker's memory are
//! published, delivered and acknowledged like any others, bounded by the
//! topic's `max_bytes` at each publish, gone after a restart while the topic
//! and its subscriptions stay and offsets go on; publishers at once get
//! ranges of their own, delivered in offset order; the storage class is
//! fixed and refused when it is not one.

use prost_types::FieldMask;
use tidings::v1::{CreateTopicRequest, RetentionPolicy, StorageClass, Topic, UpdateTopicRequest};
use tidings_client::TopicConfig;
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, expect_code, get_subscription, get_topic,
    offsets, payloads, publish, subscribe_request, within,
};
use tonic::Code;

fn memory_topic(name: &str, retention: Option<RetentionPolicy>) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        retention,
        storage: StorageClass::Memory.into(),
        ..CreateTopicRequest::default()
    }
}

async fn create(
    client: &tidings_tests::Client,
    request: CreateTopicRequest,
) -> anyhow::Result<Topic> {
    let response = client.admin_service().create_topic(request).await?;
    Ok(response.into_inner().topic.unwrap_or_default())
}

#[tokio::test]
async fn a_restart_empties_a_memory_topic_keeps_its_subscription_and_never_reuses_an_offset()
-> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    let topic = create(&client, memory_topic("prices", None)).await?;
    assert_eq!(topic.storage(), StorageClass::Memory);
    create_subscription(&client, "board", "prices", 30).await?;
    let published = publish(&client, "prices", &["a", "b", "c"]).await?;
    assert_eq!(published, [0, 1, 2]);
    let mut stream = Deliveries::open(&client, subscribe_request("board", "prices")).await?;
    let delivered = stream.next_n(3).await?;
    assert_eq!(payloads(&delivered), ["a", "b", "c"]);
    ack(&client, "board", &[0, 1]).await?;
    let before = get_topic(&client, "prices").await?;
    assert_eq!((before.next_offset, before.retained_messages), (3, 3));
    assert!(before.retained_bytes > 0);
    drop(stream);

    broker.restart().await?;
    let client = broker.client();
    let after = get_topic(&client, "prices").await?;
    assert_eq!(after.storage(), StorageClass::Memory, "{after:?}");
    assert_eq!(after.first_offset, after.next_offset, "empty: {after:?}");
    assert!(
        after.next_offset >= 3,
        "no offset handed out again: {after:?}"
    );
    assert_eq!((after.retained_messages, after.retained_bytes), (0, 0));
    let sub = get_subscription(&client, "board").await?;
    assert_eq!(sub.ack_floor, after.first_offset, "moved up: {sub:?}");
    assert_eq!(sub.backlog, 0, "{sub:?}");

    let next = publish(&client, "prices", &["d"]).await?;
    assert_eq!(next, [after.next_offset], "above every earlier offset");
    let mut stream = Deliveries::open(&client, subscribe_request("board", "prices")).await?;
    let delivered = stream.next().await?;
    assert_eq!(
        (delivered.offset, &delivered.payload[..]),
        (next[0], &b"d"[..]),
        "the unacknowledged \"c\" is gone with the restart"
    );
    Ok(())
}

#[tokio::test]
async fn a_publish_beyond_max_bytes_drops_the_oldest_at_once() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let bound = RetentionPolicy {
        max_bytes: 1000,
        ..RetentionPolicy::default()
    };
    create(&client, memory_topic("ticks", Some(bound))).await?;
    let payload = "x".repeat(300);
    let mut first = 0;
    for i in 0..10u64 {
        assert_eq!(publish(&client, "ticks", &[&payload]).await?, [i]);
        // No wait: the publish that passes the bound drops before it returns.
        let topic = get_topic(&client, "ticks").await?;
        assert!(topic.retained_bytes <= 1000, "{topic:?}");
        assert!(topic.first_offset >= first, "{topic:?}");
        first = topic.first_offset;
    }
    let topic = get_topic(&client, "ticks").await?;
    assert!(
        (7..=9).contains(&topic.first_offset),
        "three messages of 300 bytes (and framing) fit: {topic:?}"
    );
    let mut stream = Deliveries::open(&client, subscribe_request("late", "ticks")).await?;
    let delivered = stream
        .next_n(usize::try_from(10 - topic.first_offset)?)
        .await?;
    assert_eq!(offsets(&delivered).first(), Some(&topic.first_offset));
    assert_eq!(offsets(&delivered).last(), Some(&9));
    Ok(())
}

#[tokio::test]
async fn publishers_at_once_get_contiguous_ranges_and_a_stream_sees_them_in_order()
-> anyhow::Result<()> {
    const PUBLISHERS: usize = 6;
    const PUBLISHES: usize = 40;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create(&client, memory_topic("quotes", None)).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("tape", "quotes")).await?;
    let publishers = (0..PUBLISHERS).map(|publisher| {
        let client = broker.client();
        async move {
            let mut landed = Vec::new();
            for publish_no in 0..PUBLISHES {
                let len = 1 + (publisher + publish_no) % 3;
                let tags: Vec<String> = (0..len)
                    .map(|i| format!("{publisher}/{publish_no}/{i}"))
                    .collect();
                let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
                let offsets = publish(&client, "quotes", &refs).await?;
                landed.push((offsets, tags));
            }
            anyhow::Ok(landed)
        }
    });
    let mut by_offset = std::collections::BTreeMap::new();
    for landed in within(futures::future::try_join_all(publishers)).await?? {
        let mut last = None;
        for (offsets, tags) in landed {
            assert!(
                offsets.windows(2).all(|w| w[1] == w[0] + 1),
                "one publish, one range: {offsets:?}"
            );
            assert!(last < offsets.first().copied(), "a publisher's ranges rise");
            last = offsets.last().copied();
            for (offset, tag) in offsets.into_iter().zip(tags) {
                assert!(by_offset.insert(offset, tag).is_none(), "{offset} twice");
            }
        }
    }
    let count = by_offset.len();
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (0..u64::try_from(count)?).collect::<Vec<_>>(),
        "no offset skipped"
    );
    let delivered = stream.next_n(count).await?;
    assert_eq!(
        offsets(&delivered),
        by_offset.keys().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        payloads(&delivered),
        by_offset.into_values().collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn the_storage_class_is_reported_fixed_and_refused_when_unknown() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let disk = create(
        &client,
        CreateTopicRequest {
            name: "orders".into(),
            ..CreateTopicRequest::default()
        },
    )
    .await?;
    assert_eq!(disk.storage(), StorageClass::Disk, "unspecified is disk");
    let memory = within(client.create_topic_with(
        TopicConfig::new("prices").storage(tidings_client::StorageClass::Memory),
    ))
    .await??;
    assert_eq!(memory.storage, tidings_client::StorageClass::Memory);

    let update = UpdateTopicRequest {
        topic: Some(Topic {
            name: "prices".into(),
            storage: StorageClass::Disk.into(),
            ..Topic::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["storage".into()],
        }),
    };
    let refused = client.admin_service().update_topic(update).await;
    let status = expect_code(refused, Code::InvalidArgument)?;
    assert!(status.message().contains("\"storage\""), "{status:?}");
    assert_eq!(
        get_topic(&client, "prices").await?.storage(),
        StorageClass::Memory
    );

    let unknown = CreateTopicRequest {
        storage: 7,
        ..memory_topic("odd", None)
    };
    let refused = client.admin_service().create_topic(unknown).await;
    let status = expect_code(refused, Code::InvalidArgument)?;
    assert!(status.message().contains("storage 7"), "{status:?}");
    let missing = client
        .admin_service()
        .get_topic(tidings::v1::GetTopicRequest { name: "odd".into() })
        .await;
    expect_code(missing, Code::NotFound)?;
    Ok(())
}
