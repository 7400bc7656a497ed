//! Delayed delivery: what a topic knows of its delayed messages, and the
//! task that hands them to the subscriptions as their time comes near.
//!
//! Storage indexes every delayed message by (due time, offset). Each topic
//! has a *horizon*, a position in that order: a scan puts a delayed message
//! at or before the horizon into the lease book to wait for its time, and
//! passes over one after it (see `book.rs`), so the book holds only the
//! near future. Every [`FEED_PERIOD`] the feed reads the index from the
//! horizon up to the look-ahead from now
//! ([`BrokerConfig::delay_look_ahead`](super::BrokerConfig), 30 s by
//! default), moves the horizon past what it
//! read, and hands those messages to every subscription's book, which
//! takes each one it passed over. The horizon moves before the books are
//! fed, and a book compares with the horizon when it admits a scan, under
//! its own lock: so a message is either taken in by the scan or handed
//! over by the feed, never neither. Index entries whose time has passed
//! are dropped; scans find those messages due.
//!
//! After a restart the horizon starts at the time of the start: messages
//! due before it are due, and scans deliver them; later ones are fed.
//! Topics that keep their messages in memory only keep every delayed
//! message in the books (no horizon), as their messages are in memory
//! anyway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::book::Now;
use super::retention::Live;
use super::subscription::Subscription;
use super::topic::Topic;
use crate::offsets::Offset;
use crate::storage::{DuePosition, SharedStore, StorageClass, StoreResult};

/// How often the feed runs.
pub(super) const FEED_PERIOD: Duration = Duration::from_secs(1);
/// The most index entries read at once.
const FEED_PAGE: usize = 10_000;

/// What a topic knows of its delayed messages.
#[derive(Debug, Default)]
pub(super) struct Delays {
    /// Delayed messages after it are passed over by scans; `None` keeps
    /// them all in the books.
    horizon: Option<DuePosition>,
    /// Delayed messages after the horizon.
    beyond: u64,
    /// Delayed messages at or before the horizon and not yet due, by due
    /// time: the near future, bounded by the look-ahead.
    near: BTreeMap<SystemTime, u64>,
}

impl Delays {
    /// A topic's delays after a start at `now` with `beyond` messages
    /// indexed for later, or with none in storage at all (`keep_all`).
    pub(super) fn starting(now: SystemTime, beyond: u64, keep_all: bool) -> Self {
        Self {
            horizon: (!keep_all).then_some(DuePosition {
                due: now,
                offset: Offset::MAX,
            }),
            beyond,
            near: BTreeMap::new(),
        }
    }

    /// The horizon now.
    pub(super) fn horizon(&self) -> Option<DuePosition> {
        self.horizon
    }

    /// A delayed message was stored at `position`.
    pub(super) fn stored(&mut self, position: DuePosition) {
        match self.horizon {
            Some(horizon) if position > horizon => self.beyond += 1,
            _ => *self.near.entry(position.due).or_default() += 1,
        }
    }

    /// The feed read `page` and moves the horizon to `to`.
    fn fed(&mut self, page: &[DuePosition], to: DuePosition) {
        if let Some(horizon) = &mut self.horizon {
            *horizon = (*horizon).max(to);
        }
        self.beyond = self.beyond.saturating_sub(page.len() as u64);
        for position in page {
            *self.near.entry(position.due).or_default() += 1;
        }
    }

    /// Messages due by `now` wait no more.
    fn passed(&mut self, now: SystemTime) {
        while let Some(entry) = self.near.first_entry() {
            if *entry.key() > now {
                break;
            }
            entry.remove();
        }
    }

    /// Delayed messages not yet due (as of the last feed).
    pub(super) fn waiting(&self) -> u64 {
        self.beyond + self.near.values().sum::<u64>()
    }
}

/// Counts what a topic's storage has indexed beyond `now`, for its start.
pub(super) async fn load(store: &SharedStore, topic: &Topic, now: SystemTime) -> StoreResult<()> {
    if topic.storage == StorageClass::Memory {
        // Empty after a start, and never indexed in storage.
        return Ok(());
    }
    let beyond = store.count_delayed(topic.id, now).await?;
    topic.set_delays(Delays::starting(now, beyond, false));
    Ok(())
}

/// Feeds every topic's books, `look_ahead` ahead of time, until `stop`
/// fires.
pub(super) async fn run(
    live: Arc<dyn Live>,
    store: SharedStore,
    look_ahead: Duration,
    stop: CancellationToken,
) {
    let mut ticks = interval(FEED_PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (topic, subscriptions) in live.topics() {
            if let Err(err) = feed(&store, &topic, &subscriptions, look_ahead).await {
                if topic.deleted.is_cancelled() {
                    debug!(topic = %topic.name, error = %err, "topic deleted while feeding delays");
                } else {
                    warn!(topic = %topic.name, error = %err, "could not read delayed messages");
                }
            }
        }
    }
}

/// One round for one topic: hands its books what comes within
/// `look_ahead`, then drops the index entries whose time has passed.
async fn feed(
    store: &SharedStore,
    topic: &Topic,
    subscriptions: &[Arc<Subscription>],
    look_ahead: Duration,
) -> StoreResult<()> {
    let now = SystemTime::now();
    let until = now + look_ahead;
    let mut any = topic.with_delays(|d| d.waiting() > 0);
    while let Some(horizon) = topic.with_delays(|d| d.horizon()) {
        if horizon.due > until {
            break;
        }
        let page = store
            .delayed(topic.id, Some(horizon), until, FEED_PAGE)
            .await?;
        let full = page.len() == FEED_PAGE;
        let to = match page.last() {
            Some(&last) if full => last,
            _ => DuePosition {
                due: until,
                offset: Offset::MAX,
            },
        };
        topic.with_delays(|d| d.fed(&page, to));
        if !page.is_empty() {
            any = true;
            for sub in subscriptions {
                let taken = sub.book().delayed_due(&page, Now::get());
                if taken {
                    sub.wake.notify_waiters();
                }
            }
        }
        if !full {
            break;
        }
    }
    let horizon = topic.with_delays(|d| {
        d.passed(now);
        d.horizon()
    });
    // Without a horizon (a memory topic) nothing was indexed. Entries not
    // yet fed stay, even when their time has passed (the feed is behind):
    // a scan may have passed over their message.
    if let Some(horizon) = horizon.filter(|_| any) {
        store.forget_delayed(topic.id, horizon.due.min(now)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, offset: Offset) -> DuePosition {
        DuePosition {
            due: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
            offset,
        }
    }

    #[test]
    fn messages_are_counted_beyond_the_horizon_then_near_then_not_at_all() {
        let mut delays =
            Delays::starting(SystemTime::UNIX_EPOCH + Duration::from_secs(100), 2, false);
        delays.stored(at(50, 7));
        delays.stored(at(500, 8));
        assert_eq!((delays.beyond, delays.waiting()), (3, 4));
        delays.fed(&[at(120, 1), at(130, 2)], at(130, 2));
        assert_eq!(delays.horizon(), Some(at(130, 2)));
        assert_eq!((delays.beyond, delays.waiting()), (1, 4));
        delays.passed(SystemTime::UNIX_EPOCH + Duration::from_secs(125));
        assert_eq!(delays.waiting(), 2, "the one due at 50 and at 120 are due");
        delays.stored(at(126, 9));
        assert_eq!(delays.beyond, 1, "at or before the horizon: near");
    }

    #[test]
    fn without_a_horizon_everything_is_near() {
        let mut delays = Delays::starting(SystemTime::UNIX_EPOCH, 0, true);
        delays.stored(at(500, 1));
        assert_eq!((delays.beyond, delays.waiting()), (0, 1));
        assert_eq!(delays.horizon(), None);
    }
}
