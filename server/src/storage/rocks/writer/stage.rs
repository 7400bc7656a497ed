//! How the writer stages the changes that are not appends: topics and
//! subscriptions created, changed, truncated and deleted, commits, and
//! delivery states. Part of [`Writer`]'s implementation.

use super::*;

impl Writer {
    /// A topic's settings changed: its record, and the dedup window the
    /// writer and the compaction filter go by.
    pub(super) fn stage_update_topic(
        &mut self,
        record: &TopicRecord,
        batch: &mut Batch<'_>,
    ) -> StoreResult<()> {
        self.claim_ram(record.id);
        let head = self
            .topics
            .get_mut(&record.id)
            .ok_or(StoreError::TopicNotFound(record.id))?;
        self.undo.push(Undo::Topic(record.id, Some(head.clone())));
        head.dedup_window = record.settings.dedup_window;
        head.retention = record.settings.retention;
        self.windows.set(record.id, head.dedup_window);
        // The storage class is fixed: the one stored stays.
        let storage = match head.ram {
            Some(_) => StorageClass::Memory,
            None => StorageClass::Disk,
        };
        batch.put_topic_record(&TopicRecord {
            storage,
            ..record.clone()
        });
        Ok(())
    }

    pub(super) fn stage_create_topic(
        &mut self,
        name: TopicName,
        settings: TopicSettings,
        storage: StorageClass,
        batch: &mut Batch<'_>,
    ) -> TopicRecord {
        // Not rolled back on failure: skipping an id is harmless.
        self.last_topic_id += 1;
        let record = TopicRecord {
            id: TopicId(self.last_topic_id),
            name,
            first_offset: 0,
            next_offset: 0,
            created: codec::truncate_to_micros(SystemTime::now()),
            settings,
            retained_bytes: 0,
            storage,
        };
        batch.put_topic(&record);
        let head = TopicHead {
            first_offset: 0,
            next_offset: 0,
            retained_bytes: 0,
            last_publish: UNIX_EPOCH,
            dedup_window: record.settings.dedup_window,
            retention: record.settings.retention,
            ram: (storage == StorageClass::Memory).then(|| {
                RamHead::starting_at(0, record.settings.dedup_window, record.settings.retention)
            }),
        };
        self.windows.set(record.id, head.dedup_window);
        self.logs.set(record.id, head.ram_log());
        if head.ram.is_none() {
            self.remembered.insert(record.id, Remembered::default());
        }
        let previous = self.topics.insert(record.id, head);
        self.undo.push(Undo::Topic(record.id, previous));
        record
    }

    /// Deletes `from..before` (at most the head), which holds `bytes`, and
    /// moves the first offset up; returns it and the retained bytes left.
    pub(super) fn stage_truncate(
        &mut self,
        topic: TopicId,
        from: Offset,
        before: Offset,
        bytes: u64,
        batch: &mut Batch<'_>,
    ) -> StoreResult<(Offset, u64)> {
        let head = self
            .topics
            .get_mut(&topic)
            .ok_or(StoreError::TopicNotFound(topic))?;
        let before = before.min(head.next_offset);
        if before <= head.first_offset {
            return Ok((head.first_offset, head.retained_bytes));
        }
        if head.first_offset != from {
            return Err(StoreError::Engine {
                context: "truncating a topic",
                source: format!(
                    "the first offset moved from {from} to {} meanwhile; try again",
                    head.first_offset
                )
                .into(),
            });
        }
        self.undo.push(Undo::Topic(topic, Some(head.clone())));
        batch.truncate(topic, head.first_offset, before);
        head.first_offset = before;
        head.retained_bytes = head.retained_bytes.saturating_sub(bytes);
        batch.put_head(topic, head.next_offset, head.retained_bytes);
        Ok((before, head.retained_bytes))
    }

    pub(super) fn stage_delete_topic(
        &mut self,
        topic: TopicId,
        batch: &mut Batch<'_>,
    ) -> StoreResult<()> {
        self.claim_ram(topic);
        let head = self
            .topics
            .remove(&topic)
            .ok_or(StoreError::TopicNotFound(topic))?;
        self.undo.push(Undo::Topic(topic, Some(head)));
        self.windows.remove(topic);
        self.remembered.remove(&topic);
        self.logs.set(topic, None);
        batch.delete_topic(topic);
        let doomed: Vec<SubscriptionId> = self
            .subscriptions
            .iter()
            .filter(|&(_, &t)| t == topic)
            .map(|(&id, _)| id)
            .collect();
        for id in doomed {
            self.stage_delete_subscription(id, batch)?;
        }
        Ok(())
    }

    pub(super) fn stage_create_subscription(
        &mut self,
        new: NewSubscription,
        batch: &mut Batch<'_>,
    ) -> StoreResult<SubscriptionRecord> {
        if !self.topics.contains_key(&new.topic) {
            return Err(StoreError::TopicNotFound(new.topic));
        }
        // Not rolled back on failure: skipping an id is harmless.
        self.last_subscription_id += 1;
        let record = SubscriptionRecord {
            id: SubscriptionId(self.last_subscription_id),
            name: new.name,
            topic: new.topic,
            settings: new.settings,
            created: codec::truncate_to_micros(SystemTime::now()),
        };
        batch.put_subscription(&record, &new.initial);
        let previous = self.subscriptions.insert(record.id, record.topic);
        self.undo.push(Undo::Subscription(record.id, previous));
        Ok(record)
    }

    pub(super) fn stage_update_subscription(
        &mut self,
        record: &SubscriptionRecord,
        batch: &mut Batch<'_>,
    ) -> StoreResult<()> {
        if self.subscriptions.get(&record.id) != Some(&record.topic) {
            return Err(StoreError::SubscriptionNotFound(record.id));
        }
        batch.put_subscription_record(record);
        Ok(())
    }

    pub(super) fn stage_delete_subscription(
        &mut self,
        subscription: SubscriptionId,
        batch: &mut Batch<'_>,
    ) -> StoreResult<()> {
        let topic = self
            .subscriptions
            .remove(&subscription)
            .ok_or(StoreError::SubscriptionNotFound(subscription))?;
        self.undo
            .push(Undo::Subscription(subscription, Some(topic)));
        batch.delete_subscription(subscription);
        Ok(())
    }

    /// Appends and delivery state in the one batch; nothing is staged when
    /// a topic is missing.
    pub(super) fn stage_commit(
        &mut self,
        commit: &Commit,
        batch: &mut Batch<'_>,
    ) -> StoreResult<Vec<Appended>> {
        if let Some((topic, _)) = commit
            .appends
            .iter()
            .find(|(topic, _)| !self.topics.contains_key(topic))
        {
            return Err(StoreError::TopicNotFound(*topic));
        }
        let appended = commit
            .appends
            .iter()
            .map(|(topic, messages)| self.stage_append(*topic, messages, batch))
            .collect::<StoreResult<Vec<_>>>()?;
        self.stage_deliveries(&commit.deliveries, batch);
        Ok(appended)
    }

    /// Updates of subscriptions that no longer exist are ignored.
    pub(super) fn stage_deliveries(&self, updates: &[DeliveryUpdate], batch: &mut Batch<'_>) {
        let live = updates
            .iter()
            .filter(|u| self.subscriptions.contains_key(&u.subscription));
        for update in live {
            batch.put_ack_state(update.subscription, &update.acks);
            for (offset, record) in &update.records {
                batch.put_delivery(update.subscription, *offset, record.as_ref());
            }
            if let Some(dead) = &update.dead_letters {
                batch.put_dead_letters(update.subscription, dead);
            }
        }
    }
}
