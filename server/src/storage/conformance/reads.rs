//! Reading: limits, ranges, offsets by time, and truncation.

use super::*;

pub(super) async fn reads_respect_limits(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    append_sized(&store, topic, 10, 10).await?;
    let limit = |max_messages, max_bytes| ReadLimit {
        max_messages,
        max_bytes,
    };
    ensure!(offsets(&store.read(topic, 0..u64::MAX, limit(3, usize::MAX)).await?) == vec![0, 1, 2]);
    ensure!(
        offsets(
            &store
                .read(topic, 8..u64::MAX, limit(10, usize::MAX))
                .await?
        ) == vec![8, 9]
    );
    // Each message's wire size is its 10 payload bytes plus 32.
    ensure!(offsets(&store.read(topic, 2..u64::MAX, limit(10, 100)).await?) == vec![2, 3, 4]);
    ensure!(offsets(&store.read(topic, 2..u64::MAX, limit(10, 126)).await?) == vec![2, 3, 4]);
    ensure!(
        offsets(&store.read(topic, 5..u64::MAX, limit(10, 1)).await?) == vec![5],
        "at least one"
    );
    ensure!(
        offsets(&store.read(topic, 5..u64::MAX, limit(10, 0)).await?) == vec![5],
        "at least one"
    );
    ensure!(
        store
            .read(topic, 10..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .read(topic, u64::MAX - 1..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    let first = store.read(topic, 0..u64::MAX, limit(1, usize::MAX)).await?;
    ensure!(payloads(&first) == vec![Bytes::from(vec![b'a'; 10])]);
    Ok(())
}

pub(super) async fn read_offsets_skips_missing(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    store
        .append(topic, messages(&["0", "1", "2", "3", "4"]))
        .await?;
    let read = store
        .read_offsets(topic, vec![1, 3, 5, 100, u64::MAX])
        .await?;
    ensure!(offsets(&read) == vec![1, 3], "{read:?}");
    ensure!(payloads(&read) == vec![message("1").payload, message("3").payload]);
    ensure!(read[1].key == "key 3" && read[1].attributes == message("3").attributes);
    ensure!(store.read_offsets(topic, Vec::new()).await?.is_empty());
    Ok(())
}

pub(super) async fn offset_at_time_finds_first_message_at_or_after(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    ensure!(
        store.offset_at_time(topic, UNIX_EPOCH).await? == 0,
        "empty topic"
    );
    let first = store.append(topic, messages(&["0", "1"])).await?;
    wait_past(first.publish_time).await;
    let second = store.append(topic, messages(&["2", "3", "4"])).await?;
    ensure!(second.publish_time > first.publish_time);
    wait_past(second.publish_time).await;
    let third = store.append(topic, messages(&["5"])).await?;
    let at = |time| store.offset_at_time(topic, time);
    ensure!(at(UNIX_EPOCH).await? == 0);
    ensure!(at(first.publish_time).await? == 0);
    ensure!(at(first.publish_time + Duration::from_micros(1)).await? == 2);
    ensure!(at(second.publish_time).await? == 2);
    ensure!(at(third.publish_time).await? == 5);
    ensure!(
        at(third.publish_time + Duration::from_secs(3600)).await? == 6,
        "past the end"
    );
    let missing = store
        .offset_at_time(TopicId(u64::MAX - 1), UNIX_EPOCH)
        .await;
    ensure!(
        matches!(missing, Err(StoreError::TopicNotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

pub(super) async fn reads_stop_at_the_end_of_their_range(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    append_sized(&store, topic, 6, 10).await?;
    ensure!(offsets(&store.read(topic, 1..4, EVERYTHING).await?) == vec![1, 2, 3]);
    ensure!(store.read(topic, 3..3, EVERYTHING).await?.is_empty());
    ensure!(offsets(&store.read(topic, 5..100, EVERYTHING).await?) == vec![5]);
    Ok(())
}

pub(super) async fn truncate_deletes_below_and_never_goes_back(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let first_at = |store: SharedStore| async move {
        let catalog = store.load().await?;
        let record = catalog.topics.into_iter().find(|t| t.id == topic);
        anyhow::Ok(record.context("topic is listed")?.first_offset)
    };
    ensure!(first_at(store.clone()).await? == 0);
    append_sized(&store, topic, 6, 10).await?;
    ensure!(store.truncate(topic, 4).await? == 4);
    ensure!(offsets(&store.read(topic, 0..u64::MAX, EVERYTHING).await?) == vec![4, 5]);
    ensure!(offsets(&store.read_offsets(topic, vec![1, 3, 4]).await?) == vec![4]);
    ensure!(first_at(store.clone()).await? == 4);
    ensure!(store.truncate(topic, 2).await? == 4, "never lowered");
    ensure!(store.truncate(topic, 100).await? == 6, "capped at the head");
    ensure!(store.read(topic, 0..u64::MAX, EVERYTHING).await?.is_empty());
    ensure!(next_offset(&store, topic).await? == 6);
    let appended = store.append(topic, messages(&["after"])).await?;
    ensure!(appended.first_offset == 6, "offsets are not reused");
    ensure!(store.offset_at_time(topic, UNIX_EPOCH).await? == 6);
    let store = h.reopen(store).await?;
    ensure!(first_at(store.clone()).await? == 6);
    ensure!(offsets(&store.read(topic, 0..u64::MAX, EVERYTHING).await?) == vec![6]);
    let missing = store.truncate(TopicId(u64::MAX - 1), 1).await;
    ensure!(
        matches!(missing, Err(StoreError::TopicNotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

pub(super) async fn offset_at_time_skips_offsets_without_messages(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let first = store.append(topic, messages(&["0", "1", "2"])).await?;
    wait_past(first.publish_time).await;
    let second = store.append(topic, messages(&["3", "4"])).await?;
    store.truncate(topic, 2).await?;
    let at = |time| store.offset_at_time(topic, time);
    ensure!(at(UNIX_EPOCH).await? == 2, "clamped to the first offset");
    ensure!(at(first.publish_time).await? == 2);
    ensure!(at(second.publish_time).await? == 3);
    Ok(())
}
