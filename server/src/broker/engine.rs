//! [`Engine`]: the seam between the front doors (the gRPC services today;
//! the HTTP bus and the Pub/Sub adapter later) and what keeps and delivers
//! messages.
//!
//! # Why the seam is here
//!
//! Two engines must fit behind it. The local engine ([`Broker`]) keeps its
//! messages in a [`Store`](crate::storage::Store) and its leases in memory,
//! in one lease book per subscription. A NATS JetStream engine keeps
//! messages in streams and leases, acknowledgements, redelivery and
//! attempt counts in JetStream consumers: the server does that work, not
//! our memory. A seam at the storage level would force JetStream to
//! pretend to be a dumb log under our lease book, giving up its replicated
//! consumer state; a seam at the lease book would leak our scheduling into
//! its model. So the seam is the broker's whole vocabulary: topics,
//! subscriptions, publish, subscribe, settle. Every engine validates with
//! the same helpers (names in `names`, [`check_batch`](super::check_batch))
//! and speaks the same errors, so the front doors map them once.
//!
//! What an engine cannot provide it refuses, never weakens: a
//! [`BrokerError`] that names the feature and the engine.
//!
//! Costs: one boxed future per call, which is nothing beside a gRPC call;
//! delivery is a [`DeliveryStream`] an engine feeds from a task of its own.
//!
//! [`Broker`]: super::Broker

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    BrokerResult, Delivery, DeliveryStream, Page, Published, PushConfig, StartPosition,
    SubscribeSpec, SubscriptionInfo, SubscriptionSpec, SubscriptionUpdate, TopicInfo, TopicRead,
    TopicSpec, TopicUpdate,
};
use crate::latency::LatencySnapshot;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::Offset;
use crate::storage::{NewMessage, StorageTimings};

/// What keeps topics and delivers their messages. Cancel safety: a call
/// whose future is dropped either did nothing or finishes on its own; it
/// never leaves the engine half-changed.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Creates a topic with the broker's defaults.
    async fn create_topic(&self, name: TopicName) -> BrokerResult<TopicInfo> {
        self.create_topic_with(TopicSpec::named(name)).await
    }

    /// Creates a topic as `spec` says.
    async fn create_topic_with(&self, spec: TopicSpec) -> BrokerResult<TopicInfo>;

    /// Changes a topic's settings; they take effect within seconds.
    async fn update_topic(&self, update: TopicUpdate) -> BrokerResult<TopicInfo>;

    /// Returns a topic.
    fn get_topic(&self, name: &TopicName) -> BrokerResult<TopicInfo>;

    /// Lists up to `limit` topics whose names sort after `after`.
    fn list_topics(&self, after: Option<&str>, limit: usize) -> Page<TopicInfo>;

    /// Deletes a topic with its messages and subscriptions.
    async fn delete_topic(&self, name: &TopicName) -> BrokerResult<()>;

    /// Creates a subscription.
    async fn create_subscription(&self, spec: SubscriptionSpec) -> BrokerResult<SubscriptionInfo>;

    /// Changes a subscription's settings; open streams follow at once.
    async fn update_subscription(
        &self,
        update: SubscriptionUpdate,
    ) -> BrokerResult<SubscriptionInfo>;

    /// Returns a subscription with its live figures.
    fn get_subscription(&self, name: &SubscriptionName) -> BrokerResult<SubscriptionInfo>;

    /// Lists up to `limit` subscriptions whose names sort after `after`,
    /// only those of `topic` when given.
    fn list_subscriptions(
        &self,
        topic: Option<&TopicName>,
        after: Option<&str>,
        limit: usize,
    ) -> BrokerResult<Page<SubscriptionInfo>>;

    /// Deletes a subscription.
    async fn delete_subscription(&self, name: &SubscriptionName) -> BrokerResult<()>;

    /// Appends messages to a topic, but those whose id was stored within
    /// the topic's dedup window; returns their offsets once durable.
    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<Published>;

    /// Starts a publish and returns once its place among the engine's
    /// writes is fixed, with the future of its outcome (what
    /// [`publish`](Self::publish) returns). Publishes started one after
    /// another, on any topics, are stored in the order they were started,
    /// however their outcomes are awaited: this is how a `PublishStream`
    /// keeps many requests in flight and still stores them in request
    /// order. Once this returns, the publish happens whether or not its
    /// outcome is awaited.
    ///
    /// The default publishes in full before it returns: ordered, but one
    /// at a time. An engine with a write queue returns once the publish is
    /// queued.
    ///
    /// # Errors
    /// What `publish` refuses: here when known before the write, else in
    /// the outcome.
    async fn start_publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> BrokerResult<PendingPublish> {
        let published = self.publish(topic, messages).await;
        Ok(Box::pin(std::future::ready(published)))
    }

    /// Publishes to any topics and acknowledges on any subscriptions in
    /// one atomic, durable write; returns what each publish did, in order.
    ///
    /// # Errors
    /// [`BrokerError::AlreadySettled`](super::BrokerError::AlreadySettled)
    /// when a message it acknowledges was acknowledged or dead-lettered
    /// already; the errors of `publish` and `ack`, under
    /// [`BrokerError::InPart`](super::BrokerError::InPart) naming the part.
    /// Nothing is stored on any error.
    async fn commit(&self, spec: CommitSpec) -> BrokerResult<Vec<Published>>;

    /// Publishes `message` to `topic` as a request, with the attributes
    /// that name the call, and waits up to `timeout` (30 s when `None`)
    /// for a [`reply`](Self::reply) to it.
    async fn call(
        &self,
        topic: &TopicName,
        message: NewMessage,
        timeout: Option<Duration>,
    ) -> BrokerResult<CallReply>;

    /// Answers the call that `reply_to` names.
    async fn reply(&self, reply_to: &str, message: NewMessage) -> BrokerResult<()>;

    /// Opens a stream of deliveries.
    async fn subscribe(&self, spec: SubscribeSpec) -> BrokerResult<DeliveryStream>;

    /// Leases up to `max_messages` messages without a stream, waiting up
    /// to `wait` for the first; empty when none came. The leases run to the
    /// subscription's ack deadline like a stream's.
    ///
    /// # Errors
    /// [`BrokerError::PushSubscription`](super::BrokerError::PushSubscription)
    /// on a push subscription, unless the pull is its pusher's.
    async fn pull(&self, spec: PullSpec) -> BrokerResult<Vec<Delivery>>;

    /// The push subscriptions as they are now, and as they change: what a
    /// pusher delivers (see [`PushTargets`]).
    fn watch_push(&self) -> watch::Receiver<PushTargets>;

    /// Reads up to `max_messages` stored messages of a topic from `from`
    /// (at most about 4 MiB), outside any subscription: nothing is leased
    /// or acknowledged.
    async fn read_topic(
        &self,
        topic: &TopicName,
        from: Offset,
        max_messages: usize,
    ) -> BrokerResult<TopicRead>;

    /// Acknowledges messages by offset and by ack id; returns once stored.
    async fn ack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
    ) -> BrokerResult<()>;

    /// Gives deliveries back, to be delivered again after `delay` (zero:
    /// after the retry policy's backoff, or at once). A non-empty `error`
    /// is kept for the dead-letter copy.
    async fn nack(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        delay: Duration,
        error: &str,
    ) -> BrokerResult<()>;

    /// Rejects deliveries: never delivered again. With a dead-letter
    /// policy they are moved to its topic at once; without, acknowledged
    /// and counted. Returns once stored.
    async fn reject(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        error: &str,
    ) -> BrokerResult<()>;

    /// Brings dead-lettered messages (by source offset; all when `offsets`
    /// is empty) back to the subscription, attempts counting from 1.
    /// Returns how many came back, once stored.
    async fn redrive(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
    ) -> BrokerResult<u64>;

    /// Sets the lease of deliveries to `deadline` from now; zero gives them
    /// up.
    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        offsets: &[Offset],
        ack_ids: &[String],
        deadline: Duration,
    ) -> BrokerResult<()>;

    /// Moves a subscription to a position: from it on, everything is
    /// unacknowledged and delivered afresh; before it, acknowledged.
    /// Returns once stored.
    async fn seek(
        &self,
        subscription: &SubscriptionName,
        position: StartPosition,
    ) -> BrokerResult<()>;

    /// Starts shutting down: open streams end with
    /// [`BrokerError::ShuttingDown`](super::BrokerError::ShuttingDown) and
    /// new ones are refused; calls in progress complete.
    fn begin_shutdown(&self);

    /// Finishes what is pending and releases the engine's resources. Call
    /// once no more requests arrive.
    async fn close(&self) -> BrokerResult<()>;

    /// The publish time of the oldest message a subscription has not
    /// acknowledged; `None` when every published message is. For the
    /// metrics: it may read storage.
    async fn oldest_unacked(
        &self,
        subscription: &SubscriptionName,
    ) -> BrokerResult<Option<SystemTime>>;

    /// The engine's latencies so far, for the metrics.
    fn timings(&self) -> EngineTimings;
}

/// How long an engine's work took (see [`Engine::timings`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineTimings {
    /// From a message's publish (or due time, when delayed) to its first
    /// delivery on each subscription.
    pub end_to_end: LatencySnapshot,
    /// The local store's writes and syncs; `None` for an engine that
    /// keeps no local storage.
    pub storage: Option<StorageTimings>,
}

/// An engine shared by the front doors.
pub type SharedEngine = Arc<dyn Engine>;

/// The outcome of a publish that [`Engine::start_publish`] started.
pub type PendingPublish =
    std::pin::Pin<Box<dyn Future<Output = BrokerResult<Published>> + Send + 'static>>;

/// A pull (see [`Engine::pull`]).
#[derive(Debug, Clone)]
pub struct PullSpec {
    /// The subscription.
    pub subscription: SubscriptionName,
    /// The most messages to lease, 1 to
    /// [`MAX_PULL_MESSAGES`](super::MAX_PULL_MESSAGES).
    pub max_messages: usize,
    /// How long to wait for the first, at most
    /// [`MAX_PULL_WAIT`](super::MAX_PULL_WAIT).
    pub wait: Duration,
    /// The pull of the subscription's pusher, the one consumer a push
    /// subscription has.
    pub pusher: bool,
}

/// The push subscriptions of an engine, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushTargets(pub Arc<BTreeMap<SubscriptionName, PushTarget>>);

/// What a pusher needs to know of one push subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// Where and how to push.
    pub config: PushConfig,
    /// How long a POST may take: the ack deadline.
    pub ack_deadline: Duration,
    /// Whether the subscription has a retry policy; without one a pusher
    /// waits 1 s doubling to 60 s between the POSTs of a message.
    pub has_retry_policy: bool,
    /// Tells a subscription from an earlier one of the same name.
    pub incarnation: u64,
}

/// What a commit stores: publishes and acknowledgements (see
/// [`Engine::commit`]).
#[derive(Debug, Default)]
pub struct CommitSpec {
    /// Messages to publish, each list to its topic, in order.
    pub publishes: Vec<(TopicName, Vec<NewMessage>)>,
    /// Messages to acknowledge, on each subscription by offset and by ack
    /// id.
    pub acks: Vec<CommitAcks>,
}

/// The acknowledgements of a commit on one subscription.
#[derive(Debug)]
pub struct CommitAcks {
    /// The subscription.
    pub subscription: SubscriptionName,
    /// Offsets to acknowledge.
    pub offsets: Vec<Offset>,
    /// Deliveries to acknowledge, each standing for its message.
    pub ack_ids: Vec<String>,
}

/// What a call got back.
#[derive(Debug)]
pub struct CallReply {
    /// The responder's answer.
    pub reply: NewMessage,
    /// The request's offset in its topic.
    pub offset: Offset,
}
