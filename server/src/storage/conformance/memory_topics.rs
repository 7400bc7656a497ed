//! Memory topics: read like disk topics, bounded, empty after a reopen.

use super::*;

pub(super) async fn memory_topics_are_read_like_disk_topics_and_empty_after_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    let (name, defaults) = (topic_name("m")?, TopicSettings::default());
    let topic = store
        .create_topic(&name, defaults, StorageClass::Memory)
        .await?;
    ensure!(topic.storage == StorageClass::Memory && topic.next_offset == 0);
    let before = SystemTime::now();
    store.append(topic.id, messages(&["a", "b"])).await?;
    let second = store.append(topic.id, messages(&["c"])).await?;
    ensure!(second.first_offset == 2, "{second:?}");
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(topic.id, 0, messages(&["a", "b"])),
                Heard::Appended(topic.id, 2, messages(&["c"])),
            ]
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![0, 1, 2], "{read:?}");
    ensure!(read[1].key == "key b" && read[1].attributes == message("b").attributes);
    let limited = ReadLimit {
        max_messages: 2,
        max_bytes: usize::MAX,
    };
    ensure!(offsets(&store.read(topic.id, 1..3, limited).await?) == vec![1, 2]);
    let some = store.read_offsets(topic.id, vec![0, 2, 7]).await?;
    ensure!(payloads(&some) == vec![Bytes::from("payload a"), Bytes::from("payload c")]);
    ensure!(store.offset_at_time(topic.id, before).await? == 0);
    ensure!(
        store
            .offset_at_time(topic.id, SystemTime::now() + Duration::from_secs(60))
            .await?
            == 3
    );
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(
        loaded.next_offset == 3 && loaded.first_offset == 0,
        "{loaded:?}"
    );
    ensure!(loaded.retained_bytes == second.retained_bytes && loaded.retained_bytes > 0);
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic.id,
            settings(Duration::from_secs(10)),
            AckState::starting_at(0),
        )
        .await?;
    let mut acked = AckState::starting_at(0);
    acked.ack(0);
    acked.ack(2);
    store
        .save_deliveries(vec![acks_update(sub.id, acked.clone())])
        .await?;

    let store = h.reopen(store).await?;
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(loaded.storage == StorageClass::Memory, "{loaded:?}");
    ensure!(
        loaded.first_offset == loaded.next_offset && loaded.next_offset >= 3,
        "empty, and no offset handed out again: {loaded:?}"
    );
    ensure!(loaded.retained_bytes == 0, "{loaded:?}");
    ensure!(
        store
            .read(topic.id, 0..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .read_offsets(topic.id, vec![0, 1, 2])
            .await?
            .is_empty()
    );
    let catalog = store.load().await?;
    ensure!(
        catalog.subscriptions == vec![stored(&sub, acked)],
        "the subscription and its acks stay: {:?}",
        catalog.subscriptions
    );
    let after = store.append(topic.id, messages(&["d"])).await?;
    ensure!(after.first_offset == loaded.next_offset, "{after:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![after.first_offset], "{read:?}");
    Ok(())
}

pub(super) async fn memory_topics_drop_their_oldest_messages_beyond_their_bound(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    // One message's stored size, measured on a disk topic.
    let disk = store
        .create_topic(
            &topic_name("d")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let per = store
        .append(disk.id, messages(&["x"]))
        .await?
        .retained_bytes;
    let bounded = TopicSettings {
        retention: Retention {
            max_bytes: Some(3 * per),
            ..Retention::default()
        },
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("m")?, bounded, StorageClass::Memory)
        .await?;
    recorder.take();
    for tag in ["a", "b", "c"] {
        store.append(topic.id, messages(&[tag])).await?;
    }
    ensure!(
        loaded_topic(&store, topic.id).await?.first_offset == 0,
        "at the bound"
    );
    ensure!(recorder.take().len() == 3, "three appends, no truncation");
    let fourth = store.append(topic.id, messages(&["d"])).await?;
    ensure!(fourth.retained_bytes == 3 * per, "{fourth:?}");
    let heard = recorder.take();
    ensure!(
        heard
            == vec![
                Heard::Appended(topic.id, 3, messages(&["d"])),
                Heard::Truncated(topic.id, 1),
            ],
        "the oldest goes at the append, after it: {heard:?}"
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![1, 2, 3], "{read:?}");
    // A batch beyond the bound keeps its newest messages.
    store
        .append(topic.id, messages(&["e", "f", "g", "h"]))
        .await?;
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![5, 6, 7], "{read:?}");
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(
        loaded.first_offset == 5 && loaded.retained_bytes == 3 * per,
        "{loaded:?}"
    );
    // Trims work as on disk.
    recorder.take();
    ensure!(store.trim(topic.id, 6, 0).await? == 6);
    ensure!(recorder.take() == vec![Heard::Truncated(topic.id, 6)]);
    ensure!(offsets(&store.read(topic.id, 0..u64::MAX, EVERYTHING).await?) == vec![6, 7]);
    ensure!(loaded_topic(&store, topic.id).await?.retained_bytes == 2 * per);
    Ok(())
}

pub(super) async fn memory_topics_without_max_bytes_keep_64_mib(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let (name, defaults) = (topic_name("m")?, TopicSettings::default());
    let topic = store
        .create_topic(&name, defaults, StorageClass::Memory)
        .await?;
    let mib = 1 << 20;
    let batch = |n| -> Vec<NewMessage> {
        (0..n)
            .map(|_| NewMessage {
                payload: Bytes::from(vec![b'z'; mib]),
                ..NewMessage::default()
            })
            .collect()
    };
    for _ in 0..11 {
        store.append(topic.id, batch(6)).await?;
    }
    let loaded = loaded_topic(&store, topic.id).await?;
    ensure!(loaded.next_offset == 66, "{loaded:?}");
    ensure!(
        loaded.retained_bytes <= DEFAULT_MEMORY_BYTES
            && loaded.retained_bytes > DEFAULT_MEMORY_BYTES - 2 * mib as u64,
        "{loaded:?}"
    );
    // 64 MiB hold 63 messages of 1 MiB and their framing.
    ensure!(loaded.first_offset == 3, "{loaded:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.first().map(|m| m.offset) == Some(3) && read.len() == 63);
    Ok(())
}

pub(super) async fn memory_topics_remember_ids_while_open_and_not_across_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let window = Duration::from_millis(300);
    let short = TopicSettings {
        dedup_window: window,
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("m")?, short, StorageClass::Memory)
        .await?;
    let first = store
        .append(topic.id, vec![with_id("a", "x"), with_id("b", "x")])
        .await?;
    ensure!(duplicates(&first) == vec![(1, 0)], "{first:?}");
    let again = store.append(topic.id, vec![with_id("c", "x")]).await?;
    ensure!(duplicates(&again) == vec![(0, 0)], "{again:?}");
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.len() == 1 && read[0].id == "x", "{read:?}");
    wait_past(first.publish_time + window).await;
    let later = store.append(topic.id, vec![with_id("d", "x")]).await?;
    ensure!(
        later.duplicates.is_empty() && later.first_offset == 1,
        "{later:?}"
    );
    let long = TopicRecord {
        settings: TopicSettings::default(),
        ..topic.clone()
    };
    store.update_topic(long).await?;
    ensure!(loaded_topic(&store, topic.id).await?.storage == StorageClass::Memory);
    store.append(topic.id, vec![with_id("e", "y")]).await?;

    let store = h.reopen(store).await?;
    let next = next_offset(&store, topic.id).await?;
    let after = store
        .append(topic.id, vec![with_id("f", "y"), with_id("g", "y")])
        .await?;
    ensure!(
        duplicates(&after) == vec![(1, next)] && after.first_offset == next,
        "no id is remembered across a restart, new ones are: {after:?}"
    );
    Ok(())
}
