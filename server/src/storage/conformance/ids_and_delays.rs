//! Remembered ids and the delayed-message index.

use super::*;

pub(super) async fn repeated_ids_are_stored_once_across_restarts(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(recorder.clone());
    let settings = TopicSettings::default();
    let topic = store
        .create_topic(&topic_name("t")?, settings, StorageClass::Disk)
        .await?;
    let first = store
        .append(
            topic.id,
            vec![with_id("a", "x"), with_id("b", "y"), with_id("c", "x")],
        )
        .await?;
    ensure!(first.first_offset == 0);
    ensure!(
        duplicates(&first) == vec![(2, 0)],
        "a repeat within one batch: {first:?}"
    );
    ensure!(first.offsets(3) == (vec![0, 1, 0], vec![false, false, true]));
    let second = store
        .append(
            topic.id,
            vec![with_id("d", "y"), message("e"), with_id("f", "z")],
        )
        .await?;
    ensure!(duplicates(&second) == vec![(0, 1)], "{second:?}");
    ensure!(second.offsets(3) == (vec![1, 2, 3], vec![true, false, false]));
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(topic.id, 0, vec![with_id("a", "x"), with_id("b", "y")]),
                Heard::Appended(topic.id, 2, vec![message("e"), with_id("f", "z")]),
            ],
        "the listener hears the stored messages only"
    );
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    let ids: Vec<&str> = read.iter().map(|m| &*m.id).collect();
    ensure!(ids == ["x", "y", "", "z"], "{read:?}");

    let store = h.reopen(store).await?;
    let again = store
        .append(topic.id, vec![with_id("g", "x"), with_id("h", "w")])
        .await?;
    ensure!(duplicates(&again) == vec![(0, 0)], "remembered: {again:?}");
    ensure!(again.first_offset == 4);
    let committed = store
        .commit(Commit {
            appends: vec![(topic.id, vec![with_id("i", "w"), with_id("j", "v")])],
            deliveries: Vec::new(),
        })
        .await?;
    ensure!(
        duplicates(&committed[0]) == vec![(0, 4)] && committed[0].first_offset == 5,
        "a commit deduplicates too: {committed:?}"
    );
    ensure!(next_offset(&store, topic.id).await? == 6);
    Ok(())
}

pub(super) async fn ids_are_forgotten_after_the_window(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let window = Duration::from_millis(300);
    let short = TopicSettings {
        dedup_window: window,
        ..TopicSettings::default()
    };
    let topic = store
        .create_topic(&topic_name("t")?, short, StorageClass::Disk)
        .await?;
    let first = store.append(topic.id, vec![with_id("a", "x")]).await?;
    wait_past(first.publish_time + window).await;
    let later = store.append(topic.id, vec![with_id("b", "x")]).await?;
    ensure!(
        later.duplicates.is_empty() && later.first_offset == 1,
        "an id past the window is new: {later:?}"
    );
    // A longer window applies to the ids stored already.
    let window_of = |dedup_window| TopicRecord {
        settings: TopicSettings {
            dedup_window,
            ..TopicSettings::default()
        },
        ..topic.clone()
    };
    store
        .update_topic(window_of(Duration::from_secs(3600)))
        .await?;
    let again = store.append(topic.id, vec![with_id("c", "x")]).await?;
    ensure!(
        duplicates(&again) == vec![(0, 1)],
        "remembered from the new message on: {again:?}"
    );
    // No window: nothing is remembered, not even within one batch.
    store.update_topic(window_of(Duration::ZERO)).await?;
    let off = store
        .append(topic.id, vec![with_id("d", "x"), with_id("e", "x")])
        .await?;
    ensure!(
        off.duplicates.is_empty() && off.first_offset == 2,
        "{off:?}"
    );
    Ok(())
}

pub(super) async fn delayed_messages_are_indexed_by_due_time_until_forgotten(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = store
        .create_topic(
            &topic_name("t")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let other = store
        .create_topic(
            &topic_name("u")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let soon = SystemTime::now() + Duration::from_secs(3600);
    let later = soon + Duration::from_secs(60);
    // Due times are kept to the microsecond, rounded up.
    let end = later + Duration::from_secs(1);
    let batch = vec![
        NewMessage {
            deliver_at: Some(later),
            ..message("later")
        },
        message("now"),
        NewMessage {
            deliver_after: Some(Duration::from_secs(3600)),
            ..message("after")
        },
        NewMessage {
            deliver_at: Some(soon),
            ..message("soon")
        },
    ];
    let appended = store.append(topic.id, batch).await?;
    store
        .append(
            other.id,
            vec![NewMessage {
                deliver_at: Some(soon),
                ..message("elsewhere")
            }],
        )
        .await?;
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    let after_due = appended.publish_time + Duration::from_secs(3600);
    ensure!(read[1].deliver_at.is_none(), "{read:?}");
    let due = read[2]
        .deliver_at
        .context("deliver_after is stored as a time")?;
    ensure!(
        due >= after_due && due < after_due + Duration::from_micros(1),
        "after the publish time, to the microsecond: {read:?}"
    );
    let all = store.delayed(topic.id, None, end, usize::MAX).await?;
    let order: Vec<Offset> = all.iter().map(|p| p.offset).collect();
    ensure!(
        order.len() == 3 && order[2] == 0 && all[2].due == read[0].deliver_at.context("at")?,
        "by due time: {all:?}"
    );
    let page = store.delayed(topic.id, Some(all[0]), end, 1).await?;
    ensure!(page == all[1..2], "the page after the first: {page:?}");
    let not_yet = store
        .delayed(topic.id, None, soon - Duration::from_secs(1), 10)
        .await?;
    ensure!(not_yet.is_empty(), "{not_yet:?}");
    ensure!(store.count_delayed(topic.id, SystemTime::now()).await? == 3);
    ensure!(store.count_delayed(topic.id, end).await? == 0);

    let store = h.reopen(store).await?;
    ensure!(
        store.delayed(topic.id, None, end, 10).await? == all,
        "kept across a restart"
    );
    store
        .forget_delayed(topic.id, later - Duration::from_secs(1))
        .await?;
    let left = store.delayed(topic.id, None, end, 10).await?;
    ensure!(left == all[2..], "only the later one is left: {left:?}");
    ensure!(store.count_delayed(other.id, SystemTime::now()).await? == 1);
    store.delete_topic(other.id).await?;
    ensure!(store.count_delayed(other.id, SystemTime::now()).await? == 0);
    Ok(())
}
