//! The lease book's settlements: acknowledgements, failures and their
//! retries, expired leases, deadline changes and delayed messages coming
//! due. Part of [`LeaseBook`]'s implementation; the state it works on is in
//! `book.rs`.

use super::*;

impl LeaseBook {
    /// Removes a lease, returning it.
    pub(super) fn unlease(&mut self, offset: Offset) -> Option<Lease> {
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
    pub(super) fn failed(
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
    pub(in crate::broker) fn reap(&mut self, now: Now) -> bool {
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
    pub(in crate::broker) fn next_wakeup(&self) -> Option<Instant> {
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
    pub(in crate::broker) fn ack(&mut self, targets: &[Target], now: Now) {
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
    pub(super) fn forget(&mut self, offset: Offset, now: Now) {
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
    pub(in crate::broker) fn delayed_due(&mut self, due: &[DuePosition], now: Now) -> bool {
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
    pub(super) fn release_key(&mut self, offset: Offset, meta: Option<Meta>, now: Now) {
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
    pub(in crate::broker) fn nack(
        &mut self,
        targets: &[Target],
        delay: Option<Duration>,
        now: Now,
    ) {
        self.nack_with(targets, delay, None, now);
    }

    /// As [`LeaseBook::nack`], keeping `error` as the deliveries' last
    /// error (for the dead-letter copy). Returns whether a message is now
    /// waiting to be moved to the dead-letter topic.
    pub(in crate::broker) fn nack_with(
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
    pub(super) fn take_lease(&mut self, target: Target) -> Option<(Offset, Lease)> {
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
    pub(in crate::broker) fn modify_deadline(
        &mut self,
        targets: &[Target],
        deadline: Duration,
        now: Now,
    ) {
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
}
