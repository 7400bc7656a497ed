//! The lease book's scanning: what a stream may claim, how what it read
//! is taken in, and how messages are scheduled and leased. Part of
//! [`LeaseBook`]'s implementation; the state it works on is in `book.rs`.

use std::ops::Range;

use super::*;

impl LeaseBook {
    /// What `stream` may still take within its window, and `budget`: the
    /// budget's count, and the bytes its window has left (`None`: no byte
    /// limit, or the stream holds nothing, when one message of any size
    /// may go so that none is too large to deliver ever).
    pub(super) fn room(
        &self,
        stream: StreamId,
        window: Window,
        budget: Budget,
    ) -> (Budget, Option<usize>) {
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
    pub(in crate::broker) fn claim(
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
    pub(super) fn next_scan(&mut self, head: Offset, max: usize) -> Option<Scan> {
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
    pub(in crate::broker) fn abandon_scan(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.scanning = false;
        }
    }

    /// Takes in what a stream read for its scan: `messages` are the
    /// messages it found in `scan.range`, in offset order, and every offset
    /// of the range below `examined` was looked at (those without a message
    /// are acknowledged as gone). Then leases to `stream` what is due,
    /// lowest offset first, within `budget` and what its `window` leaves.
    pub(in crate::broker) fn admit(
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
    pub(in crate::broker) fn gone_offsets(&mut self, offsets: &[Offset], now: Now) {
        for &offset in offsets {
            self.gone(offset..offset + 1, now);
        }
    }

    /// Offsets in `range` hold no message: they are settled.
    pub(super) fn gone(&mut self, range: Range<Offset>, now: Now) {
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
    pub(super) fn take_in(
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
    pub(super) fn may_scan(&self, head: Offset) -> bool {
        !self.scanning
            && self
                .keys
                .may_scan(head, self.leases.len() >= keys::BUSY_LEASES)
    }

    /// The messages of `leased` that the book kept in memory (they waited
    /// behind their key), in offset order; the rest are to be read.
    pub(in crate::broker) fn take_bodies(&mut self, leased: &[Leased]) -> Vec<StoredMessage> {
        self.keys.take_bodies(leased.iter().map(|l| l.offset))
    }

    pub(super) fn is_known(&self, offset: Offset) -> bool {
        self.leases.contains_key(&offset)
            || self.ready.contains_key(&offset)
            || self.waiting_due.contains_key(&offset)
    }

    /// Makes a message due: now, or when its record (or, before its first
    /// delivery, its delivery time) says.
    pub(super) fn schedule(&mut self, offset: Offset, meta: Meta, now: Now) {
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
    pub(super) fn lease_ready(
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

    pub(super) fn failures(&self, offset: Offset) -> u32 {
        if self.records.is_empty() {
            return 0;
        }
        self.records.get(&offset).map_or(0, |r| r.failures)
    }

    pub(super) fn lease(
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
}
