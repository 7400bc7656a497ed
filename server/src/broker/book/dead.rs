//! Dead letters in the lease book: messages that failed
//! `max_delivery_attempts` deliveries, or that a subscriber rejected, leave
//! delivery (`moving`) until the writer has copied them to the dead-letter
//! topic and settled them here in one atomic write (`moved`). A message
//! that cannot be moved (no such topic) goes back to delivery with its
//! backoff (`move_failed`). `redrive` brings moved messages back.

use std::time::Duration;

use super::{LeaseBook, Meta, Now, Target};
use crate::offsets::Offset;
use crate::storage::{DeadLetters, DeliveryRecord, StoredMessage};

/// Why a message leaves delivery for the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::broker) enum DeadReason {
    /// It failed `max_delivery_attempts` deliveries.
    MaxDeliveryAttempts,
    /// A subscriber rejected it.
    Rejected,
}

impl DeadReason {
    /// As the `tidings.dead_letter_reason` attribute gives it.
    pub(in crate::broker) fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveryAttempts => "max_delivery_attempts",
            DeadReason::Rejected => "rejected",
        }
    }
}

/// A message out of delivery, waiting to be moved to the dead-letter topic.
#[derive(Debug, Clone)]
pub(in crate::broker) struct Move {
    pub(in crate::broker) offset: Offset,
    /// Its deliveries so far.
    pub(in crate::broker) attempts: u32,
    pub(in crate::broker) reason: DeadReason,
    /// The error the last nack or the reject gave.
    pub(in crate::broker) error: Option<String>,
    pub(super) meta: Meta,
}

/// The wait before a message that could not be moved is delivered again,
/// when the subscription has no retry policy.
const MOVE_RETRY: Duration = Duration::from_secs(10);

impl LeaseBook {
    /// Sets the dead-letter policy's `max_delivery_attempts`; `None` for no
    /// dead-letter topic, which sends messages waiting to be moved back to
    /// delivery.
    pub(in crate::broker) fn set_dead_letter(&mut self, max_attempts: Option<u32>, now: Now) {
        self.max_attempts = max_attempts;
        if max_attempts.is_none() {
            for (offset, waiting) in std::mem::take(&mut self.moving) {
                self.schedule(offset, waiting.meta, now);
            }
        }
    }

    /// Takes the dead letters as stored.
    pub(in crate::broker) fn restore_dead(&mut self, dead: DeadLetters) {
        self.dead = dead;
    }

    /// The dead letters as they are now.
    pub(in crate::broker) fn dead_letters(&self) -> &DeadLetters {
        &self.dead
    }

    /// Messages moved and not redriven.
    pub(in crate::broker) fn dead_lettered(&self) -> u64 {
        self.dead.offsets.len()
    }

    /// Messages rejected without a dead-letter topic.
    pub(in crate::broker) fn rejected(&self) -> u64 {
        self.dead.rejected
    }

    /// Rejects deliveries in flight: never to be delivered again. With a
    /// dead-letter policy they wait to be moved (reason `rejected`);
    /// without one they are acknowledged and counted. Leases that are gone
    /// are ignored.
    pub(in crate::broker) fn reject(&mut self, targets: &[Target], error: Option<&str>, now: Now) {
        for &target in targets {
            let Some((offset, lease)) = self.take_lease(target) else {
                continue;
            };
            if self.max_attempts.is_some() {
                let attempts = self.failures(offset).saturating_add(1);
                self.moving.insert(
                    offset,
                    Move {
                        offset,
                        attempts,
                        reason: DeadReason::Rejected,
                        error: error.map(str::to_owned),
                        meta: lease.meta,
                    },
                );
            } else {
                self.acks.ack(offset);
                self.acks_changed = true;
                self.dead.rejected += 1;
                self.dead_changed = true;
                self.forget_taken(offset, lease.meta, now);
            }
        }
    }

    /// The writer stored these moves (taken at `epoch`): `moved` copied to
    /// the dead-letter topic, `gone` no longer stored and just settled.
    /// Moves taken before a seek are not applied.
    pub(in crate::broker) fn moved(
        &mut self,
        moved: &[Offset],
        gone: &[Offset],
        epoch: u64,
        now: Now,
    ) {
        if epoch != self.epoch {
            return;
        }
        for (&offset, kept) in moved
            .iter()
            .map(|o| (o, true))
            .chain(gone.iter().map(|o| (o, false)))
        {
            let Some(waiting) = self.in_move.remove(&offset) else {
                continue;
            };
            self.acks.ack(offset);
            if kept {
                self.dead.offsets.insert(offset);
                self.counts.dead_lettered += 1;
            }
            self.forget_taken(offset, waiting.meta, now);
        }
    }

    /// These moves could not be made (the dead-letter topic is missing):
    /// the messages are delivered again after their backoff, and moved at
    /// their next failure.
    pub(in crate::broker) fn move_failed(&mut self, offsets: &[Offset], now: Now) {
        for &offset in offsets {
            let Some(waiting) = self.in_move.remove(&offset) else {
                continue;
            };
            let failures = self.failures(offset);
            let wait = self
                .retry
                .map_or(MOVE_RETRY, |policy| policy.backoff(failures));
            self.records.insert(
                offset,
                DeliveryRecord {
                    failures,
                    redeliver_at: Some(now.wall + wait),
                },
            );
            self.dirty.insert(offset);
            self.schedule(offset, waiting.meta, now);
        }
    }

    /// The dead-lettered offsets among `wanted`, or all of them.
    pub(in crate::broker) fn dead_offsets(&self, wanted: Option<&[Offset]>) -> Vec<Offset> {
        match wanted {
            Some(wanted) => wanted
                .iter()
                .copied()
                .filter(|&o| self.dead.offsets.contains(o))
                .collect(),
            None => self.dead.offsets.ranges().flatten().collect(),
        }
    }

    /// Brings dead-lettered messages back into delivery, their attempts
    /// counting from 1 again; `missing` ones are no longer stored and are
    /// forgotten. Returns how many came back.
    pub(in crate::broker) fn redrive(
        &mut self,
        messages: &[StoredMessage],
        missing: &[Offset],
        now: Now,
    ) -> usize {
        for &offset in missing {
            if self.dead.offsets.remove(offset) {
                self.dead_changed = true;
            }
        }
        let mut redriven = 0;
        for message in messages {
            let offset = message.offset;
            if offset < self.first_offset || !self.dead.offsets.remove(offset) {
                continue;
            }
            self.dead_changed = true;
            redriven += 1;
            if self.acks.unack(offset) {
                self.acks_changed = true;
            }
            if self.records.remove(&offset).is_some() {
                self.dirty.insert(offset);
            }
            // Offsets not yet scanned come with the scan.
            if offset < self.next_new {
                self.take_in(message, Meta::of(message, self.ordered), now, None);
            }
        }
        redriven
    }

    /// Drops every trace of a settled message whose meta the caller holds
    /// (it was leased or waiting to be moved), releasing its key.
    fn forget_taken(&mut self, offset: Offset, meta: Meta, now: Now) {
        if self.records.remove(&offset).is_some() {
            self.dirty.insert(offset);
        }
        self.last_errors.remove(&offset);
        self.release_key(offset, Some(meta), now);
    }
}
