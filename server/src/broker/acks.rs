//! Persists delivery state in batches: acknowledgements, and the delivery
//! records of messages whose delivery failed.
//!
//! An `Ack` call changes the lease book in memory at once, marks its
//! subscription dirty and waits for the next flush round; a nack, an
//! expired lease or a skipped gap marks it dirty without waiting. One task
//! writes the changes of every dirty subscription in a single store call,
//! so many concurrent acks cost one write; while a write is under way the
//! next round gathers. Rounds are numbered, so a caller knows when its
//! change is stored. Marking happens before any await, so a cancelled
//! `Ack` is still stored.
//!
//! Messages waiting to be dead-lettered move in the same round: their
//! copies (with the provenance attributes) are appended to the
//! dead-letter topic in the one atomic write that settles them, so after a
//! crash a message is either still deliverable or moved, never both and
//! never neither.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::book::{Move, Now};
use super::subscription::Subscription;
use super::topic::Topic;
use super::{BrokerError, BrokerResult, RESERVED_ATTRIBUTE_PREFIX};
use crate::names::TopicName;
use crate::offsets::Offset;
use crate::storage::{
    Appended, Commit, DeliveryUpdate, NewMessage, SharedStore, StoreError, StoredMessage,
    SubscriptionId, TopicId,
};

#[derive(Default)]
struct Dirty {
    subscriptions: HashMap<SubscriptionId, Arc<Subscription>>,
    /// Commits for the next round, in the order they came.
    commits: Vec<CommitJob>,
    /// The round that the subscriptions now in the map will be written in.
    round: u64,
}

/// The outcome of the latest flush round.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    round: u64,
    ok: bool,
}

/// Finds a live topic by name: the dead-letter topics.
pub(super) type TopicResolver = Box<dyn Fn(&TopicName) -> Option<Arc<Topic>> + Send + Sync>;

pub(super) struct DeliveryWriter {
    dirty: Mutex<Dirty>,
    kick: Notify,
    flushed_tx: watch::Sender<Flushed>,
    resolve: TopicResolver,
}

/// The moves of one subscription in a round.
struct Moves {
    subscription: Arc<Subscription>,
    epoch: u64,
    moved: Vec<Offset>,
    gone: Vec<Offset>,
}

impl DeliveryWriter {
    pub(super) fn new(resolve: TopicResolver) -> Self {
        Self {
            dirty: Mutex::new(Dirty {
                round: 1,
                ..Dirty::default()
            }),
            kick: Notify::new(),
            flushed_tx: watch::Sender::new(Flushed { round: 0, ok: true }),
            resolve,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a subscription's state for writing in the next round; returns
    /// that round.
    pub(super) fn mark(&self, subscription: &Arc<Subscription>) -> u64 {
        let round = {
            let mut dirty = self.lock();
            dirty
                .subscriptions
                .insert(subscription.id, Arc::clone(subscription));
            dirty.round
        };
        self.kick.notify_one();
        round
    }

    /// Marks a subscription's state for writing and waits until the round
    /// that writes it is done.
    pub(super) async fn persist(&self, subscription: &Arc<Subscription>) -> BrokerResult<()> {
        let mut flushed_rx = self.flushed_tx.subscribe();
        let target = self.mark(subscription);
        let flushed = *flushed_rx
            .wait_for(|f| f.round >= target)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        if flushed.ok {
            Ok(())
        } else {
            Err(storage_failed("saving acknowledgements"))
        }
    }

    /// Writes every dirty subscription's state, and the commits handed in,
    /// now. Returns whether the write succeeded (or there was nothing to
    /// write).
    pub(super) async fn flush(&self, store: &SharedStore) -> bool {
        let (subscriptions, commits, round) = {
            let mut dirty = self.lock();
            let taken = std::mem::take(&mut dirty.subscriptions);
            let commits = std::mem::take(&mut dirty.commits);
            let round = dirty.round;
            dirty.round += 1;
            (taken, commits, round)
        };
        let ok = if subscriptions.is_empty() && commits.is_empty() {
            true
        } else {
            self.write_round(store, subscriptions, commits, round).await
        };
        self.flushed_tx.send_replace(Flushed { round, ok });
        ok
    }

    /// One round's write: the state of every live subscription in
    /// `subscriptions` or acknowledged on by a commit, the moves to
    /// dead-letter topics, and the commits that pass their checks, all in
    /// one store write.
    async fn write_round(
        &self,
        store: &SharedStore,
        mut subscriptions: HashMap<SubscriptionId, Arc<Subscription>>,
        commits: Vec<CommitJob>,
        round: u64,
    ) -> bool {
        for (sub, _) in commits.iter().flat_map(|job| &job.acks) {
            subscriptions
                .entry(sub.id)
                .or_insert_with(|| Arc::clone(sub));
        }
        let live: Vec<_> = subscriptions
            .values()
            .filter(|s| !s.deleted.is_cancelled())
            .collect();
        let mut verdicts: Vec<Option<BrokerError>> = commits.iter().map(CommitJob::check).collect();
        let mut updates = Vec::with_capacity(live.len());
        let mut update_of = HashMap::new();
        let mut appends = Vec::new();
        let mut moves = Vec::new();
        for sub in &live {
            let claims = claims_on(sub, &commits, &verdicts);
            let (mut update, pending, epoch, refused) = sub.take_changes_checking(&claims);
            for (job, offset) in refused {
                verdicts[job].get_or_insert(BrokerError::AlreadySettled {
                    subscription: sub.name.clone(),
                    offset,
                });
            }
            if !pending.is_empty()
                && let Some((append, moved)) = self
                    .prepare_moves(store, sub, &mut update, pending, epoch)
                    .await
            {
                appends.extend(append);
                moves.push(moved);
            }
            update_of.insert(sub.id, updates.len());
            updates.push(update);
        }
        // The commits that passed: their acknowledgements join their
        // subscriptions' state, their messages the write.
        let mut accepted = Vec::new();
        for (job, verdict) in commits.into_iter().zip(verdicts) {
            if let Some(refusal) = verdict {
                let _ = job.reply.send(Err(refusal));
                continue;
            }
            for (sub, offsets) in &job.acks {
                let update = &mut updates[update_of[&sub.id]];
                for &offset in offsets {
                    update.acks.ack(offset);
                    update.records.push((offset, None));
                }
            }
            let first = appends.len();
            appends.extend(
                job.appends
                    .iter()
                    .map(|(topic, messages)| (topic.id, messages.clone())),
            );
            accepted.push((job, first..appends.len()));
        }
        let count = updates.len();
        let written = if appends.is_empty() {
            store.save_deliveries(updates).await.map(|()| Vec::new())
        } else {
            let commit = Commit {
                appends,
                deliveries: updates,
            };
            store.commit(commit).await
        };
        match written {
            Ok(appended) => {
                debug!(
                    subscriptions = count,
                    moves = moves.len(),
                    commits = accepted.len(),
                    round,
                    "delivery state stored"
                );
                for done in moves {
                    let mut book = done.subscription.book();
                    book.moved(&done.moved, &done.gone, done.epoch, Now::get());
                    drop(book);
                    done.subscription.wake.notify_waiters();
                }
                for (job, span) in accepted {
                    for (sub, offsets) in &job.acks {
                        sub.ack_committed(offsets);
                    }
                    let _ = job.reply.send(Ok(appended[span].to_vec()));
                }
                true
            }
            Err(err) => {
                error!(error = %err, source = ?std::error::Error::source(&err), round, "could not store delivery state");
                // Keep them dirty so that a later round tries again.
                for sub in &live {
                    sub.unsaved();
                }
                for (job, _) in accepted {
                    let _ = job.reply.send(Err(storage_failed("committing")));
                }
                let mut dirty = self.lock();
                for (id, sub) in subscriptions {
                    dirty.subscriptions.entry(id).or_insert(sub);
                }
                false
            }
        }
    }

    /// Hands a commit to the next round and waits for its outcome: where
    /// each append landed, in order.
    ///
    /// # Errors
    /// [`BrokerError::AlreadySettled`] when a message it acknowledges is
    /// not unacknowledged; [`BrokerError::TopicDeleted`] and
    /// [`BrokerError::SubscriptionDeleted`]; storage failures.
    pub(super) async fn commit(
        &self,
        appends: Vec<(Arc<Topic>, Vec<NewMessage>)>,
        acks: Vec<(Arc<Subscription>, Vec<Offset>)>,
    ) -> BrokerResult<Vec<Appended>> {
        let (reply, answer) = oneshot::channel();
        self.lock().commits.push(CommitJob {
            appends,
            acks,
            reply,
        });
        self.kick.notify_one();
        answer.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Readies the moves of one subscription for the round's commit:
    /// reads the messages, makes their dead-letter copies, and writes the
    /// settlement into `update`. Returns the append and what to apply once
    /// stored; `None` when nothing is to be written (the dead-letter topic
    /// is missing, or the messages could not be read), after handing the
    /// moves back.
    async fn prepare_moves(
        &self,
        store: &SharedStore,
        sub: &Arc<Subscription>,
        update: &mut DeliveryUpdate,
        pending: Vec<Move>,
        epoch: u64,
    ) -> Option<(Option<(TopicId, Vec<NewMessage>)>, Moves)> {
        let offsets: Vec<Offset> = pending.iter().map(|m| m.offset).collect();
        let target = sub
            .dead_letter_topic()
            .and_then(|name| (self.resolve)(&name).map(|topic| (name, topic)));
        let Some((_, target)) = target.filter(|(_, t)| !t.deleted.is_cancelled()) else {
            error!(
                subscription = %sub.name,
                topic = ?sub.dead_letter_topic().map(|t| t.to_string()),
                count = offsets.len(),
                "the dead-letter topic does not exist: the messages are delivered again with backoff"
            );
            sub.book().move_failed(&offsets, Now::get());
            sub.wake.notify_waiters();
            return None;
        };
        let (mut found, missing) = sub.topic.cached(offsets.iter().copied());
        if !missing.is_empty() {
            match store.read_offsets(sub.topic.id, missing).await {
                Ok(read) => found.extend(read),
                Err(err) => {
                    error!(subscription = %sub.name, error = %err, "could not read messages to dead-letter; trying again");
                    sub.unsaved();
                    return None;
                }
            }
        }
        let mut found: HashMap<Offset, StoredMessage> =
            found.into_iter().map(|m| (m.offset, m)).collect();
        let mut copies = Vec::new();
        let mut moves = Moves {
            subscription: Arc::clone(sub),
            epoch,
            moved: Vec::new(),
            gone: Vec::new(),
        };
        let mut dead = update
            .dead_letters
            .take()
            .unwrap_or_else(|| sub.dead_letters());
        for waiting in pending {
            let offset = waiting.offset;
            update.acks.ack(offset);
            update.records.push((offset, None));
            match found.remove(&offset) {
                Some(message) => {
                    copies.push(dead_letter_copy(sub, message, &waiting));
                    dead.offsets.insert(offset);
                    moves.moved.push(offset);
                }
                None => moves.gone.push(offset),
            }
        }
        update.dead_letters = Some(dead);
        let append = (!copies.is_empty()).then_some((target.id, copies));
        Some((append, moves))
    }

    /// Flushes whenever something is marked, until `stop` fires.
    pub(super) async fn run(self: Arc<Self>, store: SharedStore, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.kick.notified() => {}
            }
            self.flush(&store).await;
        }
        // Commits handed in after the last flush are not written: say so.
        let commits = std::mem::take(&mut self.lock().commits);
        for job in commits {
            let _ = job.reply.send(Err(BrokerError::ShuttingDown));
        }
    }
}

/// A failed write, for its callers: the cause is in the broker's log.
fn storage_failed(context: &'static str) -> BrokerError {
    BrokerError::Storage(StoreError::Engine {
        context,
        source: "the broker log has the cause".into(),
    })
}

/// A commit waiting for its round (see `Engine::commit`).
struct CommitJob {
    appends: Vec<(Arc<Topic>, Vec<NewMessage>)>,
    acks: Vec<(Arc<Subscription>, Vec<Offset>)>,
    reply: oneshot::Sender<BrokerResult<Vec<Appended>>>,
}

impl CommitJob {
    /// Why it cannot be written at all: a topic or subscription it names
    /// was deleted since it was handed in.
    fn check(&self) -> Option<BrokerError> {
        if let Some((topic, _)) = self.appends.iter().find(|(t, _)| t.deleted.is_cancelled()) {
            return Some(BrokerError::TopicDeleted(topic.name.clone()));
        }
        self.acks
            .iter()
            .find(|(s, _)| s.deleted.is_cancelled())
            .map(|(sub, _)| BrokerError::SubscriptionDeleted(sub.name.clone()))
    }
}

/// The offsets each commit still standing acknowledges on `sub`, by the
/// commit's place in the round.
fn claims_on<'a>(
    sub: &Subscription,
    commits: &'a [CommitJob],
    verdicts: &[Option<BrokerError>],
) -> Vec<(usize, &'a [Offset])> {
    commits
        .iter()
        .enumerate()
        .filter(|&(job, _)| verdicts[job].is_none())
        .flat_map(|(job, commit)| {
            commit
                .acks
                .iter()
                .filter(|(s, _)| s.id == sub.id)
                .map(move |(_, offsets)| (job, offsets.as_slice()))
        })
        .collect()
}

/// The copy of a message for the dead-letter topic: its payload, key and
/// attributes, and where it came from and why. The copy has no id (it is
/// not a repeat of anything published to the dead-letter topic); the
/// original's is kept as `tidings.source_id`.
fn dead_letter_copy(sub: &Subscription, message: StoredMessage, waiting: &Move) -> NewMessage {
    let mut attributes = message.attributes;
    let provenance = [
        ("source_topic", sub.topic.name.to_string()),
        ("source_subscription", sub.name.to_string()),
        ("source_offset", message.offset.to_string()),
        ("delivery_attempts", waiting.attempts.to_string()),
        ("dead_letter_reason", waiting.reason.as_str().to_owned()),
    ];
    for (name, value) in provenance {
        attributes.push((format!("{RESERVED_ATTRIBUTE_PREFIX}{name}"), value));
    }
    if let Some(error) = &waiting.error {
        attributes.push((
            format!("{RESERVED_ATTRIBUTE_PREFIX}last_error"),
            error.clone(),
        ));
    }
    if !message.id.is_empty() {
        attributes.push((
            format!("{RESERVED_ATTRIBUTE_PREFIX}source_id"),
            message.id.into(),
        ));
    }
    NewMessage {
        payload: message.payload,
        key: message.key,
        attributes,
        id: ByteString::new(),
        deliver_at: None,
        deliver_after: None,
    }
}
