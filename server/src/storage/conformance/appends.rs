//! Appending: offsets, order under concurrency, the listener, retained
//! bytes, and commits that append and settle together.

use super::*;

pub(super) async fn offsets_start_at_zero_and_are_contiguous(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let orders = store
        .create_topic(
            &topic_name("orders")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let stock = store
        .create_topic(
            &topic_name("stock")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(orders.next_offset == 0 && orders.id != stock.id);
    ensure!(
        store
            .append(orders.id, messages(&["a", "b", "c"]))
            .await?
            .first_offset
            == 0
    );
    ensure!(
        store
            .append(orders.id, messages(&["d", "e"]))
            .await?
            .first_offset
            == 3
    );
    ensure!(store.append(stock.id, messages(&["x"])).await?.first_offset == 0);
    ensure!(next_offset(&store, orders.id).await? == 5);
    ensure!(next_offset(&store, stock.id).await? == 1);
    let read = store.read(orders.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(offsets(&read) == vec![0, 1, 2, 3, 4], "{read:?}");
    let expected: Vec<NewMessage> = messages(&["a", "b", "c", "d", "e"]);
    for (stored, sent) in read.iter().zip(&expected) {
        ensure!(stored.payload == sent.payload && stored.key == sent.key);
        ensure!(stored.attributes == sent.attributes);
    }
    ensure!(
        read[0].publish_time == read[2].publish_time,
        "one batch, one publish time"
    );
    Ok(())
}

pub(super) async fn concurrent_appends_get_disjoint_contiguous_ranges(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    const TASKS: usize = 16;
    const BATCHES: usize = 20;
    let store = h.open().await?;
    let topic = disk_topic(&store, "busy").await?;
    let tasks = append_from_tasks(
        &store,
        TASKS,
        BATCHES,
        move |store, _, messages| async move { Ok(store.append(topic, messages).await?.first_offset) },
    );
    let (landed, expected_next) = contiguous(tasks).await?;
    ensure!(next_offset(&store, topic).await? == expected_next);
    let read = store.read(topic, 0..u64::MAX, EVERYTHING).await?;
    ensure!(read.len() as u64 == expected_next);
    let mut by_offset = read.iter();
    for (first, tags) in &landed {
        for (i, tag) in tags.iter().enumerate() {
            let stored = by_offset.next().context("message is there")?;
            ensure!(stored.offset == first + i as u64 && stored.payload == message(tag).payload);
        }
    }
    ensure!(
        read.windows(2)
            .all(|w| w[0].publish_time <= w[1].publish_time)
    );
    Ok(())
}

/// Appends and commits to one memory topic from many tasks at once, some
/// commits with a disk topic beside it: every batch gets a range of its
/// own, the ranges leave no gap, the listener hears them in offset order,
/// and each commit stored its messages in both topics.
pub(super) async fn memory_topics_keep_order_under_concurrent_appends_and_commits(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let (tasks, batches) = (8, 30);
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let settings = TopicSettings::default();
    let memory = store
        .create_topic(&topic_name("fast")?, settings.clone(), StorageClass::Memory)
        .await?
        .id;
    let disk = store
        .create_topic(&topic_name("slow")?, settings, StorageClass::Disk)
        .await?
        .id;
    // Every fourth batch is a commit with a message for the disk topic.
    let append = move |store: SharedStore, turn: usize, batch| async move {
        if !turn.is_multiple_of(4) {
            return Ok(store.append(memory, batch).await?.first_offset);
        }
        let commit = Commit {
            appends: vec![(memory, batch), (disk, messages(&["c"]))],
            deliveries: Vec::new(),
        };
        Ok(store.commit(commit).await?[0].first_offset)
    };
    let landed = append_from_tasks(&store, tasks, batches, append);
    let (landed, expected_next) = contiguous(landed).await?;
    ensure!(next_offset(&store, memory).await? == expected_next);
    let read = store.read(memory, 0..u64::MAX, EVERYTHING).await?;
    let tags = landed.iter().flat_map(|(_, tags)| tags);
    ensure!(payloads(&read) == tags.map(|t| message(t).payload).collect::<Vec<_>>());
    let mut heard_next = 0;
    for heard in recorder.take() {
        if let Heard::Appended(topic, first, messages) = heard
            && topic == memory
        {
            ensure!(first == heard_next, "heard {first} before {heard_next}");
            heard_next += messages.len() as u64;
        }
    }
    ensure!(heard_next == expected_next, "every append heard");
    let commits = (0..tasks)
        .flat_map(|task| (0..batches).filter(move |batch| (task + batch).is_multiple_of(4)))
        .count();
    ensure!(next_offset(&store, disk).await? == commits as u64);
    Ok(())
}

pub(super) async fn a_commit_appends_and_settles_together_and_hears_its_appends(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let source = disk_topic(&store, "orders").await?;
    let dead = disk_topic(&store, "orders.dead").await?;
    store.append(source, messages(&["a", "b"])).await?;
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            source,
            settings(Duration::from_secs(10)),
            AckState::default(),
        )
        .await?;
    let record = DeliveryRecord {
        failures: 3,
        redeliver_at: None,
    };
    store
        .save_deliveries(vec![DeliveryUpdate {
            records: vec![(1, Some(record))],
            ..acks_update(sub.id, AckState::default())
        }])
        .await?;
    recorder.take();
    let mut acks = AckState::default();
    acks.ack(1);
    let update = DeliveryUpdate {
        subscription: sub.id,
        acks: acks.clone(),
        records: vec![(1, None)],
        dead_letters: Some(dead_letters(2)?),
    };
    let appended = store
        .commit(Commit {
            appends: vec![(dead, messages(&["b copy"])), (source, messages(&["c"]))],
            deliveries: vec![update],
        })
        .await?;
    ensure!(
        appended.iter().map(|a| a.first_offset).collect::<Vec<_>>() == vec![0, 2],
        "{appended:?}"
    );
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(dead, 0, messages(&["b copy"])),
                Heard::Appended(source, 2, messages(&["c"])),
            ]
    );
    let expected = StoredSubscription {
        dead_letters: dead_letters(2)?,
        ..stored(&sub, acks.clone())
    };
    ensure!(store.load().await?.subscriptions == vec![expected.clone()]);
    // A missing topic refuses the whole commit.
    let refused = store
        .commit(Commit {
            appends: vec![
                (dead, messages(&["x"])),
                (TopicId(u64::MAX - 1), messages(&["y"])),
            ],
            deliveries: vec![acks_update(sub.id, AckState::starting_at(3))],
        })
        .await;
    ensure!(
        matches!(refused, Err(StoreError::TopicNotFound(_))),
        "{refused:?}"
    );
    ensure!(next_offset(&store, dead).await? == 1, "nothing appended");
    ensure!(recorder.take().is_empty(), "nothing heard");

    let store = h.reopen(store).await?;
    ensure!(store.load().await?.subscriptions == vec![expected], "kept");
    ensure!(
        payloads(&store.read(dead, 0..1, EVERYTHING).await?) == [Bytes::from("payload b copy")]
    );
    // Dead letters leave with their subscription.
    store.delete_subscription(sub.id).await?;
    let again = store
        .create_subscription(
            &subscription_name("s")?,
            source,
            settings(Duration::from_secs(10)),
            AckState::default(),
        )
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&again, AckState::default())]);
    store.close().await?;
    Ok(())
}

pub(super) async fn the_listener_hears_every_append_in_order(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let recorder = Arc::new(Recorder::default());
    store.set_listener(Arc::clone(&recorder) as Arc<dyn StoreListener>);
    let a = disk_topic(&store, "a").await?;
    let b = disk_topic(&store, "b").await?;
    store.append(a, messages(&["1", "2"])).await?;
    store.append(b, messages(&["x"])).await?;
    store.append(a, messages(&["3"])).await?;
    ensure!(
        recorder.take()
            == vec![
                Heard::Appended(a, 0, messages(&["1", "2"])),
                Heard::Appended(b, 0, messages(&["x"])),
                Heard::Appended(a, 2, messages(&["3"])),
            ]
    );
    // Heard even when nobody waits for the answer.
    let store_clone = store.clone();
    let dropped = tokio::spawn(async move { store_clone.append(a, messages(&["4"])).await });
    dropped.abort();
    let _ = dropped.await;
    store.append(a, messages(&["5"])).await?;
    let heard = recorder.take();
    let firsts: Vec<Offset> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Appended(_, first, _) => Some(*first),
            Heard::Truncated(..) => None,
        })
        .collect();
    let stored = next_offset(&store, a).await?;
    ensure!(
        firsts.len() as u64 + 3 == stored && firsts.windows(2).all(|w| w[0] < w[1]),
        "every stored batch heard, in order: {heard:?}"
    );
    store.truncate(a, 2).await?;
    ensure!(recorder.take() == vec![Heard::Truncated(a, 2)]);
    Ok(())
}

pub(super) async fn retained_bytes_follow_appends_and_trims(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let settings = TopicSettings::default();
    let topic = store
        .create_topic(&topic_name("t")?, settings, StorageClass::Disk)
        .await?;
    ensure!(topic.retained_bytes == 0);
    let first = store.append(topic.id, messages(&["a", "b"])).await?;
    let per = first.retained_bytes / 2;
    ensure!(per > 0 && first.retained_bytes == 2 * per, "{first:?}");
    let second = store.append(topic.id, messages(&["c", "d"])).await?;
    ensure!(second.retained_bytes == 4 * per, "{second:?}");
    let retained = |catalog: Catalog| catalog.topics[0].retained_bytes;
    ensure!(retained(store.load().await?) == 4 * per);
    ensure!(
        store.trim(topic.id, 0, 1).await? == 1,
        "a byte to drop takes the whole oldest message"
    );
    ensure!(retained(store.load().await?) == 3 * per);
    ensure!(
        store.trim(topic.id, 2, 2 * per).await? == 3,
        "past `before`, on until enough bytes are gone"
    );
    ensure!(retained(store.load().await?) == per);
    let store = h.reopen(store).await?;
    ensure!(
        retained(store.load().await?) == per,
        "kept across a restart"
    );
    let third = store.append(topic.id, messages(&["e"])).await?;
    ensure!(third.retained_bytes == 2 * per, "{third:?}");
    Ok(())
}

/// Appends started one after another are stored in that order, on disk
/// and memory topics alike, however their outcomes are awaited: here all
/// together, as a `PublishStream` awaits them.
pub(super) async fn started_appends_are_stored_in_the_order_started(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    const PER_TOPIC: usize = 1000;
    let store = h.open().await?;
    let mut topics = Vec::new();
    for (name, storage) in [
        ("disk", StorageClass::Disk),
        ("memory", StorageClass::Memory),
    ] {
        let record = store
            .create_topic(&topic_name(name)?, TopicSettings::default(), storage)
            .await?;
        topics.push(record.id);
    }
    let mut pending = Vec::new();
    for i in 0..PER_TOPIC {
        for &topic in &topics {
            let tag = format!("m{i}");
            pending.push(store.start_append(topic, messages(&[tag.as_str()])).await?);
        }
    }
    let appended = futures::future::try_join_all(pending).await?;
    for (t, &topic) in topics.iter().enumerate() {
        let firsts: Vec<u64> = appended
            .iter()
            .skip(t)
            .step_by(topics.len())
            .map(|a| a.first_offset)
            .collect();
        let expected: Vec<u64> = (0..PER_TOPIC as u64).collect();
        ensure!(firsts == expected, "topic {t}: offsets out of start order");
        let read = store.read(topic, 0..u64::MAX, EVERYTHING).await?;
        let sent: Vec<Bytes> = (0..PER_TOPIC)
            .map(|i| message(&format!("m{i}")).payload)
            .collect();
        ensure!(
            payloads(&read) == sent,
            "topic {t}: stored out of start order"
        );
    }
    Ok(())
}
