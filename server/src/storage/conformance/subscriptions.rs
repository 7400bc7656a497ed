//! Subscriptions: records, settings, ack states and delivery records.

use super::*;

pub(super) async fn ack_states_are_saved_replaced_and_loaded(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let name = subscription_name("s")?;
    let deadline = Duration::from_secs(30);
    let sub = store
        .create_subscription(&name, topic, settings(deadline), AckState::starting_at(3))
        .await?;
    let catalog = store.load().await?;
    ensure!(catalog.subscriptions == vec![stored(&sub, AckState::starting_at(3))]);
    let mut state = AckState::starting_at(3);
    for offset in [5, 6, 9] {
        state.ack(offset);
    }
    store
        .save_deliveries(vec![acks_update(sub.id, state.clone())])
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, state.clone())]);
    state.ack(3);
    state.ack(4);
    ensure!(state.floor == 7);
    // A state for a subscription that does not exist is ignored.
    let unknown = SubscriptionId(u64::MAX - 1);
    store
        .save_deliveries(vec![
            acks_update(unknown, AckState::starting_at(1)),
            acks_update(sub.id, state.clone()),
        ])
        .await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, state)]);
    Ok(())
}

pub(super) async fn subscriptions_are_created_and_deleted(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let deadline = Duration::from_millis(12_500);
    let first = store
        .create_subscription(
            &subscription_name("one")?,
            topic,
            settings(deadline),
            AckState::default(),
        )
        .await?;
    let second = store
        .create_subscription(
            &subscription_name("two")?,
            topic,
            settings(deadline),
            AckState::starting_at(7),
        )
        .await?;
    ensure!(first.id < second.id, "ids grow");
    ensure!(
        first.topic == topic
            && first.settings.ack_deadline == deadline
            && first.name.as_str() == "one"
    );
    let listed: Vec<_> = store
        .load()
        .await?
        .subscriptions
        .into_iter()
        .map(|s| s.record)
        .collect();
    ensure!(listed == vec![first.clone(), second.clone()], "{listed:?}");
    store.delete_subscription(first.id).await?;
    let again = store.delete_subscription(first.id).await;
    ensure!(
        matches!(again, Err(StoreError::SubscriptionNotFound(id)) if id == first.id),
        "{again:?}"
    );
    // Saving the deleted one's state must not bring it back.
    store
        .save_deliveries(vec![acks_update(first.id, AckState::starting_at(2))])
        .await?;
    let left = store.load().await?.subscriptions;
    ensure!(
        left == vec![stored(&second, AckState::starting_at(7))],
        "{left:?}"
    );
    let orphan = store
        .create_subscription(
            &subscription_name("x")?,
            TopicId(u64::MAX - 1),
            settings(deadline),
            AckState::default(),
        )
        .await;
    ensure!(
        matches!(orphan, Err(StoreError::TopicNotFound(_))),
        "{orphan:?}"
    );
    Ok(())
}

pub(super) async fn subscription_settings_change_and_survive_a_reopen(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let mut acks = AckState::starting_at(3);
    acks.ack(5);
    let sub = store
        .create_subscription(
            &subscription_name("s")?,
            topic,
            settings(Duration::from_secs(10)),
            acks.clone(),
        )
        .await?;
    let changed = SubscriptionRecord {
        settings: SubscriptionSettings {
            ack_deadline: Duration::from_secs(45),
            filter: r#"attributes.kind = "order""#.to_owned(),
            retry: Some(crate::storage::RetryPolicy {
                minimum_backoff: Duration::from_millis(250),
                maximum_backoff: Duration::from_secs(60),
            }),
            ordered: false,
            dead_letter: Some(crate::storage::DeadLetterPolicy {
                topic: topic_name("t")?,
                max_delivery_attempts: 3,
            }),
            delivery_delay: Duration::from_secs(90),
            push: Some(crate::storage::PushConfig {
                endpoint: "https://hooks.example/tidings".to_owned(),
                headers: [("authorization".to_owned(), "Bearer t".to_owned())].into(),
                max_outstanding: 7,
            }),
        },
        ..sub.clone()
    };
    store.update_subscription(changed.clone()).await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&changed, acks.clone())]);
    let store = h.reopen(store).await?;
    let loaded = store.load().await?.subscriptions;
    ensure!(
        loaded == vec![stored(&changed, acks.clone())],
        "settings and acks as they were: {loaded:?}"
    );
    // Back to no filter: the record reads back without one.
    store.update_subscription(sub.clone()).await?;
    ensure!(store.load().await?.subscriptions == vec![stored(&sub, acks)]);
    store.delete_subscription(sub.id).await?;
    let gone = store.update_subscription(sub.clone()).await;
    ensure!(
        matches!(gone, Err(StoreError::SubscriptionNotFound(id)) if id == sub.id),
        "{gone:?}"
    );
    ensure!(
        store.load().await?.subscriptions.is_empty(),
        "not brought back"
    );
    store.close().await?;
    Ok(())
}

pub(super) async fn delivery_records_are_stored_deleted_and_go_with_their_subscription(
    mut h: impl Harness,
) -> anyhow::Result<()> {
    let store = h.open().await?;
    let topic = disk_topic(&store, "t").await?;
    let deadline = Duration::from_secs(30);
    let create = |name: &'static str| {
        let store = store.clone();
        async move {
            let name = subscription_name(name)?;
            let created = store
                .create_subscription(&name, topic, settings(deadline), AckState::default())
                .await?;
            anyhow::Ok(created)
        }
    };
    let (one, two) = (create("one").await?, create("two").await?);
    let record = |failures| DeliveryRecord {
        failures,
        redeliver_at: None,
    };
    let later = DeliveryRecord {
        failures: 1,
        redeliver_at: Some(UNIX_EPOCH + Duration::from_micros(1_900_000_000_000_001)),
    };
    store
        .save_deliveries(vec![
            DeliveryUpdate {
                records: vec![(7, Some(record(1))), (3, Some(later)), (9, Some(record(4)))],
                ..acks_update(one.id, AckState::default())
            },
            DeliveryUpdate {
                records: vec![(7, Some(record(2)))],
                ..acks_update(two.id, AckState::default())
            },
        ])
        .await?;
    store
        .save_deliveries(vec![DeliveryUpdate {
            records: vec![(9, None), (7, Some(record(5))), (100, None)],
            ..acks_update(one.id, AckState::starting_at(2))
        }])
        .await?;
    let loaded = store.load().await?.subscriptions;
    let expected = vec![
        StoredSubscription {
            deliveries: vec![(3, later), (7, record(5))],
            ..stored(&one, AckState::starting_at(2))
        },
        StoredSubscription {
            deliveries: vec![(7, record(2))],
            ..stored(&two, AckState::default())
        },
    ];
    ensure!(loaded == expected, "{loaded:?}");
    store.delete_subscription(one.id).await?;
    let again = create("one").await?;
    let loaded = store.load().await?.subscriptions;
    ensure!(
        loaded == vec![expected[1].clone(), stored(&again, AckState::default())],
        "a deleted subscription's records go with it: {loaded:?}"
    );
    Ok(())
}
