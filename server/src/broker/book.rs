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

    /// What `stream` may still take within its window, and `budget`: the
    /// budget's count, and the bytes its window has left (`None`: no byte
    /// limit, or the stream holds nothing, when one message of any size
    /// may go so that none is too large to deliver ever).
    fn room(&self, stream: StreamId, window: Window, budget: Budget) -> (Budget, Option<usize>) {
        let held = self.streams.get(&stream).copied().unwrap_or_default();
        let room = Budget {
            messages: budget
                .messages
                .min(window.messages.saturating_sub(held.messages)),
            bytes: budget.bytes,
        };
        let window_left = window
            .bytes
            .map(|limit| limit.saturating_sub(held.bytes))
            .filter(|_| held.messages > 0);
        (room, window_left)
    }

    /// Leases to `stream` what is due, lowest offset first, within
    /// `budget` and what its `window` leaves, and
    /// hands it a scan of new offsets below `head` when there is room left
    /// and no other stream is scanning. Expired leases and waits that are
    /// over are settled first, so a stream with every slot taken still
    /// gets its expired messages back.
    pub(super) fn claim(
        &mut self,
        stream: StreamId,
        window: Window,
        budget: Budget,
        head: Offset,
        now: Now,
        deadline: Duration,
    ) -> Claim {
        self.reap(now);
        let (budget, window_left) = self.room(stream, window, budget);
        let leased = self.lease_ready(stream, budget, window, window_left, now, deadline);
        let left = budget.messages - leased.len();
        let scan = if left > 0 && self.may_scan(head) {
            self.next_scan(head, left)
        } else {
            None
        };
        // Only set, never cleared here: another stream may be scanning.
        if scan.is_some() {
            self.scanning = true;
            self.keys.scan_started(head);
        }
        Claim { leased, scan }
    }

    /// The next run of unexamined, unacknowledged offsets below `head`, at
    /// most `max` long.
    fn next_scan(&mut self, head: Offset, max: usize) -> Option<Scan> {
        let mut start = self.next_new.max(self.acks.floor);
        if let Some(acked) = self.acks.acked.containing(start) {
            start = acked.end;
        }
        self.next_new = start;
        if start >= head {
            return None;
        }
        let next_acked = self.acks.acked.next_start_after(start).unwrap_or(head);
        let end = head.min(next_acked).min(start.saturating_add(max as u64));
        Some(Scan {
            range: start..end,
            epoch: self.epoch,
        })
    }

    /// A stream gave up its scan without admitting it (its read failed).
    pub(super) fn abandon_scan(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.scanning = false;
        }
    }

    /// Takes in what a stream read for its scan: `messages` are the
    /// messages it found in `scan.range`, in offset order, and every offset
    /// of the range below `examined` was looked at (those without a message
    /// are acknowledged as gone). Then leases to `stream` what is due,
    /// lowest offset first, within `budget` and what its `window` leaves.
    pub(super) fn admit(
        &mut self,
        stream: StreamId,
        scan: Scanned<'_>,
        window: Window,
        budget: Budget,
        now: Now,
        deadline: Duration,
    ) -> Vec<Leased> {
        let Scanned {
            range,
            messages,
            examined,
            epoch,
            horizon,
        } = scan;
        if epoch != self.epoch {
            // Read before a seek: what it found is looked at again.
            return Vec::new();
        }
        self.scanning = false;
        let examined = examined.min(range.end);
        let range = range.clone();
        let mut expected = range.start;
        let (mut found, mut queued) = (0, 0);
        for message in messages {
            let offset = message.offset;
            if offset < expected || offset >= examined {
                continue;
            }
            self.gone(expected..offset, now);
            expected = offset + 1;
            found += 1;
            let meta = Meta::of(message, self.ordered);
            queued += usize::from(self.take_in(message, meta, now, horizon));
        }
        self.keys.scan_admitted(found, queued);
        self.gone(expected..examined, now);
        self.next_new = self.next_new.max(examined);
        let (budget, window_left) = self.room(stream, window, budget);
        self.lease_ready(stream, budget, window, window_left, now, deadline)
    }

    /// Leased offsets that turned out to hold no message (deleted since
    /// they were scanned): they are settled.
    pub(super) fn gone_offsets(&mut self, offsets: &[Offset], now: Now) {
        for &offset in offsets {
            self.gone(offset..offset + 1, now);
        }
    }

    /// Offsets in `range` hold no message: they are settled.
    fn gone(&mut self, range: Range<Offset>, now: Now) {
        for offset in range {
            if self.acks.ack(offset) {
                self.acks_changed = true;
            }
            self.forget(offset, now);
        }
    }

    /// Puts a newly examined message where it belongs; returns whether it
    /// waits behind its key. Offsets never examined are in none of the
    /// book's sets: only one scan runs at a time, and only scans put
    /// offsets there.
    fn take_in(
        &mut self,
        message: &StoredMessage,
        meta: Meta,
        now: Now,
        horizon: Option<DuePosition>,
    ) -> bool {
        let offset = message.offset;
        debug_assert!(!self.is_known(offset), "offset {offset} examined twice");
        if self.acks.is_acked(offset) {
            return false;
        }
        if let Some(due) = message.deliver_at.filter(|&due| due > now.wall) {
            let far = horizon.is_some_and(|horizon| DuePosition { due, offset } > horizon);
            if far && !self.ordered {
                // The delay feed hands it back when its time comes near.
                return false;
            }
            self.delays.insert(offset, due);
        }
        if let Some(key) = meta.key
            && !self.keys.hold(key, message, meta)
        {
            return true;
        }
        self.schedule(offset, meta, now);
        false
    }

    /// Whether a stream may be handed a scan below `head`.
    fn may_scan(&self, head: Offset) -> bool {
        !self.scanning
            && self
                .keys
                .may_scan(head, self.leases.len() >= keys::BUSY_LEASES)
    }

    /// The messages of `leased` that the book kept in memory (they waited
    /// behind their key), in offset order; the rest are to be read.
    pub(super) fn take_bodies(&mut self, leased: &[Leased]) -> Vec<StoredMessage> {
        self.keys.take_bodies(leased.iter().map(|l| l.offset))
    }

    fn is_known(&self, offset: Offset) -> bool {
        self.leases.contains_key(&offset)
            || self.ready.contains_key(&offset)
            || self.waiting_due.contains_key(&offset)
    }

    /// Makes a message due: now, or when its record (or, before its first
    /// delivery, its delivery time) says.
    fn schedule(&mut self, offset: Offset, meta: Meta, now: Now) {
        let record = match self.records.is_empty() {
            true => None,
            false => self.records.get(&offset),
        };
        let delayed = match self.delays.is_empty() {
            true => None,
            false => self.delays.get(&offset).copied(),
        };
        let due = record
            .and_then(|r| r.redeliver_at)
            .or(delayed)
            .map(|at| now.instant_of(at))
            .filter(|&due| due > now.instant);
        match due {
            Some(due) => {
                self.waiting.insert((due, offset), meta);
                self.waiting_due.insert(offset, due);
            }
            None => {
                self.ready.insert(offset, meta);
            }
        }
    }

    /// Leases due messages, lowest first, within `budget` (whose first
    /// message goes whatever its size) and the window: `window_left` bytes
    /// when the stream holds something, else one message of any size and
    /// then the window's bytes.
    fn lease_ready(
        &mut self,
        stream: StreamId,
        budget: Budget,
        window: Window,
        window_left: Option<usize>,
        now: Now,
        deadline: Duration,
    ) -> Vec<Leased> {
        let mut leased = Vec::new();
        let mut bytes = 0;
        let until = now.instant + deadline;
        while leased.len() < budget.messages {
            let Some((&offset, &meta)) = self.ready.first_key_value() else {
                break;
            };
            let after = bytes + meta.size as usize;
            if !leased.is_empty() && after > budget.bytes {
                break;
            }
            let window_full = match window_left {
                Some(left) => after > left,
                None => !leased.is_empty() && window.bytes.is_some_and(|limit| after > limit),
            };
            if window_full {
                break;
            }
            self.ready.pop_first();
            bytes += meta.size as usize;
            let attempt = self.failures(offset).saturating_add(1);
            leased.push(self.lease(offset, stream, until, attempt, meta));
        }
        leased
    }

    fn failures(&self, offset: Offset) -> u32 {
        if self.records.is_empty() {
            return 0;
        }
        self.records.get(&offset).map_or(0, |r| r.failures)
    }

    fn lease(
        &mut self,
        offset: Offset,
        stream: StreamId,
        deadline: Instant,
        attempt: u32,
        meta: Meta,
    ) -> Leased {
        self.next_lease += 1;
        if !self.delays.is_empty() {
            // Its wait is over; failures from now on go by the retry policy.
            self.delays.remove(&offset);
        }
        let lease = Lease {
            stream,
            deadline,
            id: self.next_lease,
            meta,
        };
        self.leases.insert(offset, lease);
        self.deadlines.insert((deadline, offset));
        let held = self.streams.entry(stream).or_default();
        held.messages += 1;
        held.bytes += meta.size as usize;
        Leased {
            offset,
            attempt,
            lease: lease.id,
        }
    }

    /// Removes a lease, returning it.
    fn unlease(&mut self, offset: Offset) -> Option<Lease> {
        let lease = self.leases.remove(&offset)?;
        self.deadlines.remove(&(lease.deadline, offset));
        if let Some(held) = self.streams.get_mut(&lease.stream) {
            held.messages = held.messages.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(lease.meta.size as usize);
        }
        Some(lease)
    }

    /// A delivery failed (or, not `counted`, was cut short by the broker):
    /// the message is due again after `delay` when given, else after the
    /// retry policy's backoff (for counted failures), else at once.
    fn failed(
        &mut self,
        offset: Offset,
        meta: Meta,
        counted: bool,
        delay: Option<Duration>,
        now: Now,
    ) {
        let delay = delay.filter(|d| !d.is_zero());
        if counted || delay.is_some() {
            let record = self.records.entry(offset).or_insert(DeliveryRecord {
                failures: 0,
                redeliver_at: None,
            });
            if counted {
                record.failures = record.failures.saturating_add(1);
            }
            let failures = record.failures;
            if counted && self.max_attempts.is_some_and(|max| failures >= max) {
                let error = self.last_errors.get(&offset).cloned();
                self.moving.insert(
                    offset,
                    Move {
                        offset,
                        attempts: failures,
                        reason: DeadReason::MaxDeliveryAttempts,
                        error,
                        meta,
                    },
                );
                return;
            }
            let wait = delay.or_else(|| {
                let policy = self.retry.filter(|_| counted)?;
                Some(with_jitter(policy.backoff(failures), offset, failures))
            });
            record.redeliver_at = wait.filter(|d| !d.is_zero()).map(|d| now.wall + d);
            self.dirty.insert(offset);
        }
        self.schedule(offset, meta, now);
    }

    /// Settles expired leases (each a failed delivery) and waits that are
    /// over. Returns whether anything became due.
    pub(super) fn reap(&mut self, now: Now) -> bool {
        let mut moved = false;
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now.instant {
                break;
            }
            if let Some(lease) = self.unlease(offset) {
                self.failed(offset, lease.meta, true, None, now);
            }
            moved = true;
        }
        while let Some((&(due, offset), &meta)) = self.waiting.first_key_value() {
            if due > now.instant {
                break;
            }
            self.waiting.remove(&(due, offset));
            self.waiting_due.remove(&offset);
            self.ready.insert(offset, meta);
            moved = true;
        }
        moved
    }

    /// When the next lease expires or the next wait is over.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let lease = self.deadlines.first().map(|&(at, _)| at);
        let waiting = self.waiting.first_key_value().map(|(&(at, _), _)| at);
        match (lease, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acknowledges offsets (below the topic's head: the caller checks).
    /// An ack of a lease acknowledges its message even when the lease has
    /// moved on: the work was done.
    pub(super) fn ack(&mut self, targets: &[Target], now: Now) {
        for target in targets {
            let offset = match *target {
                Target::Offset(offset) => offset,
                // Delivered before a seek, which asked for it again.
                Target::Lease(_, id) if id <= self.seek_lease_floor => continue,
                Target::Lease(offset, _) => offset,
            };
            if self.acks.ack(offset) {
                self.counts.acked += 1;
                self.forget(offset, now);
            }
        }
    }

    /// Drops every trace of an offset that is settled, releasing its key
    /// to the next message waiting for it.
    fn forget(&mut self, offset: Offset, now: Now) {
        let meta = if let Some(lease) = self.unlease(offset) {
            Some(lease.meta)
        } else if let Some(meta) = self.ready.remove(&offset) {
            Some(meta)
        } else if let Some(due) = self.waiting_due.remove(&offset) {
            self.waiting.remove(&(due, offset))
        } else {
            None
        };
        let meta = meta.or_else(|| self.moving.remove(&offset).map(|m| m.meta));
        if !self.records.is_empty() && self.records.remove(&offset).is_some() {
            self.dirty.insert(offset);
        }
        if !self.last_errors.is_empty() {
            self.last_errors.remove(&offset);
        }
        if !self.delays.is_empty() {
            self.delays.remove(&offset);
        }
        self.release_key(offset, meta, now);
    }

    /// The delay feed hands back delayed messages whose time comes near:
    /// each that a scan passed over (below the scan position, not settled
    /// and not in the book) waits for its time. Ordered books never pass
    /// one over. Returns whether any was taken.
    pub(super) fn delayed_due(&mut self, due: &[DuePosition], now: Now) -> bool {
        if self.ordered {
            return false;
        }
        let mut taken = false;
        for &DuePosition { due, offset } in due {
            if offset >= self.next_new
                || offset < self.first_offset.max(self.acks.floor)
                || self.acks.is_acked(offset)
                || self.is_known(offset)
                || self.moving.contains_key(&offset)
                || self.in_move.contains_key(&offset)
            {
                continue;
            }
            self.delays.insert(offset, due);
            let meta = Meta {
                key: None,
                size: FED_MESSAGE_SIZE,
            };
            self.schedule(offset, meta, now);
            taken = true;
        }
        taken
    }

    /// A settled message gives up its key (`meta`, when it was scheduled or
    /// leased) to the next message waiting for it, or leaves its key's
    /// queue.
    fn release_key(&mut self, offset: Offset, meta: Option<Meta>, now: Now) {
        if !self.ordered {
            return;
        }
        let Some(key) = meta.and_then(|m| m.key) else {
            // Not scheduled: it may wait behind its key.
            self.keys.unqueue(offset);
            return;
        };
        self.keys.drop_body(offset);
        if let keys::Released::PassedTo(next, next_meta) = self.keys.release(key, offset) {
            self.schedule(next, next_meta, now);
        }
    }

    /// Gives leases back, due again after `delay` (at once when `None`):
    /// each a failed delivery. Offsets not in flight, and leases that are
    /// gone, are ignored.
    pub(super) fn nack(&mut self, targets: &[Target], delay: Option<Duration>, now: Now) {
        self.nack_with(targets, delay, None, now);
    }

    /// As [`LeaseBook::nack`], keeping `error` as the deliveries' last
    /// error (for the dead-letter copy). Returns whether a message is now
    /// waiting to be moved to the dead-letter topic.
    pub(super) fn nack_with(
        &mut self,
        targets: &[Target],
        delay: Option<Duration>,
        error: Option<&str>,
        now: Now,
    ) -> bool {
        let moving = self.moving.len();
        for &target in targets {
            if let Some((offset, lease)) = self.take_lease(target) {
                self.counts.nacked += 1;
                if let Some(error) = error {
                    self.last_errors.insert(offset, error.to_owned());
                }
                self.failed(offset, lease.meta, true, delay, now);
            }
        }
        self.moving.len() > moving
    }

    /// Removes the lease a target names, if it is still there.
    fn take_lease(&mut self, target: Target) -> Option<(Offset, Lease)> {
        let (offset, id) = match target {
            Target::Offset(offset) => (offset, None),
            Target::Lease(offset, id) => (offset, Some(id)),
        };
        let lease = self.leases.get(&offset)?;
        if id.is_some_and(|id| id != lease.id) {
            return None;
        }
        self.unlease(offset).map(|lease| (offset, lease))
    }

    /// Moves the deadline of leases to `now + deadline`; zero gives them up
    /// (a failed delivery). Leases that are gone are ignored.
    pub(super) fn modify_deadline(&mut self, targets: &[Target], deadline: Duration, now: Now) {
        if deadline.is_zero() {
            self.nack(targets, None, now);
            return;
        }
        for &target in targets {
            let (offset, id) = match target {
                Target::Offset(offset) => (offset, None),
                Target::Lease(offset, id) => (offset, Some(id)),
            };
            let Some(lease) = self.leases.get_mut(&offset) else {
                continue;
            };
            if id.is_some_and(|id| id != lease.id) {
                continue;
            }
            self.deadlines.remove(&(lease.deadline, offset));
            lease.deadline = now.instant + deadline;
            self.deadlines.insert((lease.deadline, offset));
        }
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

pub(super) use dead::{DeadReason, Move};
use keys::Keys;

#[cfg(test)]
mod tests;
