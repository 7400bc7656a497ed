//! The lease book of one subscription: the delivery state of every message
//! the subscription has looked at.
//!
//! Plain synchronous state, tested on its own with explicit instants; it
//! does no I/O and knows nothing of storage or transport. What it keeps:
//!
//! - which offsets are acknowledged ([`AckState`], persisted);
//! - for messages whose delivery failed, how often and when they may go
//!   again ([`DeliveryRecord`], persisted one per message, so only
//!   redeliveries cost a write);
//! - which messages are leased to which stream until when (each lease has
//!   an id, so a settlement can name the one lease it means), which are due
//!   now, and which wait for a later time;
//! - for ordered subscriptions, which message holds each key and which wait
//!   behind it.
//!
//! New messages enter the book by being *scanned*: [`LeaseBook::claim`]
//! hands one stream at a time a range of offsets never looked at (one run
//! between acknowledged ranges, so skipping acknowledged messages costs per
//! range, not per offset), the stream reads those messages within a count
//! and byte budget, and [`LeaseBook::admit`] takes in what was read. So the
//! book knows a message's key and size — and, as features arrive, its
//! attributes and due time — before it leases it, and reads are bounded by
//! what the stream may hold. Offsets in a scanned range that hold no
//! message (deleted, or never used) are acknowledged on the way.
//!
//! With ordering, a key is held by its lowest unsettled message from the
//! moment that message is admitted until it is acknowledged: later
//! messages of the key wait in a queue of their own and cost nothing to
//! skip, and a failed delivery holds back only its own key.
//!
//! A delayed message (one with a delivery time still to come) waits like a
//! redelivery, holding no flow-control slot. Only the near future is kept:
//! a scan passes over a message due after the topic's delay horizon (see
//! `delays.rs`), which leaves it in none of the book's sets, and the
//! topic's delay feed hands it back with [`LeaseBook::delayed_due`] as its
//! time comes near. So a million messages delayed by a day cost the book
//! nothing until their hour. Ordered subscriptions keep every delayed
//! message (its key waits behind it).
//!
//! This file holds the book's state, its streams and what it reports;
//! `scan.rs` how messages come in and are leased, `settle.rs` how they are
//! settled (acknowledged, failed, expired, due).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::DeliveryCounts;
use crate::offsets::{AckState, Offset, OffsetMap};
use crate::storage::{DeadLetters, DeliveryRecord, DuePosition, RetryPolicy, StoredMessage};

/// Identifies one open stream within its subscription.
pub(super) type StreamId = u64;

/// A key's identity for ordering: a hash of the key. Two keys that collide
/// share one order, which costs parallelism, never correctness.
type KeyHash = u64;

/// A backoff with up to 10 % added, spread by the message and its
/// failure count so that messages that failed together do not all come
/// back at one instant. Never less than `backoff`.
fn with_jitter(backoff: Duration, offset: Offset, failures: u32) -> Duration {
    let mixed = (offset ^ (u64::from(failures) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits, as a per-mille from 0 to 100.
    let per_mille = u32::try_from((mixed >> 32) % 101).unwrap_or(0);
    backoff + backoff * per_mille / 1000
}

/// The time now, on both clocks: deadlines run on the monotonic one,
/// stored redelivery times on the wall clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub(super) instant: Instant,
    pub(super) wall: SystemTime,
}

impl Now {
    pub(super) fn get() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The instant of a stored wall-clock time (now, when it has passed).
    fn instant_of(&self, at: SystemTime) -> Instant {
        self.instant + at.duration_since(self.wall).unwrap_or_default()
    }
}

/// What the book knows of a message without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    /// The ordering key's hash; `None` when unordered or without a key.
    key: Option<KeyHash>,
    /// Its size on the wire, to bound what one claim delivers.
    size: u32,
}

impl Meta {
    fn of(message: &StoredMessage, ordered: bool) -> Self {
        let key = (ordered && !message.key.is_empty()).then(|| {
            let mut hasher = std::hash::DefaultHasher::new();
            message.key.hash(&mut hasher);
            hasher.finish()
        });
        Self {
            key,
            size: u32::try_from(message.wire_size()).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    stream: StreamId,
    deadline: Instant,
    id: u64,
    meta: Meta,
}

/// A message leased to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leased {
    pub(super) offset: Offset,
    /// 1 on the first delivery.
    pub(super) attempt: u32,
    /// The lease's id, for the delivery's ack id.
    pub(super) lease: u64,
}

/// How much one claim may lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budget {
    /// Messages.
    pub(super) messages: usize,
    /// Bytes on the wire; at least one message goes whatever its size.
    pub(super) bytes: usize,
}

/// What one stream may hold at once: its flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// Unsettled messages.
    pub(super) messages: usize,
    /// Bytes of unsettled messages, if limited. A message larger than the
    /// limit still goes when the stream holds nothing.
    pub(super) bytes: Option<usize>,
}

/// What one stream holds.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    messages: usize,
    bytes: usize,
}

/// A run of never-examined offsets one stream is to read and then
/// [`admit`](LeaseBook::admit): the offsets in `range`, at most
/// `max_messages` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    pub(super) range: Range<Offset>,
    /// The book's epoch when the scan was handed out; a seek starts a new
    /// one, and a scan of an older epoch is dropped when it comes back.
    pub(super) epoch: u64,
}

/// What a stream read for its scan, for [`LeaseBook::admit`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Scanned<'a> {
    /// The scan's range.
    pub(super) range: &'a Range<Offset>,
    /// The messages found in it, in offset order.
    pub(super) messages: &'a [StoredMessage],
    /// Every offset of the range below this was looked at.
    pub(super) examined: Offset,
    /// The epoch of its scan.
    pub(super) epoch: u64,
    /// Delayed messages due after this are passed over (the delay feed
    /// brings them back); `None` keeps them all.
    pub(super) horizon: Option<DuePosition>,
}

/// The size assumed for a message handed back by the delay feed, which has
/// not been read: it bounds how many one claim leases.
const FED_MESSAGE_SIZE: u32 = 4096;

/// What a claim gave a stream.
#[derive(Debug, Default)]
pub(super) struct Claim {
    /// Leased messages the book knew already (redeliveries, and messages
    /// another stream's scan found), lowest offset first.
    pub(super) leased: Vec<Leased>,
    /// New offsets for this stream to read and admit; the scan is this
    /// stream's until it admits or abandons it.
    pub(super) scan: Option<Scan>,
}

/// What changed in a book since the last save, for the writer.
#[derive(Debug)]
pub(super) struct Changes {
    /// The acknowledgements, whole.
    pub(super) acks: AckState,
    /// Delivery records to store or (`None`) delete.
    pub(super) records: Vec<(Offset, Option<DeliveryRecord>)>,
    /// The dead letters, whole, when they changed.
    pub(super) dead: Option<DeadLetters>,
    /// Messages waiting to be moved to the dead-letter topic.
    pub(super) moves: Vec<Move>,
    /// The book's epoch: moves taken before a seek are not applied after it.
    pub(super) epoch: u64,
}

/// What a settlement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// A message, whoever holds it.
    Offset(Offset),
    /// One lease on a message; a settlement of a lease that is gone
    /// changes nothing.
    Lease(Offset, u64),
}

/// The delivery state of one subscription.
#[derive(Debug)]
pub(super) struct LeaseBook {
    acks: AckState,
    ordered: bool,
    /// Offsets at or above it have not been examined since the book was
    /// made; below it, every unacknowledged message is in one of `ready`,
    /// `waiting`, `leases` or a key's queue.
    next_new: Offset,
    /// A stream is reading a scan.
    scanning: bool,
    /// The topic's first offset as last applied.
    first_offset: Offset,
    /// Due now and not leased.
    ready: BTreeMap<Offset, Meta>,
    /// Due later: (due, offset), with when each offset is due.
    waiting: BTreeMap<(Instant, Offset), Meta>,
    waiting_due: OffsetMap<Instant>,
    leases: OffsetMap<Lease>,
    /// The leases ordered by deadline.
    deadlines: BTreeSet<(Instant, Offset)>,
    /// Leases held per open stream.
    streams: OffsetMap<Held>,
    next_stream: StreamId,
    next_lease: u64,
    keys: Keys,
    /// Delivery records of unacknowledged messages whose delivery failed.
    records: OffsetMap<DeliveryRecord>,
    /// Offsets whose record changed since the last save.
    dirty: BTreeSet<Offset>,
    /// The ack state changed without an `Ack` (holes were skipped, the
    /// first offset moved): it should be saved.
    acks_changed: bool,
    /// How long a failed delivery waits before it is due again.
    retry: Option<RetryPolicy>,
    /// Counts seeks: scans handed out before the last one are stale.
    epoch: u64,
    /// Leases up to this id were granted before the last seek: settling
    /// them by ack id changes nothing.
    seek_lease_floor: u64,
    /// With a dead-letter policy: the failed deliveries after which a
    /// message is moved to the dead-letter topic.
    max_attempts: Option<u32>,
    /// Messages out of delivery, waiting to be moved (see `dead`).
    moving: BTreeMap<Offset, Move>,
    /// Moves handed to the writer and not yet stored or given back.
    in_move: BTreeMap<Offset, Move>,
    /// What was moved or rejected for good, as stored.
    dead: DeadLetters,
    /// `dead` changed since the last save.
    dead_changed: bool,
    /// The error the last nack or reject of a message gave.
    last_errors: OffsetMap<String>,
    /// When the delayed messages in the book are due for their first
    /// delivery.
    delays: OffsetMap<SystemTime>,
    /// Settlements since the book was made (`acked`, `nacked`,
    /// `dead_lettered`; deliveries are the subscription's to count).
    counts: DeliveryCounts,
}

impl LeaseBook {
    /// A book over stored state. `first_lease` seeds the lease ids: pass
    /// something that grows across restarts (the wall clock in
    /// microseconds), so that an ack id from before a restart never names a
    /// lease made after it.
    pub(super) fn new(
        acks: AckState,
        records: impl IntoIterator<Item = (Offset, DeliveryRecord)>,
        ordered: bool,
        first_lease: u64,
    ) -> Self {
        let mut book = Self {
            next_new: acks.floor,
            first_offset: 0,
            acks,
            ordered,
            scanning: false,
            ready: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_due: OffsetMap::default(),
            leases: OffsetMap::default(),
            deadlines: BTreeSet::new(),
            streams: OffsetMap::default(),
            next_stream: 0,
            next_lease: first_lease,
            keys: Keys::default(),
            records: OffsetMap::default(),
            dirty: BTreeSet::new(),
            acks_changed: false,
            retry: None,
            epoch: 0,
            seek_lease_floor: 0,
            max_attempts: None,
            moving: BTreeMap::new(),
            in_move: BTreeMap::new(),
            dead: DeadLetters::default(),
            dead_changed: false,
            last_errors: OffsetMap::default(),
            delays: OffsetMap::default(),
            counts: DeliveryCounts::default(),
        };
        for (offset, record) in records {
            if book.acks.is_acked(offset) {
                book.dirty.insert(offset);
            } else {
                book.records.insert(offset, record);
            }
        }
        book
    }

    /// Seeks: every message from `floor` on is unacknowledged, every one
    /// below it acknowledged; leases, waits, failure counts and key holds
    /// are dropped, so messages from `floor` on are delivered afresh, in
    /// order. Streams keep their places; a scan under way is dropped when
    /// it comes back, and settlements of earlier leases by ack id change
    /// nothing.
    pub(super) fn seek(&mut self, floor: Offset) {
        self.acks = AckState::starting_at(floor);
        self.acks_changed = true;
        self.next_new = floor;
        self.scanning = false;
        self.epoch += 1;
        self.seek_lease_floor = self.next_lease;
        self.ready.clear();
        self.waiting.clear();
        self.waiting_due = OffsetMap::default();
        self.leases = OffsetMap::default();
        self.deadlines.clear();
        for held in self.streams.values_mut() {
            *held = Held::default();
        }
        self.keys = Keys::default();
        // Stored records are deleted with the next save.
        self.dirty.extend(self.records.keys().copied());
        self.records = OffsetMap::default();
        // Dead letters from the position on are delivered again.
        self.moving.clear();
        self.in_move.clear();
        self.last_errors = OffsetMap::default();
        self.delays = OffsetMap::default();
        let redelivered: Vec<Offset> = self
            .dead
            .offsets
            .ranges()
            .flat_map(|r| r.start.max(floor)..r.end)
            .collect();
        for offset in redelivered {
            self.dead.offsets.remove(offset);
            self.dead_changed = true;
        }
    }

    /// Sets the retry policy: failures from now on wait as it says.
    pub(super) fn set_retry(&mut self, retry: Option<RetryPolicy>) {
        self.retry = retry;
    }

    pub(super) fn open_stream(&mut self) -> StreamId {
        self.next_stream += 1;
        self.streams.insert(self.next_stream, Held::default());
        self.next_stream
    }

    /// Ends a stream that broke or was closed: what it held is due again.
    /// `counted`: its deliveries count as failed (not when the broker
    /// itself is shutting down).
    pub(super) fn close_stream(&mut self, stream: StreamId, counted: bool, now: Now) {
        if self.streams.remove(&stream).is_none() {
            return;
        }
        let held: Vec<Offset> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.stream == stream)
            .map(|(&offset, _)| offset)
            .collect();
        for offset in held {
            if let Some(lease) = self.unlease(offset) {
                self.failed(offset, lease.meta, counted, None, now);
            }
        }
    }

    /// Ends a stream that finished its work (it delivered all it was asked
    /// for): its client is still there to settle what it received, so those
    /// leases run to their deadlines like any other.
    pub(super) fn finish_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
    }

    /// Takes back leases a stream made but never sent: due again at once,
    /// and not counted as failures.
    pub(super) fn release_unsent(&mut self, stream: StreamId, offsets: &[Offset]) {
        for &offset in offsets {
            if self.leases.get(&offset).is_some_and(|l| l.stream == stream)
                && let Some(lease) = self.unlease(offset)
            {
                self.ready.insert(offset, lease.meta);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn outstanding(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |held| held.messages)
    }

    /// The topic's first offset as last applied with [`LeaseBook::clamp`].
    pub(super) fn first_offset(&self) -> Offset {
        self.first_offset
    }

    /// Whether another stream waiting on the book may find work now:
    /// something is due, or new offsets below `head` wait for a scan.
    pub(super) fn has_work(&self, head: Offset) -> bool {
        !self.ready.is_empty() || (self.may_scan(head) && self.next_new < head)
    }

    /// Applies the topic's first offset: everything below it is gone. Does
    /// nothing unless it moved up.
    pub(super) fn clamp(&mut self, first_offset: Offset, now: Now) {
        if first_offset <= self.first_offset {
            return;
        }
        self.first_offset = first_offset;
        if self.acks.advance_floor(first_offset) {
            self.acks_changed = true;
        }
        self.next_new = self.next_new.max(first_offset);
        // Queued messages first, so that a key released below never passes
        // to a message that is gone too.
        let queued: Vec<Offset> = self
            .keys
            .queued_at
            .keys()
            .copied()
            .filter(|&o| o < first_offset)
            .collect();
        for offset in queued {
            self.keys.unqueue(offset);
        }
        let below: Vec<Offset> = self
            .leases
            .keys()
            .chain(self.ready.keys())
            .chain(self.waiting_due.keys())
            .chain(self.records.keys())
            .chain(self.moving.keys())
            .copied()
            .filter(|&o| o < first_offset)
            .collect();
        for offset in below {
            self.forget(offset, now);
        }
    }

    /// Whether `offset` is settled or on its way out: acknowledged,
    /// dead-lettered, or waiting to be moved to the dead-letter topic. A
    /// commit may acknowledge only a message for which this is false.
    pub(super) fn is_settled(&self, offset: Offset) -> bool {
        self.acks.is_acked(offset)
            || self.dead.offsets.contains(offset)
            || self.moving.contains_key(&offset)
            || self.in_move.contains_key(&offset)
    }

    pub(super) fn ack_state(&self) -> &AckState {
        &self.acks
    }

    /// What to store: the ack state, and the records changed since the
    /// last call (`None` = delete). After a failed write,
    /// [`LeaseBook::unsaved`] has everything saved again.
    pub(super) fn take_changes(&mut self) -> Changes {
        self.acks_changed = false;
        let records = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|offset| (offset, self.records.get(&offset).copied()))
            .collect();
        let dead = std::mem::take(&mut self.dead_changed).then(|| self.dead.clone());
        let moves: Vec<Move> = self.moving.values().cloned().collect();
        self.in_move.append(&mut self.moving);
        Changes {
            acks: self.acks.clone(),
            records,
            dead,
            moves,
            epoch: self.epoch,
        }
    }

    /// The last changes could not be stored: every record is saved with
    /// the next ones. (A lost deletion is harmless: a stored record of an
    /// acknowledged message is dropped when it is loaded.)
    pub(super) fn unsaved(&mut self) {
        self.dirty.extend(self.records.keys().copied());
        self.acks_changed = true;
        self.dead_changed = true;
        // Moves that were not stored are tried again.
        self.moving.append(&mut self.in_move);
    }

    /// Whether there is anything to save that no `Ack` call will save.
    pub(super) fn has_changes(&self) -> bool {
        self.acks_changed || !self.dirty.is_empty()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.leases.len()
    }

    pub(super) fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Acknowledgements, nacks and moves to the dead-letter topic since
    /// the book was made.
    pub(super) fn counts(&self) -> DeliveryCounts {
        self.counts
    }
}

mod dead;
mod keys;
mod scan;
mod settle;

pub(super) use dead::{DeadReason, Move};
use keys::Keys;

#[cfg(test)]
mod tests;
