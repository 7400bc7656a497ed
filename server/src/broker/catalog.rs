//! The [`Broker`] handle: the names of live topics and subscriptions, and
//! the calls every front door (gRPC today) makes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::acks::AckWriter;
use super::checks::{check_batch, check_duration, not_found_as_topic, page};
use super::stream::{FRAME_BUFFER, StreamTask};
use super::subscription::Subscription;
use super::topic::Topic;
use super::*;
use crate::offsets::AckState;
use crate::storage::{NewMessage, SharedStore, StoreError};

/// The broker: a cheap `Clone` handle over one shared state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    config: BrokerConfig,
    names: Mutex<Names>,
    /// Serialises creations and deletions, which check a name, await the
    /// store, then change the names. Only admin calls take it; it is a tokio
    /// mutex because it is held across that await, on purpose.
    admin: tokio::sync::Mutex<()>,
    acks: Arc<AckWriter>,
    /// Cancelled by [`Broker::begin_shutdown`].
    shutdown: CancellationToken,
    /// Cancelled by [`Broker::close`], after the last flush of acks.
    stop_acks: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Default)]
struct Names {
    topics: BTreeMap<TopicName, Arc<Topic>>,
    subscriptions: BTreeMap<SubscriptionName, Arc<Subscription>>,
}

impl Broker {
    /// Loads the catalog from `store` and starts the broker's background
    /// task (the acknowledgement writer).
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the store cannot be read.
    pub async fn open(store: SharedStore, config: BrokerConfig) -> BrokerResult<Self> {
        let catalog = store.load().await?;
        let mut names = Names::default();
        let mut by_id = BTreeMap::new();
        for record in &catalog.topics {
            let topic = Arc::new(Topic::new(record));
            by_id.insert(record.id, Arc::clone(&topic));
            names.topics.insert(record.name.clone(), topic);
        }
        for (record, acks) in catalog.subscriptions {
            let Some(topic) = by_id.get(&record.topic) else {
                warn!(subscription = %record.name, "subscription of a missing topic skipped");
                continue;
            };
            let sub = Subscription::new(&record, Arc::clone(topic), acks);
            names
                .subscriptions
                .insert(record.name.clone(), Arc::new(sub));
        }
        info!(
            topics = names.topics.len(),
            subscriptions = names.subscriptions.len(),
            "broker opened"
        );
        let inner = Arc::new(Inner {
            store,
            config,
            names: Mutex::new(names),
            admin: tokio::sync::Mutex::new(()),
            acks: Arc::new(AckWriter::new()),
            shutdown: CancellationToken::new(),
            stop_acks: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let writer = Arc::clone(&inner.acks);
        inner
            .tasks
            .spawn(writer.run(Arc::clone(&inner.store), inner.stop_acks.clone()));
        Ok(Self { inner })
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        self.inner.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn topic(&self, name: &TopicName) -> BrokerResult<Arc<Topic>> {
        self.names()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.clone()))
    }

    fn subscription(&self, name: &SubscriptionName) -> BrokerResult<Arc<Subscription>> {
        self.names()
            .subscriptions
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::SubscriptionNotFound(name.clone()))
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`BrokerError::TopicExists`] when the name is taken.
    pub async fn create_topic(&self, name: TopicName) -> BrokerResult<TopicInfo> {
        let _admin = self.inner.admin.lock().await;
        if self.names().topics.contains_key(&name) {
            return Err(BrokerError::TopicExists(name));
        }
        let record = self.inner.store.create_topic(&name).await?;
        let topic = Arc::new(Topic::new(&record));
        let info = topic.info();
        self.names().topics.insert(name, topic);
        info!(topic = %info.name, "topic created");
        Ok(info)
    }

    /// Returns a topic.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    pub fn get_topic(&self, name: &TopicName) -> BrokerResult<TopicInfo> {
        Ok(self.topic(name)?.info())
    }

    /// Lists up to `limit` topics whose names sort after `after`.
    pub fn list_topics(&self, after: Option<&str>, limit: usize) -> Page<TopicInfo> {
        let names = self.names();
        page(&names.topics, after, limit, |_| true, |t| t.info())
    }

    /// Deletes a topic, its messages and its subscriptions; their open
    /// streams end with [`BrokerError::TopicDeleted`].
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    pub async fn delete_topic(&self, name: &TopicName) -> BrokerResult<()> {
        let _admin = self.inner.admin.lock().await;
        let topic = {
            let mut names = self.names();
            let topic = names
                .topics
                .remove(name)
                .ok_or_else(|| BrokerError::TopicNotFound(name.clone()))?;
            names.subscriptions.retain(|_, s| s.topic.id != topic.id);
            topic
        };
        topic.deleted.cancel();
        self.inner.store.delete_topic(topic.id).await?;
        info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Creates a subscription.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionExists`], [`BrokerError::TopicNotFound`],
    /// [`BrokerError::OffsetNotPublished`] for a start offset above the
    /// topic's next offset, [`BrokerError::DurationOutOfRange`] for the ack
    /// deadline.
    pub async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> BrokerResult<SubscriptionInfo> {
        let ack_deadline = spec.ack_deadline.unwrap_or(DEFAULT_ACK_DEADLINE);
        check_duration("ack deadline", ack_deadline, Duration::from_secs(1))?;
        let _admin = self.inner.admin.lock().await;
        if self.names().subscriptions.contains_key(&spec.name) {
            return Err(BrokerError::SubscriptionExists(spec.name));
        }
        let topic = self.topic(&spec.topic)?;
        let floor = self.start_offset(&topic, spec.start).await?;
        let record = self
            .inner
            .store
            .create_subscription(
                &spec.name,
                topic.id,
                ack_deadline,
                AckState::starting_at(floor),
            )
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        let sub = Arc::new(Subscription::new(
            &record,
            topic,
            AckState::starting_at(floor),
        ));
        let info = sub.info();
        self.names().subscriptions.insert(spec.name, sub);
        info!(subscription = %info.name, topic = %info.topic, floor, "subscription created");
        Ok(info)
    }

    async fn start_offset(&self, topic: &Topic, start: StartPosition) -> BrokerResult<Offset> {
        let head = topic.head();
        match start {
            StartPosition::Earliest => Ok(0),
            StartPosition::Latest => Ok(head),
            StartPosition::Offset(offset) if offset <= head => Ok(offset),
            StartPosition::Offset(offset) => Err(BrokerError::OffsetNotPublished {
                topic: topic.name.clone(),
                offset,
                next_offset: head,
            }),
            StartPosition::Time(time) => {
                Ok(self.inner.store.offset_at_time(topic.id, time).await?)
            }
        }
    }

    /// Returns a subscription with its live figures.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`].
    pub fn get_subscription(&self, name: &SubscriptionName) -> BrokerResult<SubscriptionInfo> {
        Ok(self.subscription(name)?.info())
    }

    /// Lists up to `limit` subscriptions whose names sort after `after`,
    /// only those of `topic` when given.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`] when `topic` does not exist.
    pub fn list_subscriptions(
        &self,
        topic: Option<&TopicName>,
        after: Option<&str>,
        limit: usize,
    ) -> BrokerResult<Page<SubscriptionInfo>> {
        let topic_id = topic.map(|t| self.topic(t)).transpose()?.map(|t| t.id);
        let names = self.names();
        let wanted = |s: &Arc<Subscription>| topic_id.is_none_or(|id| s.topic.id == id);
        Ok(page(&names.subscriptions, after, limit, wanted, |s| {
            s.info()
        }))
    }

    /// Deletes a subscription; its open streams end with
    /// [`BrokerError::SubscriptionDeleted`].
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`].
    pub async fn delete_subscription(&self, name: &SubscriptionName) -> BrokerResult<()> {
        let _admin = self.inner.admin.lock().await;
        let sub = self
            .names()
            .subscriptions
            .remove(name)
            .ok_or_else(|| BrokerError::SubscriptionNotFound(name.clone()))?;
        sub.deleted.cancel();
        match self.inner.store.delete_subscription(sub.id).await {
            // Its topic was deleted meanwhile, which took it along.
            Ok(()) | Err(StoreError::SubscriptionNotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        info!(subscription = %name, "subscription deleted");
        Ok(())
    }

    /// Appends `messages` to a topic once they are durable; returns their
    /// offsets.
    ///
    /// # Errors
    /// [`BrokerError::EmptyBatch`], [`BrokerError::MessageTooLarge`],
    /// [`BrokerError::EmptyAttributeName`], [`BrokerError::TopicNotFound`]
    /// (unless topics are created automatically).
    pub async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<PublishedOffsets> {
        let total = check_batch(&messages, self.inner.config.max_message_bytes)?;
        let topic = match self.topic(topic) {
            Err(BrokerError::TopicNotFound(name)) if self.inner.config.auto_create_topics => {
                self.get_or_create_topic(name).await?
            }
            other => other?,
        };
        // `check_batch` refused an empty batch.
        let count = messages.len();
        // Streams reading at the head get these from memory.
        let for_tail = topic.wants_tail().then(|| messages.clone());
        let appended = self
            .inner
            .store
            .append(topic.id, messages)
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        let offsets = appended.first_offset..appended.first_offset + count as u64;
        if let Some(batch) = for_tail {
            topic.cache(appended.first_offset, appended.publish_time, batch);
        }
        topic.advance_head(offsets.end);
        topic.observe_size(total / count);
        Ok(offsets)
    }

    async fn get_or_create_topic(&self, name: TopicName) -> BrokerResult<Arc<Topic>> {
        match self.create_topic(name.clone()).await {
            Ok(_) | Err(BrokerError::TopicExists(_)) => self.topic(&name),
            Err(err) => Err(err),
        }
    }

    /// Opens a stream of deliveries; creates the subscription when it does
    /// not exist and `spec.topic` is set.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::TopicNotFound`],
    /// [`BrokerError::TopicMismatch`], [`BrokerError::CountOutOfRange`] for
    /// `max_outstanding`, [`BrokerError::ShuttingDown`].
    pub async fn subscribe(&self, spec: SubscribeSpec) -> BrokerResult<DeliveryStream> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let max_outstanding = spec.max_outstanding.unwrap_or(DEFAULT_MAX_OUTSTANDING);
        if max_outstanding == 0 || max_outstanding > MAX_OUTSTANDING {
            return Err(BrokerError::CountOutOfRange {
                what: "max_outstanding_messages",
                given: max_outstanding as u64,
                max: MAX_OUTSTANDING as u64,
            });
        }
        let sub = self.subscription_for_stream(&spec).await?;
        let stream = sub.book().open_stream();
        let (frames_tx, frames_rx) = mpsc::channel(FRAME_BUFFER);
        let span = info_span!("stream", subscription = %sub.name, stream);
        let task = StreamTask {
            store: Arc::clone(&self.inner.store),
            config: self.inner.config.clone(),
            shutdown: self.inner.shutdown.clone(),
            subscription: sub,
            stream,
            max_outstanding,
            remaining: spec.max_messages,
            frames_tx,
        };
        self.inner.tasks.spawn(task.run().instrument(span));
        Ok(DeliveryStream { frames_rx })
    }

    async fn subscription_for_stream(
        &self,
        spec: &SubscribeSpec,
    ) -> BrokerResult<Arc<Subscription>> {
        match (self.subscription(&spec.subscription), &spec.topic) {
            (Ok(sub), Some(topic)) if sub.topic.name != *topic => Err(BrokerError::TopicMismatch {
                subscription: sub.name.clone(),
                actual: sub.topic.name.clone(),
                requested: topic.clone(),
            }),
            (Ok(sub), _) => Ok(sub),
            (Err(BrokerError::SubscriptionNotFound(_)), Some(topic)) => {
                let created = self
                    .create_subscription(SubscriptionSpec {
                        name: spec.subscription.clone(),
                        topic: topic.clone(),
                        ack_deadline: spec.ack_deadline,
                        start: spec.start,
                    })
                    .await;
                match created {
                    // Another stream created it first: use it after the same checks.
                    Ok(_) | Err(BrokerError::SubscriptionExists(_)) => {
                        Box::pin(self.subscription_for_stream(spec)).await
                    }
                    Err(err) => Err(err),
                }
            }
            (Err(err), _) => Err(err),
        }
    }

    /// Acknowledges messages; returns once the acknowledgement is stored.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`],
    /// [`BrokerError::OffsetNotPublished`] (then nothing is acknowledged).
    pub async fn ack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
    ) -> BrokerResult<()> {
        let sub = self.subscription(subscription)?;
        if offsets.is_empty() {
            return Ok(());
        }
        sub.ack(offsets)?;
        self.inner.acks.persist(&sub).await
    }

    /// Gives messages in flight back, to be delivered again after `delay`.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::DurationOutOfRange`].
    pub fn nack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        delay: Duration,
    ) -> BrokerResult<()> {
        check_duration("nack delay", delay, Duration::ZERO)?;
        self.subscription(subscription)?.nack(offsets, delay);
        Ok(())
    }

    /// Sets the lease of messages in flight to `deadline` from now; zero
    /// gives the lease up.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::DurationOutOfRange`].
    pub fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        deadline: Duration,
    ) -> BrokerResult<()> {
        check_duration("ack deadline", deadline, Duration::ZERO)?;
        self.subscription(subscription)?
            .modify_deadline(offsets, deadline);
        Ok(())
    }

    /// Starts shutting down: every open stream ends with
    /// [`BrokerError::ShuttingDown`] and new streams are refused. Publishes
    /// and acks in progress complete.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stores every pending acknowledgement and closes the store. Call after
    /// [`Broker::begin_shutdown`] once no more requests arrive.
    ///
    /// # Errors
    /// [`BrokerError::Storage`].
    pub async fn close(&self) -> BrokerResult<()> {
        self.begin_shutdown();
        self.inner.stop_acks.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if !self.inner.acks.flush(&self.inner.store).await {
            warn!("some acknowledgements could not be stored at shutdown");
        }
        self.inner.store.close().await?;
        info!("broker closed");
        Ok(())
    }
}
