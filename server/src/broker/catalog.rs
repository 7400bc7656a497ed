//! The [`Broker`]: the local engine. It maps names to live topics and
//! subscriptions and serves the [`Engine`] calls; `Subscribe` streams and
//! pulls are opened in `streams`, admin changes run in `admin`, and the
//! calls that carry messages (call, commit, reads) live in `messages`.
//!
//! State that mirrors storage has one owner each, so a cancelled request
//! cannot split them:
//!
//! - topic heads and tail caches follow the store's listener (`topic`),
//!   which runs on the store's side of every append;
//! - names change only in admin tasks: creating or deleting a topic or a
//!   subscription runs as a task of its own (`admin`), under the admin lock, with the
//!   store call first and the names after, and the request merely awaits
//!   its outcome. A request dropped halfway leaves the task to finish, so a
//!   stored record always has its name and a deleted one never comes back;
//! - delivery state changes in memory first and is marked for the writer
//!   (`acks`) before any await.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::acks::{DeliveryWriter, TopicResolver};
use super::book::Now;
use super::calls::{Calls, DEFAULT_CALL_TIMEOUT};
use super::checks::{
    check_batch, check_dead_letter, check_dedup_window, check_delivery_delay, check_duration,
    check_push, check_retention, check_retry, not_found_as_topic, page,
};
use super::delays;
use super::retention;
use super::subscription::Subscription;
use super::topic::{Topic, Topics};
use super::*;
use crate::latency::LatencyHistogram;
use crate::storage::{
    NewMessage, ReadLimit, SharedStore, StoreListener, StoredMessage, SubscriptionSettings,
    TopicSettings,
};

mod admin;
mod messages;
mod streams;

/// About the most bytes one `read_topic` returns.
const READ_TOPIC_BYTES: usize = 4 << 20;

/// The local engine: a cheap `Clone` handle over one shared state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    config: BrokerConfig,
    names: Arc<Mutex<Names>>,
    /// The live topics by id, told about appends by the store.
    topics: Arc<Topics>,
    /// Serialises creations and deletions, which check a name, await the
    /// store, then change the names. Only admin tasks take it; it is a
    /// tokio mutex because it is held across that await, on purpose.
    admin: tokio::sync::Mutex<()>,
    writer: Arc<DeliveryWriter>,
    /// Calls waiting for their replies.
    calls: Calls,
    /// Cancelled by [`Engine::begin_shutdown`].
    shutdown: CancellationToken,
    /// Cancelled by [`Engine::close`], after the last flush of delivery
    /// state.
    stop_writer: CancellationToken,
    tasks: TaskTracker,
    /// The push subscriptions, for whoever delivers them.
    push: watch::Sender<PushTargets>,
    /// `Subscribe` streams open now.
    open_streams: Arc<AtomicUsize>,
    /// From publish to first delivery, on every subscription.
    end_to_end: Arc<LatencyHistogram>,
}

#[derive(Default)]
struct Names {
    topics: BTreeMap<TopicName, Arc<Topic>>,
    subscriptions: BTreeMap<SubscriptionName, Arc<Subscription>>,
}

/// The live topics and subscriptions, for the retention task.
struct LiveNames(Arc<Mutex<Names>>);

impl retention::Live for LiveNames {
    fn topics(&self) -> Vec<(Arc<Topic>, Vec<Arc<Subscription>>)> {
        let names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut topics: BTreeMap<TopicId, (Arc<Topic>, Vec<Arc<Subscription>>)> = names
            .topics
            .values()
            .map(|t| (t.id, (Arc::clone(t), Vec::new())))
            .collect();
        for sub in names.subscriptions.values() {
            if let Some((_, subs)) = topics.get_mut(&sub.topic.id) {
                subs.push(Arc::clone(sub));
            }
        }
        topics.into_values().collect()
    }
}

impl Broker {
    /// Loads the catalog from `store`, becomes its listener and starts the
    /// broker's background tasks (the delivery-state writer, retention and
    /// the delay feed).
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the store cannot be read.
    pub async fn open(store: SharedStore, config: BrokerConfig) -> BrokerResult<Self> {
        let catalog = store.load().await?;
        let topics = Arc::new(Topics::default());
        store.set_listener(Arc::clone(&topics) as Arc<dyn StoreListener>);
        let mut names = Names::default();
        let mut by_id = BTreeMap::new();
        let started = SystemTime::now();
        for record in &catalog.topics {
            let topic = Arc::new(Topic::new(record));
            delays::load(&store, &topic, started).await?;
            topics.insert(Arc::clone(&topic));
            by_id.insert(record.id, Arc::clone(&topic));
            names.topics.insert(record.name.clone(), topic);
        }
        for stored in catalog.subscriptions {
            let Some(topic) = by_id.get(&stored.record.topic) else {
                warn!(subscription = %stored.record.name, "subscription of a missing topic skipped");
                continue;
            };
            let name = stored.record.name.clone();
            let sub = Subscription::new(stored, Arc::clone(topic));
            names.subscriptions.insert(name, Arc::new(sub));
        }
        info!(
            topics = names.topics.len(),
            subscriptions = names.subscriptions.len(),
            "broker opened"
        );
        let names = Arc::new(Mutex::new(names));
        let lookup = Arc::clone(&names);
        let resolve: TopicResolver = Box::new(move |name| {
            let names = lookup.lock().unwrap_or_else(|p| p.into_inner());
            names.topics.get(name).cloned()
        });
        let inner = Arc::new(Inner {
            store,
            config,
            names,
            topics,
            admin: tokio::sync::Mutex::new(()),
            writer: Arc::new(DeliveryWriter::new(resolve)),
            calls: Calls::default(),
            shutdown: CancellationToken::new(),
            stop_writer: CancellationToken::new(),
            tasks: TaskTracker::new(),
            push: watch::Sender::new(PushTargets::default()),
            open_streams: Arc::new(AtomicUsize::new(0)),
            end_to_end: Arc::new(LatencyHistogram::default()),
        });
        let writer = Arc::clone(&inner.writer);
        inner
            .tasks
            .spawn(writer.run(Arc::clone(&inner.store), inner.stop_writer.clone()));
        inner.tasks.spawn(retention::run(
            Arc::new(LiveNames(Arc::clone(&inner.names))),
            Arc::clone(&inner.store),
            Arc::clone(&inner.writer),
            inner.shutdown.clone(),
        ));
        inner.tasks.spawn(delays::run(
            Arc::new(LiveNames(Arc::clone(&inner.names))),
            Arc::clone(&inner.store),
            inner.config.delay_look_ahead,
            inner.shutdown.clone(),
        ));
        let broker = Self { inner };
        broker.refresh_push();
        Ok(broker)
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

    /// Runs an admin change as a task of its own, so that it finishes
    /// whether or not its caller still waits, and returns its outcome.
    async fn admin<T, F>(&self, change: impl FnOnce(Broker) -> F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: Future<Output = BrokerResult<T>> + Send + 'static,
    {
        let this = self.clone();
        let task = change(self.clone());
        let handle = self.inner.tasks.spawn(async move {
            let _admin = this.inner.admin.lock().await;
            let outcome = task.await;
            this.refresh_push();
            outcome
        });
        match handle.await {
            Ok(outcome) => outcome,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is going away.
            Err(_) => Err(BrokerError::ShuttingDown),
        }
    }

    /// Publishes the push subscriptions as they are now, when they changed.
    fn refresh_push(&self) {
        let targets: BTreeMap<SubscriptionName, PushTarget> = self
            .names()
            .subscriptions
            .values()
            .filter_map(|sub| Some((sub.name.clone(), sub.push_target()?)))
            .collect();
        self.inner.push.send_if_modified(|current| {
            let changed = *current.0 != targets;
            if changed {
                *current = PushTargets(Arc::new(targets));
            }
            changed
        });
    }

    async fn get_or_create_topic(&self, name: TopicName) -> BrokerResult<Arc<Topic>> {
        match self.create_topic(name.clone()).await {
            Ok(_) | Err(BrokerError::TopicExists(_)) => self.topic(&name),
            Err(err) => Err(err),
        }
    }

    /// Parses ack ids; one malformed id refuses the whole request.
    /// Appends checked messages to `topic` (created when missing, if the
    /// broker is told to).
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<Published> {
        self.start_append(topic, messages).await?.await
    }

    /// Starts appending checked messages to `topic` (see `append`): returns
    /// once the store has queued them, with the future of their offsets.
    async fn start_append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<PendingPublish> {
        let topic = self.topic_to_publish_to(topic).await?;
        let count = messages.len();
        let appending = self
            .inner
            .store
            .start_append(topic.id, messages)
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        Ok(Box::pin(async move {
            let appended = appending.await.map_err(|e| not_found_as_topic(e, &topic))?;
            let (offsets, duplicates) = appended.offsets(count);
            Ok(Published {
                offsets,
                duplicates,
            })
        }))
    }

    /// The topic named, created first when missing if the broker is told
    /// to create topics on publish.
    async fn topic_to_publish_to(&self, name: &TopicName) -> BrokerResult<Arc<Topic>> {
        match self.topic(name) {
            Err(BrokerError::TopicNotFound(name)) if self.inner.config.auto_create_topics => {
                self.get_or_create_topic(name).await
            }
            other => other,
        }
    }

    fn ack_ids(ack_ids: &[String]) -> BrokerResult<Vec<AckId>> {
        ack_ids.iter().map(|id| AckId::parse(id)).collect()
    }
}

#[async_trait]
impl Engine for Broker {
    /// # Errors
    /// [`BrokerError::TopicExists`] when the name is taken,
    /// [`BrokerError::DurationOutOfRange`] for the retention's age or the
    /// dedup window.
    async fn create_topic_with(&self, spec: TopicSpec) -> BrokerResult<TopicInfo> {
        let retention = spec
            .retention
            .unwrap_or(self.inner.config.default_retention);
        check_retention(&retention)?;
        let dedup_window = spec.dedup_window.unwrap_or(DEFAULT_DEDUP_WINDOW);
        check_dedup_window(dedup_window)?;
        let settings = TopicSettings {
            retention,
            dedup_window,
        };
        let (name, storage) = (spec.name, spec.storage);
        self.admin(|this| async move { this.do_create_topic(name, settings, storage).await })
            .await
    }

    /// # Errors
    /// [`BrokerError::TopicNotFound`], [`BrokerError::NothingToUpdate`]
    /// when no field is given, [`BrokerError::DurationOutOfRange`] for the
    /// retention's age or the dedup window.
    async fn update_topic(&self, update: TopicUpdate) -> BrokerResult<TopicInfo> {
        if update.is_empty() {
            return Err(BrokerError::NothingToUpdate(
                "the update names no field to change",
            ));
        }
        if let Some(Some(age)) = update.max_age {
            check_retention(&Retention {
                max_age: Some(age),
                ..Retention::default()
            })?;
        }
        if let Some(window) = update.dedup_window {
            check_dedup_window(window)?;
        }
        self.admin(|this| async move { this.do_update_topic(update).await })
            .await
    }

    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    fn get_topic(&self, name: &TopicName) -> BrokerResult<TopicInfo> {
        Ok(self.topic(name)?.info())
    }

    fn list_topics(&self, after: Option<&str>, limit: usize) -> Page<TopicInfo> {
        let names = self.names();
        page(&names.topics, after, limit, |_| true, |t| t.info())
    }

    /// Deletes a topic, its messages and its subscriptions; their open
    /// streams end with [`BrokerError::TopicDeleted`].
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    async fn delete_topic(&self, name: &TopicName) -> BrokerResult<()> {
        let name = name.clone();
        self.admin(|this| async move { this.do_delete_topic(name).await })
            .await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionExists`], [`BrokerError::TopicNotFound`],
    /// [`BrokerError::OffsetNotPublished`] for a start offset above the
    /// topic's next offset, [`BrokerError::DurationOutOfRange`] for the ack
    /// deadline.
    async fn create_subscription(&self, spec: SubscriptionSpec) -> BrokerResult<SubscriptionInfo> {
        let ack_deadline = spec.ack_deadline.unwrap_or(DEFAULT_ACK_DEADLINE);
        check_duration("ack deadline", ack_deadline, Duration::from_secs(1))?;
        Filter::parse(&spec.filter).map_err(BrokerError::InvalidFilter)?;
        check_retry(spec.retry.as_ref())?;
        check_dead_letter(spec.dead_letter.as_ref(), &spec.topic)?;
        check_delivery_delay(spec.delivery_delay)?;
        if let Some(push) = &spec.push {
            check_push(push)?;
        }
        let settings = SubscriptionSettings {
            ack_deadline,
            filter: spec.filter.clone(),
            retry: spec.retry,
            ordered: spec.ordered,
            dead_letter: spec.dead_letter.clone(),
            delivery_delay: spec.delivery_delay,
            push: spec.push.clone(),
        };
        self.admin(|this| async move { this.do_create_subscription(spec, settings).await })
            .await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`],
    /// [`BrokerError::NothingToUpdate`] when no field is given,
    /// [`BrokerError::DurationOutOfRange`] for the ack deadline,
    /// [`BrokerError::InvalidFilter`].
    async fn update_subscription(
        &self,
        update: SubscriptionUpdate,
    ) -> BrokerResult<SubscriptionInfo> {
        if update.ack_deadline.is_none()
            && update.filter.is_none()
            && update.retry.is_none()
            && update.dead_letter.is_none()
            && update.delivery_delay.is_none()
            && update.push.is_none()
        {
            return Err(BrokerError::NothingToUpdate(
                "the update names no field to change",
            ));
        }
        if let Some(deadline) = update.ack_deadline {
            check_duration("ack deadline", deadline, Duration::from_secs(1))?;
        }
        if let Some(retry) = &update.retry {
            check_retry(retry.as_ref())?;
        }
        if let Some(delay) = update.delivery_delay {
            check_delivery_delay(delay)?;
        }
        if let Some(Some(push)) = &update.push {
            check_push(push)?;
        }
        let filter = match &update.filter {
            Some(text) => Some(
                Filter::parse(text)
                    .map_err(BrokerError::InvalidFilter)?
                    .map(Arc::new),
            ),
            None => None,
        };
        self.admin(|this| async move { this.do_update_subscription(update, filter).await })
            .await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`].
    fn get_subscription(&self, name: &SubscriptionName) -> BrokerResult<SubscriptionInfo> {
        Ok(self.subscription(name)?.info())
    }

    /// # Errors
    /// [`BrokerError::TopicNotFound`] when `topic` does not exist.
    fn list_subscriptions(
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
    async fn delete_subscription(&self, name: &SubscriptionName) -> BrokerResult<()> {
        let name = name.clone();
        self.admin(|this| async move { this.do_delete_subscription(name).await })
            .await
    }

    /// Appends `messages` to a topic once they are durable; returns their
    /// offsets. The topic's head moves on the store's side of the write,
    /// so a publish whose caller gave up is still delivered.
    ///
    /// # Errors
    /// [`BrokerError::EmptyBatch`], [`BrokerError::MessageTooLarge`],
    /// [`BrokerError::EmptyAttributeName`], [`BrokerError::TopicNotFound`]
    /// (unless topics are created automatically).
    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<Published> {
        self.start_publish(topic, messages).await?.await
    }

    /// Checks the batch and finds (or creates) the topic, then returns
    /// once the store has queued the append: the store's writer serves its
    /// queue in order.
    ///
    /// # Errors
    /// As `publish`.
    async fn start_publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<PendingPublish> {
        check_batch(&messages, self.inner.config.max_message_bytes)?;
        self.start_append(topic, messages).await
    }

    /// # Errors
    /// [`BrokerError::CallTimedOut`] when no reply came within `timeout`
    /// (30 s when `None`); [`BrokerError::ShuttingDown`] when the broker
    /// stops first; what `publish` refuses;
    /// [`BrokerError::DurationOutOfRange`] for the timeout.
    async fn call(
        &self,
        topic: &TopicName,
        message: NewMessage,
        timeout: Option<Duration>,
    ) -> BrokerResult<CallReply> {
        self.do_call(topic, message, timeout).await
    }

    /// # Errors
    /// [`BrokerError::CallNotFound`] when no call waits under `reply_to`;
    /// what `publish` refuses of the reply.
    async fn reply(&self, reply_to: &str, message: NewMessage) -> BrokerResult<()> {
        check_batch(
            std::slice::from_ref(&message),
            self.inner.config.max_message_bytes,
        )?;
        self.inner.calls.answer(reply_to, message)
    }

    /// # Errors
    /// See [`Engine::commit`]; [`BrokerError::Invalid`] for a commit with
    /// nothing in it.
    async fn commit(&self, spec: CommitSpec) -> BrokerResult<Vec<Published>> {
        self.do_commit(spec).await
    }

    /// Opens a stream of deliveries; creates the subscription when it does
    /// not exist and `spec.topic` is set.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::TopicNotFound`],
    /// [`BrokerError::TopicMismatch`], [`BrokerError::CountOutOfRange`] for
    /// `max_outstanding`, [`BrokerError::ShuttingDown`].
    async fn subscribe(&self, spec: SubscribeSpec) -> BrokerResult<DeliveryStream> {
        self.open_stream(spec).await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`],
    /// [`BrokerError::ShuttingDown`].
    async fn pull(&self, spec: PullSpec) -> BrokerResult<Vec<Delivery>> {
        self.do_pull(spec).await
    }

    fn watch_push(&self) -> watch::Receiver<PushTargets> {
        self.inner.push.subscribe()
    }

    /// Reads the oldest unacknowledged message, from the tail cache or
    /// the store.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`]; storage errors.
    async fn oldest_unacked(
        &self,
        subscription: &SubscriptionName,
    ) -> BrokerResult<Option<SystemTime>> {
        self.do_oldest_unacked(subscription).await
    }

    fn timings(&self) -> EngineTimings {
        EngineTimings {
            end_to_end: self.inner.end_to_end.snapshot(),
            storage: self.inner.store.timings(),
        }
    }

    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    async fn read_topic(
        &self,
        topic: &TopicName,
        from: Offset,
        max_messages: usize,
    ) -> BrokerResult<TopicRead> {
        self.do_read_topic(topic, from, max_messages).await
    }

    /// Acknowledges messages; returns once the acknowledgement is stored.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`],
    /// [`BrokerError::OffsetNotPublished`] and
    /// [`BrokerError::InvalidAckId`] (then nothing is acknowledged).
    async fn ack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
    ) -> BrokerResult<()> {
        let sub = self.subscription(subscription)?;
        let ack_ids = Self::ack_ids(ack_ids)?;
        if offsets.is_empty() && ack_ids.is_empty() {
            return Ok(());
        }
        sub.ack(offsets, &ack_ids)?;
        self.inner.writer.persist(&sub).await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`],
    /// [`BrokerError::OffsetNotPublished`] for an offset above the topic's
    /// next offset.
    async fn seek(
        &self,
        subscription: &SubscriptionName,
        position: StartPosition,
    ) -> BrokerResult<()> {
        let sub = self.subscription(subscription)?;
        let floor = self.start_offset(&sub.topic, position).await?;
        sub.seek(floor);
        info!(subscription = %sub.name, floor, "subscription moved");
        self.inner.writer.persist(&sub).await
    }

    /// Gives messages in flight back, to be delivered again after `delay`.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::DurationOutOfRange`],
    /// [`BrokerError::InvalidAckId`].
    async fn nack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        delay: Duration,
        error: &str,
    ) -> BrokerResult<()> {
        check_duration("nack delay", delay, Duration::ZERO)?;
        let sub = self.subscription(subscription)?;
        let ack_ids = Self::ack_ids(ack_ids)?;
        let error = Some(error).filter(|e| !e.is_empty());
        if sub.nack(offsets, &ack_ids, delay, error) {
            // A nack that dead-letters returns once the message moved.
            return self.inner.writer.persist(&sub).await;
        }
        self.inner.writer.mark(&sub);
        Ok(())
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::InvalidAckId`].
    async fn reject(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        error: &str,
    ) -> BrokerResult<()> {
        let sub = self.subscription(subscription)?;
        let ack_ids = Self::ack_ids(ack_ids)?;
        if offsets.is_empty() && ack_ids.is_empty() {
            return Ok(());
        }
        sub.reject(offsets, &ack_ids, Some(error).filter(|e| !e.is_empty()));
        self.inner.writer.persist(&sub).await
    }

    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::Storage`].
    async fn redrive(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
    ) -> BrokerResult<u64> {
        let sub = self.subscription(subscription)?;
        let wanted = sub
            .book()
            .dead_offsets((!offsets.is_empty()).then_some(offsets));
        let mut redriven = 0;
        for chunk in wanted.chunks(MAX_READ_MESSAGES) {
            let (mut found, missing) = sub.topic.cached(chunk.iter().copied());
            if !missing.is_empty() {
                found.extend(self.inner.store.read_offsets(sub.topic.id, missing).await?);
            }
            found.sort_unstable_by_key(|m| m.offset);
            let gone: Vec<Offset> = chunk
                .iter()
                .copied()
                .filter(|o| found.binary_search_by_key(o, |m| m.offset).is_err())
                .collect();
            redriven += sub.book().redrive(&found, &gone, Now::get()) as u64;
        }
        sub.wake.notify_waiters();
        info!(subscription = %sub.name, redriven, "dead letters redriven");
        self.inner.writer.persist(&sub).await?;
        Ok(redriven)
    }

    /// Sets the lease of messages in flight to `deadline` from now; zero
    /// gives the lease up.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionNotFound`], [`BrokerError::DurationOutOfRange`],
    /// [`BrokerError::InvalidAckId`].
    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        deadline: Duration,
    ) -> BrokerResult<()> {
        check_duration("ack deadline", deadline, Duration::ZERO)?;
        let sub = self.subscription(subscription)?;
        let ack_ids = Self::ack_ids(ack_ids)?;
        sub.modify_deadline(offsets, &ack_ids, deadline);
        if deadline.is_zero() {
            self.inner.writer.mark(&sub);
        }
        Ok(())
    }

    fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stores every pending change of delivery state and closes the store.
    ///
    /// # Errors
    /// [`BrokerError::Storage`].
    async fn close(&self) -> BrokerResult<()> {
        self.begin_shutdown();
        self.inner.stop_writer.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if !self.inner.writer.flush(&self.inner.store).await {
            warn!("some delivery state could not be stored at shutdown");
        }
        self.inner.store.close().await?;
        info!("broker closed");
        Ok(())
    }
}
