//! A live subscription: its configuration, its lease book (see `book`),
//! and the signals its streams wait on. The calls here validate against
//! the topic (offsets must be published) and lock the book briefly; they
//! never await.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tracing::error;

use super::book::{LeaseBook, Move, Now, Target};
use super::topic::Topic;
use super::{
    AckId, BrokerError, BrokerResult, Delivery, DeliveryCounts, Filter, PushTarget,
    SubscriptionInfo,
};
use crate::latency::LatencyHistogram;
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::Offset;
use crate::storage::{
    DeadLetters, DeliveryUpdate, StoredSubscription, SubscriptionId, SubscriptionRecord,
    SubscriptionSettings,
};

/// A subscription's changeable settings, with its filter parsed.
struct Settings {
    stored: SubscriptionSettings,
    filter: Option<Arc<Filter>>,
}

/// A live subscription.
pub(super) struct Subscription {
    pub(super) id: SubscriptionId,
    pub(super) name: SubscriptionName,
    pub(super) topic: Arc<Topic>,
    pub(super) created: SystemTime,
    /// What `UpdateSubscription` may change; read at every claim.
    settings: Mutex<Settings>,
    book: Mutex<LeaseBook>,
    /// Woken when messages become due, a stream gains room, or a scan ends.
    pub(super) wake: Notify,
    /// Cancelled when the subscription or its topic is deleted.
    pub(super) deleted: CancellationToken,
    /// With a delivery delay: the offset where the last scan stopped for
    /// it (the first message not yet due), or `Offset::MAX`.
    delay_cut: AtomicU64,
    /// Deliveries sent, and those of them that were repeats, since it was
    /// loaded (settlements are counted by the book).
    delivered: AtomicU64,
    redelivered: AtomicU64,
}

impl Subscription {
    /// A subscription over its stored state.
    pub(super) fn new(stored: StoredSubscription, topic: Arc<Topic>) -> Self {
        let record = stored.record;
        let first_lease = crate::storage::micros_since_epoch(SystemTime::now());
        let mut book = LeaseBook::new(
            stored.acks,
            stored.deliveries,
            record.settings.ordered,
            first_lease,
        );
        book.set_retry(record.settings.retry);
        book.restore_dead(stored.dead_letters);
        let max_attempts = record.settings.dead_letter.as_ref();
        book.set_dead_letter(max_attempts.map(|d| d.max_delivery_attempts), Now::get());
        book.clamp(topic.first_offset(), Now::get());
        let filter = match Filter::parse(&record.settings.filter) {
            Ok(filter) => filter.map(Arc::new),
            Err(err) => {
                // Stored filters were parsed when they were set; one that
                // no longer parses is delivered unfiltered rather than
                // dropping messages the subscriber may want.
                error!(subscription = %record.name, error = %err,
                    "the stored filter does not parse; delivering every message");
                None
            }
        };
        Self {
            id: record.id,
            name: record.name,
            deleted: topic.deleted.child_token(),
            topic,
            created: record.created,
            settings: Mutex::new(Settings {
                stored: record.settings,
                filter,
            }),
            book: Mutex::new(book),
            wake: Notify::new(),
            delay_cut: AtomicU64::new(Offset::MAX),
            delivered: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
        }
    }

    /// A frame of deliveries went out: counts them, and times each first
    /// delivery from its message's publish (or, when delayed, due) time.
    pub(super) fn sent(&self, frame: &[Delivery], end_to_end: &LatencyHistogram) {
        let now = SystemTime::now();
        let mut repeats = 0;
        for delivery in frame {
            if delivery.attempt > 1 {
                repeats += 1;
                continue;
            }
            let message = &delivery.message;
            let since = message.deliver_at.unwrap_or(message.publish_time);
            end_to_end.observe(now.duration_since(since).unwrap_or_default());
        }
        self.delivered
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if repeats > 0 {
            self.redelivered.fetch_add(repeats, Ordering::Relaxed);
        }
    }

    /// The first offset not acknowledged, when it is below the head and
    /// still stored.
    pub(super) fn oldest_unacked(&self) -> Option<Offset> {
        let head = self.topic.head();
        let floor = self.book().ack_state().floor;
        (floor < head).then_some(floor)
    }

    /// No message is delivered before its publish time plus this.
    pub(super) fn delivery_delay(&self) -> Duration {
        self.settings().stored.delivery_delay
    }

    /// A scan stopped at `cut` for the delivery delay (`None`: it did not).
    pub(super) fn set_delay_cut(&self, cut: Option<Offset>) {
        self.delay_cut
            .store(cut.unwrap_or(Offset::MAX), Ordering::Relaxed);
    }

    /// Messages below `head` that the delivery delay holds back, as the
    /// last scan saw.
    fn held_back(&self, head: Offset) -> u64 {
        if self.delivery_delay().is_zero() {
            return 0;
        }
        head.saturating_sub(self.delay_cut.load(Ordering::Relaxed))
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long deliveries granted now are leased.
    pub(super) fn ack_deadline(&self) -> Duration {
        self.settings().stored.ack_deadline
    }

    /// Whether the broker pushes this subscription's messages.
    pub(super) fn is_push(&self) -> bool {
        self.settings().stored.push.is_some()
    }

    /// What its pusher needs, for a push subscription.
    pub(super) fn push_target(&self) -> Option<PushTarget> {
        let settings = self.settings();
        let stored = &settings.stored;
        Some(PushTarget {
            config: stored.push.clone()?,
            ack_deadline: stored.ack_deadline,
            has_retry_policy: stored.retry.is_some(),
            incarnation: self.id.0,
        })
    }

    /// The filter messages must pass to be delivered, if any.
    pub(super) fn filter(&self) -> Option<Arc<Filter>> {
        self.settings().filter.clone()
    }

    /// The subscription's record as stored.
    pub(super) fn record(&self) -> SubscriptionRecord {
        SubscriptionRecord {
            id: self.id,
            name: self.name.clone(),
            topic: self.topic.id,
            settings: self.settings().stored.clone(),
            created: self.created,
        }
    }

    /// Takes new settings (already stored); `filter` is the parsed
    /// filter when it changed. Streams pick them up at their next claim,
    /// woken here.
    pub(super) fn apply(&self, stored: SubscriptionSettings, filter: Option<Option<Arc<Filter>>>) {
        let retry = stored.retry;
        let max_attempts = stored.dead_letter.as_ref().map(|d| d.max_delivery_attempts);
        {
            let mut settings = self.settings();
            settings.stored = stored;
            if let Some(filter) = filter {
                settings.filter = filter;
            }
        }
        {
            let mut book = self.book();
            book.set_retry(retry);
            book.set_dead_letter(max_attempts, Now::get());
        }
        self.wake.notify_waiters();
    }

    /// Locks the lease book, with the topic's first offset applied.
    /// Critical sections are short and never await.
    pub(super) fn book(&self) -> MutexGuard<'_, LeaseBook> {
        // A panic while holding the lock leaves the book consistent enough
        // to go on: every method restores its invariants before returning.
        let mut book = self
            .book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first_offset = self.topic.first_offset();
        if first_offset > book.first_offset() {
            book.clamp(first_offset, Now::get());
        }
        book
    }

    /// Settlement targets: offsets, and the leases named by ack ids of this
    /// subscription (ack ids of another one, an earlier subscription of the
    /// same name say, name nothing here).
    fn targets(&self, offsets: &[Offset], ack_ids: &[AckId]) -> Vec<Target> {
        let leases = ack_ids
            .iter()
            .filter(|id| id.subscription == self.id)
            .map(|id| Target::Lease(id.offset, id.lease));
        offsets
            .iter()
            .map(|&o| Target::Offset(o))
            .chain(leases)
            .collect()
    }

    /// Acknowledges messages. Checks every offset before changing anything;
    /// ack ids of messages that are gone acknowledge nothing.
    pub(super) fn ack(&self, offsets: &[Offset], ack_ids: &[AckId]) -> BrokerResult<()> {
        let head = self.topic.head();
        if let Some(&offset) = offsets.iter().find(|&&offset| offset >= head) {
            return Err(BrokerError::OffsetNotPublished {
                topic: self.topic.name.clone(),
                offset,
                next_offset: head,
            });
        }
        let mut targets = self.targets(offsets, ack_ids);
        targets.retain(|t| match *t {
            Target::Offset(_) => true,
            Target::Lease(offset, _) => offset < head,
        });
        self.book().ack(&targets, Now::get());
        self.wake.notify_waiters();
        Ok(())
    }

    /// The offsets a commit acknowledges, by offset or ack id (an ack id
    /// stands for its message, whichever lease it named).
    ///
    /// # Errors
    /// [`BrokerError::OffsetNotPublished`] for an offset at or past the
    /// topic's next one; [`BrokerError::Invalid`] for an ack id of another
    /// subscription.
    pub(super) fn commit_offsets(
        &self,
        offsets: &[Offset],
        ack_ids: &[AckId],
    ) -> BrokerResult<Vec<Offset>> {
        if let Some(id) = ack_ids.iter().find(|id| id.subscription != self.id) {
            return Err(BrokerError::Invalid(format!(
                "the ack_id of offset {} is not one of subscription \"{}\"; acknowledge a \
                 delivery on the subscription that delivered it",
                id.offset, self.name
            )));
        }
        let head = self.topic.head();
        let all = offsets
            .iter()
            .copied()
            .chain(ack_ids.iter().map(|id| id.offset));
        let mut all: Vec<Offset> = all.collect();
        if let Some(&offset) = all.iter().find(|&&offset| offset >= head) {
            return Err(BrokerError::OffsetNotPublished {
                topic: self.topic.name.clone(),
                offset,
                next_offset: head,
            });
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Gives deliveries back; returns whether one of them now waits to be
    /// moved to the dead-letter topic.
    pub(super) fn nack(
        &self,
        offsets: &[Offset],
        ack_ids: &[AckId],
        delay: Duration,
        error: Option<&str>,
    ) -> bool {
        let targets = self.targets(offsets, ack_ids);
        let moving = self
            .book()
            .nack_with(&targets, Some(delay), error, Now::get());
        self.wake.notify_waiters();
        moving
    }

    pub(super) fn modify_deadline(
        &self,
        offsets: &[Offset],
        ack_ids: &[AckId],
        deadline: Duration,
    ) {
        let targets = self.targets(offsets, ack_ids);
        self.book().modify_deadline(&targets, deadline, Now::get());
        self.wake.notify_waiters();
    }

    /// Moves to `floor`: see [`LeaseBook::seek`]. Streams are woken to
    /// deliver from there.
    pub(super) fn seek(&self, floor: Offset) {
        self.book().seek(floor);
        self.wake.notify_waiters();
    }

    /// What to store of the delivery state (the ack state, the records
    /// and dead letters changed since the last call), and the messages
    /// waiting to be moved to the dead-letter topic, with the book's epoch.
    /// In a round that carries commits acknowledging messages of this
    /// subscription (`claims`: each commit's place in the round and its
    /// offsets, in order), checks under the same lock of the book that
    /// each offset is unsettled and not claimed by an earlier commit of the
    /// round; returns, besides, each refused commit with the offset that
    /// refused it.
    pub(super) fn take_changes_checking(
        &self,
        claims: &[(usize, &[Offset])],
    ) -> (DeliveryUpdate, Vec<Move>, u64, Vec<(usize, Offset)>) {
        let mut book = self.book();
        let mut claimed = HashSet::new();
        let mut refused = Vec::new();
        for &(job, offsets) in claims {
            match offsets
                .iter()
                .find(|&&o| book.is_settled(o) || claimed.contains(&o))
            {
                Some(&offset) => refused.push((job, offset)),
                None => claimed.extend(offsets.iter().copied()),
            }
        }
        let changes = book.take_changes();
        drop(book);
        let update = DeliveryUpdate {
            subscription: self.id,
            acks: changes.acks,
            records: changes.records,
            dead_letters: changes.dead,
        };
        (update, changes.moves, changes.epoch, refused)
    }

    /// Applies the acknowledgements of a commit that was stored.
    pub(super) fn ack_committed(&self, offsets: &[Offset]) {
        let targets: Vec<Target> = offsets.iter().map(|&o| Target::Offset(o)).collect();
        self.book().ack(&targets, Now::get());
        self.wake.notify_waiters();
    }

    /// The dead letters as they are now.
    pub(super) fn dead_letters(&self) -> DeadLetters {
        self.book().dead_letters().clone()
    }

    /// The dead-letter topic's name, when there is a policy.
    pub(super) fn dead_letter_topic(&self) -> Option<TopicName> {
        let settings = self.settings();
        settings
            .stored
            .dead_letter
            .as_ref()
            .map(|d| d.topic.clone())
    }

    /// Rejects deliveries: see [`LeaseBook::reject`].
    pub(super) fn reject(&self, offsets: &[Offset], ack_ids: &[AckId], error: Option<&str>) {
        let targets = self.targets(offsets, ack_ids);
        self.book().reject(&targets, error, Now::get());
        self.wake.notify_waiters();
    }

    /// The last changes could not be stored: everything is saved again
    /// with the next ones.
    pub(super) fn unsaved(&self) {
        self.book().unsaved();
    }

    pub(super) fn info(&self) -> SubscriptionInfo {
        let head = self.topic.head();
        let mut book = self.book();
        // Leases of finished streams expire with nobody waiting on them.
        book.reap(Now::get());
        let stored = self.settings().stored.clone();
        let SubscriptionSettings {
            ack_deadline,
            filter,
            retry,
            ordered,
            dead_letter,
            delivery_delay,
            push,
        } = stored;
        SubscriptionInfo {
            name: self.name.clone(),
            topic: self.topic.name.clone(),
            ack_deadline,
            filter,
            retry,
            ordered,
            dead_letter,
            dead_lettered: book.dead_lettered(),
            rejected: book.rejected(),
            delivery_delay,
            push,
            delayed: self.topic.delayed() + self.held_back(head),
            backlog: book.ack_state().unacked_below(head),
            in_flight: book.in_flight() as u64,
            ack_floor: book.ack_state().floor,
            open_streams: u32::try_from(book.open_streams()).unwrap_or(u32::MAX),
            counts: DeliveryCounts {
                delivered: self.delivered.load(Ordering::Relaxed),
                redelivered: self.redelivered.load(Ordering::Relaxed),
                ..book.counts()
            },
            created: self.created,
        }
    }

    /// The error a stream ends with once `deleted` fired.
    pub(super) fn deleted_error(&self) -> BrokerError {
        if self.topic.deleted.is_cancelled() {
            BrokerError::TopicDeleted(self.topic.name.clone())
        } else {
            BrokerError::SubscriptionDeleted(self.name.clone())
        }
    }
}
