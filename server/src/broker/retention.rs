//! Retention: a task that deletes what each topic's policy no longer keeps,
//! and lets storage give the space back.
//!
//! Every [`RETENTION_PERIOD`] it looks at every topic: the first offset to
//! keep is the highest of what each limit allows — the first message
//! published after `now − max_age`, `next_offset − max_messages`, and with
//! `discard_acked` the lowest ack floor of the topic's subscriptions (none:
//! nothing goes) — or higher, until the retained bytes are within
//! `max_bytes`. Messages below it are deleted in one truncation; the
//! subscriptions behind it move up (the lease book clamps on its next use)
//! and their ack floors are saved. The storage of what was deleted is
//! compacted, so the disk space comes back: at once after the first
//! deletion, then at most every [`RECLAIM_PERIOD`].
//!
//! Age is also applied on every read, so no expired message is read or
//! delivered between two rounds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::acks::DeliveryWriter;
use super::subscription::Subscription;
use super::topic::Topic;
use crate::offsets::Offset;
use crate::storage::{SharedStore, StoreResult, TopicId};

/// How often retention is applied.
pub(super) const RETENTION_PERIOD: Duration = Duration::from_secs(1);
/// How often the space of deleted messages is reclaimed.
const RECLAIM_PERIOD: Duration = Duration::from_secs(30);

/// What the task needs of the broker each round.
pub(super) trait Live: Send + Sync {
    /// The live topics, each with its subscriptions.
    fn topics(&self) -> Vec<(Arc<Topic>, Vec<Arc<Subscription>>)>;
}

/// Applies retention until `stop` fires.
pub(super) async fn run(
    live: Arc<dyn Live>,
    store: SharedStore,
    writer: Arc<DeliveryWriter>,
    stop: CancellationToken,
) {
    let mut ticks = interval(RETENTION_PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut truncated: HashSet<TopicId> = HashSet::new();
    // The first deletion is reclaimed at once, later ones at most every
    // period.
    let mut next_reclaim = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (topic, subscriptions) in live.topics() {
            match apply(&store, &topic, &subscriptions, &writer).await {
                Ok(true) => {
                    truncated.insert(topic.id);
                }
                Ok(false) => {}
                Err(err) if topic.deleted.is_cancelled() => {
                    debug!(topic = %topic.name, error = %err, "topic deleted during retention");
                }
                Err(err) => warn!(topic = %topic.name, error = %err, "could not apply retention"),
            }
        }
        if !truncated.is_empty() && Instant::now() >= next_reclaim {
            next_reclaim = Instant::now() + RECLAIM_PERIOD;
            for topic in truncated.drain() {
                if let Err(err) = store.reclaim(topic).await {
                    warn!(topic = ?topic, error = %err, "could not reclaim the space of deleted messages");
                }
            }
        }
    }
}

/// Applies one topic's retention; returns whether messages were deleted.
async fn apply(
    store: &SharedStore,
    topic: &Topic,
    subscriptions: &[Arc<Subscription>],
    writer: &DeliveryWriter,
) -> StoreResult<bool> {
    let retention = topic.retention();
    let (first, head) = (topic.first_offset(), topic.head());
    if first >= head {
        return Ok(false);
    }
    let mut keep_from = first;
    if let Some(count) = retention.max_messages {
        keep_from = keep_from.max(head.saturating_sub(count));
    }
    if retention.discard_acked
        && let Some(floor) = lowest_ack_floor(subscriptions)
    {
        keep_from = keep_from.max(floor);
    }
    if let Some(cutoff) = topic.expired_before(SystemTime::now()) {
        keep_from = keep_from.max(store.offset_at_time(topic.id, cutoff).await?);
    }
    let drop_bytes = retention
        .max_bytes
        .map_or(0, |max| topic.retained_bytes().saturating_sub(max));
    if keep_from <= first && drop_bytes == 0 {
        return Ok(false);
    }
    let first = store.trim(topic.id, keep_from, drop_bytes).await?;
    debug!(topic = %topic.name, first_offset = first, "retention deleted messages");
    for sub in subscriptions {
        // Taking the book applies the new first offset to it.
        if sub.book().has_changes() {
            writer.mark(sub);
        }
    }
    Ok(true)
}

/// The lowest ack floor of `subscriptions`; `None` when there are none.
fn lowest_ack_floor(subscriptions: &[Arc<Subscription>]) -> Option<Offset> {
    subscriptions
        .iter()
        .map(|sub| sub.book().ack_state().floor)
        .min()
}
