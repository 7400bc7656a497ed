//! Topic retention: by count, by age and once every subscription has
//! acknowledged, set at creation or changed with `UpdateTopic`. Deleted
//! messages leave reads, subscriptions behind the first offset move up to
//! it, and bad policies are refused with the field named.

use std::path::Path;
use std::time::Duration;

use prost_types::FieldMask;
use tidings::v1::{
    CreateTopicRequest, PublishMessage, ReadTopicRequest, RetentionPolicy, Topic,
    UpdateTopicRequest,
};
use tidings_tests::{
    Client, TestBroker, ack, create_subscription, create_topic, expect_code, get_subscription,
    get_topic, publish, publish_messages,
};
use tonic::Code;

/// How long a test waits for retention to act before it fails: rounds
/// run every second, so this leaves a wide margin on a loaded machine.
const RETENTION_TIMEOUT: Duration = Duration::from_secs(30);

async fn create_with(
    client: &Client,
    name: &str,
    retention: RetentionPolicy,
) -> Result<Topic, tonic::Status> {
    let response = client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: name.into(),
            retention: Some(retention),
            ..CreateTopicRequest::default()
        })
        .await?;
    Ok(response.into_inner().topic.unwrap_or_default())
}

async fn update(
    client: &Client,
    name: &str,
    retention: RetentionPolicy,
    paths: &[&str],
) -> Result<Topic, tonic::Status> {
    let response = client
        .admin_service()
        .update_topic(UpdateTopicRequest {
            topic: Some(Topic {
                name: name.into(),
                retention: Some(retention),
                ..Topic::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        })
        .await?;
    Ok(response.into_inner().topic.unwrap_or_default())
}

/// Waits until the topic's first offset reaches `first`; returns the topic.
async fn first_offset_reaches(client: &Client, name: &str, first: u64) -> anyhow::Result<Topic> {
    let deadline = tokio::time::Instant::now() + RETENTION_TIMEOUT;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        let topic = get_topic(client, name).await?;
        if topic.first_offset >= first {
            return Ok(topic);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "first_offset of {name:?} still {} after {RETENTION_TIMEOUT:?}, waiting for {first}",
            topic.first_offset
        );
    }
}

/// The offsets a read of the whole topic returns.
async fn read_offsets(client: &Client, topic: &str) -> anyhow::Result<Vec<u64>> {
    let read = client
        .subscriber_service()
        .read_topic(ReadTopicRequest {
            topic: topic.into(),
            offset: 0,
            max_messages: 0,
        })
        .await?
        .into_inner();
    Ok(read.messages.iter().map(|m| m.offset).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_deletes_the_oldest_and_moves_subscriptions_up() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let three = RetentionPolicy {
        max_messages: 3,
        ..RetentionPolicy::default()
    };
    let created = create_with(&client, "t", three).await?;
    assert_eq!(created.retention.map(|r| r.max_messages), Some(3));
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["a", "b", "c", "d", "e"]).await?;

    let topic = first_offset_reaches(&client, "t", 2).await?;
    assert_eq!((topic.first_offset, topic.retained_messages), (2, 3));
    assert_eq!(read_offsets(&client, "t").await?, [2, 3, 4]);
    let sub = get_subscription(&client, "s").await?;
    assert_eq!(
        (sub.ack_floor, sub.backlog),
        (2, 3),
        "moved up to the first offset"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_size_keeps_the_newest_within_max_bytes() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_with(&client, "sized", RetentionPolicy::default()).await?;
    publish(&client, "sized", &["m"; 10]).await?;
    let ten = get_topic(&client, "sized").await?.retained_bytes;
    let each = ten / 10;
    assert!(
        each > 0 && ten == 10 * each,
        "retained_bytes {ten} for 10 messages"
    );

    let four = RetentionPolicy {
        max_bytes: 4 * each,
        ..RetentionPolicy::default()
    };
    create_with(&client, "t", four).await?;
    publish(&client, "t", &["m"; 10]).await?;
    let topic = first_offset_reaches(&client, "t", 6).await?;
    assert_eq!(topic.first_offset, 6, "the oldest go, as few as needed");
    assert_eq!(topic.retained_bytes, 4 * each);
    assert_eq!(read_offsets(&client, "t").await?, [6, 7, 8, 9]);
    Ok(())
}

/// Bytes in the files under `dir`.
fn disk_usage(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `n` bytes that do not compress.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_messages_give_their_disk_space_back() -> anyhow::Result<()> {
    const MESSAGES: u64 = 160;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_with(&client, "big", RetentionPolicy::default()).await?;
    for batch in 0..MESSAGES / 8 {
        let messages = (0..8)
            .map(|i| PublishMessage {
                payload: noise(128 << 10, batch * 8 + i).into(),
                ..PublishMessage::default()
            })
            .collect();
        publish_messages(&client, "big", messages).await?;
    }
    let before = disk_usage(broker.data_dir())?;
    assert!(
        before > 20 << 20,
        "20 MiB published, {before} bytes on disk"
    );

    let one = RetentionPolicy {
        max_messages: 1,
        ..RetentionPolicy::default()
    };
    update(&client, "big", one, &["retention.max_messages"]).await?;
    first_offset_reaches(&client, "big", MESSAGES - 1).await?;
    let deadline = tokio::time::Instant::now() + RETENTION_TIMEOUT * 2;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticks.tick().await;
        let now = disk_usage(broker.data_dir())?;
        if now < before / 4 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the data directory still holds {now} bytes, {before} before the deletion"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_messages_are_deleted_and_never_read() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let one_second = RetentionPolicy {
        max_age: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..RetentionPolicy::default()
    };
    create_with(&client, "t", one_second).await?;
    publish(&client, "t", &["a", "b"]).await?;
    let topic = first_offset_reaches(&client, "t", 2).await?;
    assert_eq!(topic.retained_messages, 0);
    assert!(read_offsets(&client, "t").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn discard_acked_deletes_only_what_every_subscription_acknowledged() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let discard = RetentionPolicy {
        discard_acked: true,
        ..RetentionPolicy::default()
    };
    create_with(&client, "t", discard).await?;
    create_with(&client, "lonely", discard).await?;
    create_subscription(&client, "a", "t", 0).await?;
    create_subscription(&client, "b", "t", 0).await?;
    publish(&client, "t", &["0", "1", "2", "3"]).await?;
    publish(&client, "lonely", &["x"]).await?;
    ack(&client, "a", &[0, 1, 2, 3]).await?;
    ack(&client, "b", &[0, 1]).await?;
    first_offset_reaches(&client, "t", 2).await?;
    ack(&client, "b", &[2]).await?;
    // A whole retention round has passed since "lonely" held its message.
    first_offset_reaches(&client, "t", 3).await?;
    assert_eq!(
        get_topic(&client, "t").await?.first_offset,
        3,
        "3 is not acknowledged on b"
    );
    assert_eq!(
        get_topic(&client, "lonely").await?.first_offset,
        0,
        "nothing goes while a topic has no subscription"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_defaults_changes_with_update_topic_and_refuses_bad_input() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let default = create_topic(&client, "t").await?;
    let retention = default.retention.unwrap_or_default();
    assert_eq!(
        retention.max_age.map(|d| d.seconds),
        Some(7 * 24 * 3600),
        "7 days by default"
    );
    let forever = create_with(&client, "forever", RetentionPolicy::default()).await?;
    assert_eq!(
        forever.retention,
        Some(RetentionPolicy::default()),
        "{{}} keeps everything"
    );

    let one = RetentionPolicy {
        max_messages: 1,
        ..RetentionPolicy::default()
    };
    let updated = update(&client, "t", one, &["retention.max_messages"]).await?;
    let retention = updated.retention.unwrap_or_default();
    assert_eq!(retention.max_messages, 1);
    assert_eq!(
        retention.max_age.map(|d| d.seconds),
        Some(7 * 24 * 3600),
        "only what the mask names changes"
    );
    publish(&client, "t", &["a", "b", "c"]).await?;
    first_offset_reaches(&client, "t", 2).await?;

    let negative = RetentionPolicy {
        max_age: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..RetentionPolicy::default()
    };
    let half_second = RetentionPolicy {
        max_age: Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..RetentionPolicy::default()
    };
    for (result, needle) in [
        (update(&client, "t", one, &[]).await, "update_mask is empty"),
        (
            update(&client, "t", one, &["next_offset"]).await,
            "next_offset",
        ),
        (
            update(&client, "t", negative, &["retention"]).await,
            "retention.max_age",
        ),
        (
            update(&client, "t", half_second, &["retention.max_age"]).await,
            "retention.max_age",
        ),
        (
            create_with(&client, "bad", half_second).await,
            "retention.max_age",
        ),
    ] {
        let status = expect_code(result.map(tonic::Response::new), Code::InvalidArgument)?;
        assert!(status.message().contains(needle), "{status:?}");
    }
    expect_code(
        update(&client, "missing", one, &["retention"])
            .await
            .map(tonic::Response::new),
        Code::NotFound,
    )?;
    let unchanged = get_topic(&client, "t").await?.retention.unwrap_or_default();
    assert_eq!(
        unchanged.max_messages, 1,
        "nothing stored by a refused update"
    );
    Ok(())
}
