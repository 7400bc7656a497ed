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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::subscription::Subscription;
use super::{BrokerError, BrokerResult};
use crate::storage::{SharedStore, StoreError, SubscriptionId};

#[derive(Default)]
struct Dirty {
    subscriptions: HashMap<SubscriptionId, Arc<Subscription>>,
    /// The round that the subscriptions now in the map will be written in.
    round: u64,
}

/// The outcome of the latest flush round.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    round: u64,
    ok: bool,
}

pub(super) struct DeliveryWriter {
    dirty: Mutex<Dirty>,
    kick: Notify,
    flushed_tx: watch::Sender<Flushed>,
}

impl DeliveryWriter {
    pub(super) fn new() -> Self {
        Self {
            dirty: Mutex::new(Dirty {
                round: 1,
                ..Dirty::default()
            }),
            kick: Notify::new(),
            flushed_tx: watch::Sender::new(Flushed { round: 0, ok: true }),
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
            Err(BrokerError::Storage(StoreError::Engine {
                context: "saving acknowledgements",
                source: "the broker log has the cause".into(),
            }))
        }
    }

    /// Writes every dirty subscription's state now. Returns whether the
    /// write succeeded (or there was nothing to write).
    pub(super) async fn flush(&self, store: &SharedStore) -> bool {
        let (subscriptions, round) = {
            let mut dirty = self.lock();
            let taken = std::mem::take(&mut dirty.subscriptions);
            let round = dirty.round;
            dirty.round += 1;
            (taken, round)
        };
        let ok = if subscriptions.is_empty() {
            true
        } else {
            let live: Vec<_> = subscriptions
                .values()
                .filter(|s| !s.deleted.is_cancelled())
                .collect();
            let updates: Vec<_> = live.iter().map(|s| s.take_changes()).collect();
            let count = updates.len();
            match store.save_deliveries(updates).await {
                Ok(()) => {
                    debug!(subscriptions = count, round, "delivery state stored");
                    true
                }
                Err(err) => {
                    error!(error = %err, source = ?std::error::Error::source(&err), round, "could not store delivery state");
                    // Keep them dirty so that a later round tries again.
                    for sub in &live {
                        sub.unsaved();
                    }
                    let mut dirty = self.lock();
                    for (id, sub) in subscriptions {
                        dirty.subscriptions.entry(id).or_insert(sub);
                    }
                    false
                }
            }
        };
        self.flushed_tx.send_replace(Flushed { round, ok });
        ok
    }

    /// Flushes whenever something is marked, until `stop` fires.
    pub(super) async fn run(self: Arc<Self>, store: SharedStore, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.kick.notified() => {}
            }
            self.flush(&store).await;
        }
    }
}
