//! A store's life: deleting topics, reopening, closing.

use super::*;

pub(super) async fn delete_topic_removes_messages_and_subscriptions(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let doomed = store
        .create_topic(
            &topic_name("doomed")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let kept = store
        .create_topic(
            &topic_name("kept")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    store.append(doomed.id, messages(&["a", "b"])).await?;
    store.append(kept.id, messages(&["k"])).await?;
    let deadline = Duration::from_secs(10);
    store
        .create_subscription(
            &subscription_name("gone")?,
            doomed.id,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    let stays = store
        .create_subscription(
            &subscription_name("stays")?,
            kept.id,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    store.delete_topic(doomed.id).await?;

    ensure!(
        store
            .read(doomed.id, 0..u64::MAX, EVERYTHING)
            .await?
            .is_empty()
    );
    ensure!(store.read_offsets(doomed.id, vec![0, 1]).await?.is_empty());
    let catalog = store.load().await?;
    ensure!(catalog.topics.iter().map(|t| t.id).collect::<Vec<_>>() == vec![kept.id]);
    ensure!(catalog.subscriptions == vec![stored(&stays, AckState::default())]);
    let append = store.append(doomed.id, messages(&["c"])).await;
    ensure!(
        matches!(append, Err(StoreError::TopicNotFound(id)) if id == doomed.id),
        "{append:?}"
    );
    let again = store.delete_topic(doomed.id).await;
    ensure!(
        matches!(again, Err(StoreError::TopicNotFound(_))),
        "{again:?}"
    );
    let at = store.offset_at_time(doomed.id, UNIX_EPOCH).await;
    ensure!(matches!(at, Err(StoreError::TopicNotFound(_))), "{at:?}");
    let sub = store
        .create_subscription(
            &subscription_name("late")?,
            doomed.id,
            settings(deadline),
            AckState::default(),
        )
        .await;
    ensure!(matches!(sub, Err(StoreError::TopicNotFound(_))), "{sub:?}");

    // The name can be used again, under a fresh id and with no old data.
    let reborn = store
        .create_topic(
            &topic_name("doomed")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(
        reborn.id > kept.id && reborn.id != doomed.id,
        "ids are not reused"
    );
    ensure!(
        store
            .append(reborn.id, messages(&["new"]))
            .await?
            .first_offset
            == 0
    );
    ensure!(
        payloads(&store.read(reborn.id, 0..u64::MAX, EVERYTHING).await?)
            == vec![message("new").payload]
    );
    ensure!(
        store.read(kept.id, 0..u64::MAX, EVERYTHING).await?.len() == 1,
        "other topics untouched"
    );
    Ok(())
}

pub(super) async fn reopen_keeps_everything(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let kept_for_a_day = TopicSettings {
        retention: Retention {
            max_age: Some(Duration::from_secs(86_400)),
            ..Retention::default()
        },
        dedup_window: Duration::from_secs(600),
    };
    let topic = store
        .create_topic(
            &topic_name("orders")?,
            kept_for_a_day.clone(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(topic.settings == kept_for_a_day);
    let deleted = store
        .create_topic(
            &topic_name("deleted")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    let before = store.append(topic.id, messages(&["a", "b", "c"])).await?;
    let changed = TopicSettings {
        retention: Retention {
            max_messages: Some(10),
            discard_acked: true,
            ..kept_for_a_day.retention
        },
        dedup_window: Duration::ZERO,
    };
    store
        .update_topic(TopicRecord {
            settings: changed.clone(),
            ..topic.clone()
        })
        .await?;
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic.id,
            settings(Duration::from_secs(30)),
            AckState::default(),
        )
        .await?;
    let mut state = AckState::default();
    state.ack(0);
    state.ack(2);
    let record = DeliveryRecord {
        failures: 2,
        redeliver_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
    };
    let update = DeliveryUpdate {
        records: vec![(1, Some(record))],
        ..acks_update(sub.id, state.clone())
    };
    store.save_deliveries(vec![update]).await?;
    store.truncate(topic.id, 1).await?;
    store.delete_topic(deleted.id).await?;
    let catalog = store.load().await?;

    let store = h.reopen(store).await?;
    let reopened = store.load().await?;
    ensure!(reopened == catalog, "{reopened:?} != {catalog:?}");
    ensure!(reopened.topics[0].next_offset == 3 && reopened.topics[0].first_offset == 1);
    ensure!(
        reopened.topics[0].settings == changed,
        "{:?}",
        reopened.topics[0].settings
    );
    let expected = StoredSubscription {
        deliveries: vec![(1, record)],
        ..stored(&sub, state)
    };
    ensure!(reopened.subscriptions == vec![expected]);
    let read = store.read(topic.id, 0..u64::MAX, EVERYTHING).await?;
    ensure!(payloads(&read) == payloads(&store.read_offsets(topic.id, vec![0, 1, 2]).await?));
    ensure!(
        offsets(&read) == vec![1, 2]
            && read[1].key == "key c"
            && read[0].publish_time == before.publish_time
    );

    let after = store.append(topic.id, messages(&["d"])).await?;
    ensure!(after.first_offset == 3, "continues at the old head");
    ensure!(
        after.publish_time >= before.publish_time,
        "publish time never decreases"
    );
    let newer = store
        .create_topic(
            &topic_name("newer")?,
            TopicSettings::default(),
            StorageClass::Disk,
        )
        .await?;
    ensure!(
        newer.id > deleted.id,
        "a deleted topic's id is not reused after a restart"
    );
    let gone = store.append(deleted.id, messages(&["x"])).await;
    ensure!(
        matches!(gone, Err(StoreError::TopicNotFound(_))),
        "{gone:?}"
    );
    store.close().await?;
    Ok(())
}

pub(super) async fn closed_store_refuses_calls(mut h: impl Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    store.append(topic, messages(&["a"])).await?;
    store.close().await?;
    store.close().await.context("closing twice is fine")?;
    let closed = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Closed));
    ensure!(closed(store.load().await.map(drop)));
    ensure!(closed(
        store.append(topic, messages(&["b"])).await.map(drop)
    ));
    ensure!(closed(
        store
            .create_topic(
                &topic_name("u")?,
                TopicSettings::default(),
                StorageClass::Disk
            )
            .await
            .map(drop)
    ));
    ensure!(closed(
        store.read(topic, 0..u64::MAX, EVERYTHING).await.map(drop)
    ));
    ensure!(closed(store.read_offsets(topic, vec![0]).await.map(drop)));
    ensure!(closed(
        store.offset_at_time(topic, UNIX_EPOCH).await.map(drop)
    ));
    ensure!(closed(store.save_deliveries(Vec::new()).await));
    ensure!(closed(store.commit(Commit::default()).await.map(drop)));
    ensure!(closed(store.truncate(topic, 1).await.map(drop)));
    ensure!(closed(store.delete_topic(topic).await));
    Ok(())
}
