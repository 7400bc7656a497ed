//! The admin tasks of the [`Broker`]: creating, changing and deleting
//! topics and subscriptions. Each runs as a task of its own under the
//! admin lock (see `Broker::admin`), with the store call first and the
//! names after, so a request dropped halfway leaves the change to finish.

use std::sync::Arc;

use tracing::info;

use super::Broker;
use crate::broker::checks::{check_dead_letter, not_found_as_topic};
use crate::broker::subscription::Subscription;
use crate::broker::topic::Topic;
use crate::broker::*;
use crate::offsets::AckState;
use crate::storage::{
    DeadLetters, StoreError, StoredSubscription, SubscriptionSettings, TopicSettings,
};

impl Broker {
    pub(super) async fn do_create_topic(
        &self,
        name: TopicName,
        settings: TopicSettings,
        storage: StorageClass,
    ) -> BrokerResult<TopicInfo> {
        if self.names().topics.contains_key(&name) {
            return Err(BrokerError::TopicExists(name));
        }
        let limit = self.inner.config.limits.topics;
        if let Some(limit) = limit.filter(|&l| self.names().topics.len() >= l) {
            return Err(BrokerError::LimitReached {
                what: "topics",
                limit,
                flag: "max-topics",
                hint: "delete topics no longer used",
            });
        }
        let record = self
            .inner
            .store
            .create_topic(&name, settings, storage)
            .await?;
        let topic = Arc::new(Topic::new(&record));
        let info = topic.info();
        self.inner.topics.insert(Arc::clone(&topic));
        self.names().topics.insert(name, topic);
        info!(topic = %info.name, ?storage, "topic created");
        Ok(info)
    }

    pub(super) async fn do_update_topic(&self, update: TopicUpdate) -> BrokerResult<TopicInfo> {
        let topic = self.topic(&update.name)?;
        let mut settings = topic.settings();
        let retention = &mut settings.retention;
        if let Some(max_age) = update.max_age {
            retention.max_age = max_age;
        }
        if let Some(max_messages) = update.max_messages {
            retention.max_messages = max_messages;
        }
        if let Some(max_bytes) = update.max_bytes {
            retention.max_bytes = max_bytes;
        }
        if let Some(discard_acked) = update.discard_acked {
            retention.discard_acked = discard_acked;
        }
        if let Some(window) = update.dedup_window {
            settings.dedup_window = window;
        }
        self.inner
            .store
            .update_topic(topic.record_with(settings.clone()))
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        topic.set_settings(settings);
        let info = topic.info();
        info!(
            topic = %info.name,
            retention = ?info.retention,
            dedup_window = ?info.dedup_window,
            "topic updated"
        );
        Ok(info)
    }

    pub(super) async fn do_delete_topic(&self, name: TopicName) -> BrokerResult<()> {
        let topic = self.topic(&name)?;
        self.inner
            .store
            .delete_topic(topic.id)
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        {
            let mut names = self.names();
            names.topics.remove(&name);
            names.subscriptions.retain(|_, s| s.topic.id != topic.id);
        }
        self.inner.topics.remove(topic.id);
        topic.deleted.cancel();
        info!(topic = %name, "topic deleted");
        Ok(())
    }

    pub(super) async fn do_create_subscription(
        &self,
        spec: SubscriptionSpec,
        settings: SubscriptionSettings,
    ) -> BrokerResult<SubscriptionInfo> {
        if self.names().subscriptions.contains_key(&spec.name) {
            return Err(BrokerError::SubscriptionExists(spec.name));
        }
        let limit = self.inner.config.limits.subscriptions;
        if let Some(limit) = limit.filter(|&l| self.names().subscriptions.len() >= l) {
            return Err(BrokerError::LimitReached {
                what: "subscriptions",
                limit,
                flag: "max-subscriptions",
                hint: "delete subscriptions no longer used",
            });
        }
        let topic = self.topic(&spec.topic)?;
        self.dead_letter_topic_exists(settings.dead_letter.as_ref())?;
        let floor = self.start_offset(&topic, spec.start).await?;
        let acks = AckState::starting_at(floor);
        let record = self
            .inner
            .store
            .create_subscription(&spec.name, topic.id, settings, acks.clone())
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        let stored = StoredSubscription {
            record,
            acks,
            deliveries: Vec::new(),
            dead_letters: DeadLetters::default(),
        };
        let sub = Arc::new(Subscription::new(stored, topic));
        let info = sub.info();
        self.names().subscriptions.insert(spec.name, sub);
        info!(subscription = %info.name, topic = %info.topic, floor, "subscription created");
        Ok(info)
    }

    /// A dead-letter policy's topic must exist when it is set.
    fn dead_letter_topic_exists(&self, policy: Option<&DeadLetterPolicy>) -> BrokerResult<()> {
        match policy {
            Some(policy) if !self.names().topics.contains_key(&policy.topic) => {
                Err(BrokerError::DeadLetterTopicNotFound(policy.topic.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Where a new subscription begins; below the first offset means at it.
    pub(super) async fn start_offset(
        &self,
        topic: &Topic,
        start: StartPosition,
    ) -> BrokerResult<Offset> {
        let head = topic.head();
        let first = topic.first_offset().min(head);
        match start {
            StartPosition::Earliest => Ok(first),
            StartPosition::Latest => Ok(head),
            StartPosition::Offset(offset) if offset <= head => Ok(offset.max(first)),
            StartPosition::Offset(offset) => Err(BrokerError::OffsetNotPublished {
                topic: topic.name.clone(),
                offset,
                next_offset: head,
            }),
            StartPosition::Time(time) => {
                let offset = self.inner.store.offset_at_time(topic.id, time).await;
                Ok(offset.map_err(|e| not_found_as_topic(e, topic))?.max(first))
            }
        }
    }

    /// Stores the new settings, then applies them to the live
    /// subscription, whose streams follow at once.
    pub(super) async fn do_update_subscription(
        &self,
        update: SubscriptionUpdate,
        filter: Option<Option<Arc<Filter>>>,
    ) -> BrokerResult<SubscriptionInfo> {
        let sub = self.subscription(&update.name)?;
        if let Some(dead_letter) = &update.dead_letter {
            check_dead_letter(dead_letter.as_ref(), &sub.topic.name)?;
            self.dead_letter_topic_exists(dead_letter.as_ref())?;
        }
        let mut record = sub.record();
        if let Some(deadline) = update.ack_deadline {
            record.settings.ack_deadline = deadline;
        }
        if let Some(text) = update.filter {
            record.settings.filter = text;
        }
        if let Some(retry) = update.retry {
            record.settings.retry = retry;
        }
        if let Some(dead_letter) = update.dead_letter {
            record.settings.dead_letter = dead_letter;
        }
        if let Some(delay) = update.delivery_delay {
            record.settings.delivery_delay = delay;
        }
        if let Some(push) = update.push {
            record.settings.push = push;
        }
        match self.inner.store.update_subscription(record.clone()).await {
            Ok(()) => {}
            // Deleted meanwhile, with its topic.
            Err(StoreError::SubscriptionNotFound(_)) => {
                return Err(BrokerError::SubscriptionNotFound(update.name));
            }
            Err(err) => return Err(err.into()),
        }
        sub.apply(record.settings, filter);
        info!(subscription = %sub.name, "subscription updated");
        Ok(sub.info())
    }

    pub(super) async fn do_delete_subscription(&self, name: SubscriptionName) -> BrokerResult<()> {
        let sub = self.subscription(&name)?;
        match self.inner.store.delete_subscription(sub.id).await {
            // Its topic was deleted meanwhile, which took it along.
            Ok(()) | Err(StoreError::SubscriptionNotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        self.names().subscriptions.remove(&name);
        sub.deleted.cancel();
        info!(subscription = %name, "subscription deleted");
        Ok(())
    }
}
