//! [`Ledger`]: the subscriber's bookkeeping, free of I/O — which deliveries
//! are leased to the live stream, which settlements (acks, nacks, lease
//! extensions) wait to be sent, and which leases are due for automatic
//! extension.
//!
//! Every delivery gets a serial number. A lease belongs to the newest
//! delivery of its offset on the live stream; only that delivery may nack
//! or extend it. Acks always go through (they are idempotent and by
//! offset). When a stream ends, the broker takes its leases back, so the
//! ledger forgets them and later nacks of those deliveries are skipped.
//!
//! This module sends nothing and reads no clock: callers pass `now` in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Acknowledge: never deliver again.
    Ack,
    /// Give back, to be delivered again after this delay (zero: at once).
    Nack(Duration),
    /// Extend the lease now, by the subscription's ack deadline.
    Extend,
}

/// A delivery leased to the live stream.
#[derive(Debug, Clone, Copy)]
struct Lease {
    serial: u64,
    received: Instant,
    /// False once `max_lease_extension` has passed since receipt.
    extending: bool,
}

/// Settlements to send in one go.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Round {
    /// Offsets to acknowledge.
    pub(crate) acks: Vec<u64>,
    /// Offsets to give back, grouped by delay.
    pub(crate) nacks: Vec<(Duration, Vec<u64>)>,
    /// Leases to extend by the ack deadline.
    pub(crate) extends: Vec<u64>,
}

impl Round {
    /// Whether there is nothing to send.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.nacks.is_empty() && self.extends.is_empty()
    }
}

/// Leases of the live stream and settlements waiting to be sent.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    acks: Vec<u64>,
    nacks: BTreeMap<Duration, Vec<u64>>,
    extends: BTreeSet<u64>,
    leases: HashMap<u64, Lease>,
    live_epoch: Option<u64>,
    last_epoch: u64,
    last_serial: u64,
}

impl Ledger {
    /// A new stream is open: returns its epoch. Leases of earlier streams
    /// are gone (the broker took them back when they ended).
    pub(crate) fn begin_epoch(&mut self) -> u64 {
        self.last_epoch += 1;
        self.live_epoch = Some(self.last_epoch);
        self.leases.clear();
        self.last_epoch
    }

    /// The stream of `epoch` ended: its leases are gone.
    pub(crate) fn end_epoch(&mut self, epoch: u64) {
        if self.live_epoch == Some(epoch) {
            self.live_epoch = None;
            self.leases.clear();
            self.extends.clear();
        }
    }

    /// Whether `epoch` is the live stream's.
    pub(crate) fn is_live(&self, epoch: u64) -> bool {
        self.live_epoch == Some(epoch)
    }

    /// Records a delivery of `offset` on the stream of `epoch`, received at
    /// `now`; returns its serial number.
    pub(crate) fn received(&mut self, epoch: u64, offset: u64, now: Instant) -> u64 {
        self.last_serial += 1;
        if self.is_live(epoch) {
            let lease = Lease {
                serial: self.last_serial,
                received: now,
                extending: true,
            };
            self.leases.insert(offset, lease);
        }
        self.last_serial
    }

    /// Queues the settlement of delivery `serial` of `offset`.
    pub(crate) fn settle(&mut self, offset: u64, serial: u64, settlement: Settlement) {
        let holds_lease = self
            .leases
            .get(&offset)
            .is_some_and(|lease| lease.serial == serial);
        match settlement {
            Settlement::Ack => {
                if holds_lease {
                    self.leases.remove(&offset);
                    self.extends.remove(&offset);
                }
                self.acks.push(offset);
            }
            // A lease that is gone was taken back by the broker (or belongs
            // to a newer delivery): nacking it would only disturb others.
            Settlement::Nack(_) | Settlement::Extend if !holds_lease => {}
            Settlement::Nack(delay) => {
                self.leases.remove(&offset);
                self.extends.remove(&offset);
                self.nacks.entry(delay).or_default().push(offset);
            }
            Settlement::Extend => {
                self.extends.insert(offset);
            }
        }
    }

    /// How many settlements wait to be sent.
    pub(crate) fn pending(&self) -> usize {
        self.acks.len() + self.nacks.values().map(Vec::len).sum::<usize>() + self.extends.len()
    }

    /// How many deliveries are leased to the live stream.
    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.leases.len()
    }

    /// Takes every waiting settlement; with `extend_leases`, adds every
    /// lease received less than `max_extension` ago (older ones are no
    /// longer extended and expire on the broker).
    pub(crate) fn take_round(
        &mut self,
        extend_leases: bool,
        now: Instant,
        max_extension: Duration,
    ) -> Round {
        let mut extends = std::mem::take(&mut self.extends);
        if extend_leases {
            for (&offset, lease) in &mut self.leases {
                lease.extending &= now.saturating_duration_since(lease.received) < max_extension;
                if lease.extending {
                    extends.insert(offset);
                }
            }
        }
        Round {
            acks: std::mem::take(&mut self.acks),
            nacks: std::mem::take(&mut self.nacks).into_iter().collect(),
            extends: extends.into_iter().collect(),
        }
    }

    /// Puts back acks and nacks whose sending failed and will be retried.
    /// (Failed extensions are not retried: the next tick extends again.)
    pub(crate) fn requeue(&mut self, acks: Vec<u64>, nacks: Vec<(Duration, Vec<u64>)>) {
        self.acks.extend(acks);
        for (delay, offsets) in nacks {
            self.nacks.entry(delay).or_default().extend(offsets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn acks_and_nacks_are_batched_and_leave_the_lease() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let a = ledger.received(epoch, 10, now);
        let b = ledger.received(epoch, 11, now);
        let c = ledger.received(epoch, 12, now);
        ledger.settle(10, a, Settlement::Ack);
        ledger.settle(11, b, Settlement::Nack(Duration::ZERO));
        ledger.settle(12, c, Settlement::Nack(Duration::from_secs(5)));
        assert_eq!(ledger.pending(), 3);
        assert_eq!(ledger.outstanding(), 0);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [10]);
        assert_eq!(
            round.nacks,
            [
                (Duration::ZERO, vec![11]),
                (Duration::from_secs(5), vec![12])
            ]
        );
        assert!(round.extends.is_empty(), "settled leases are not extended");
        assert!(ledger.take_round(false, now, MAX).is_empty());
    }

    #[test]
    fn leases_are_extended_until_the_maximum_extension() {
        let start = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        ledger.received(epoch, 1, start);
        ledger.received(epoch, 2, start + Duration::from_secs(5));
        let max = Duration::from_secs(10);
        let round = ledger.take_round(true, start + Duration::from_secs(9), max);
        assert_eq!(round.extends, [1, 2]);
        let round = ledger.take_round(true, start + Duration::from_secs(11), max);
        assert_eq!(round.extends, [2], "offset 1 is past its maximum extension");
        assert!(ledger.take_round(false, start, max).extends.is_empty());
        assert_eq!(
            ledger.outstanding(),
            2,
            "an unextended lease stays nackable"
        );
    }

    #[test]
    fn explicit_extension_only_for_a_held_lease() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let serial = ledger.received(epoch, 7, now);
        ledger.settle(7, serial, Settlement::Extend);
        ledger.settle(8, serial, Settlement::Extend);
        assert_eq!(ledger.take_round(false, now, MAX).extends, [7]);
    }

    #[test]
    fn deliveries_of_an_ended_stream_are_acked_but_never_nacked() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let old = ledger.begin_epoch();
        let a = ledger.received(old, 1, now);
        let b = ledger.received(old, 2, now);
        ledger.end_epoch(old);
        assert!(!ledger.is_live(old));
        let new = ledger.begin_epoch();
        assert!(ledger.is_live(new));
        ledger.settle(1, a, Settlement::Ack);
        ledger.settle(2, b, Settlement::Nack(Duration::ZERO));
        ledger.settle(2, b, Settlement::Extend);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [1]);
        assert!(
            round.nacks.is_empty() && round.extends.is_empty(),
            "{round:?}"
        );
    }

    #[test]
    fn a_newer_delivery_owns_the_lease() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let first = ledger.received(epoch, 3, now);
        let second = ledger.received(epoch, 3, now);
        ledger.settle(3, first, Settlement::Nack(Duration::ZERO));
        assert_eq!(ledger.pending(), 0, "the stale delivery does not nack");
        ledger.settle(3, second, Settlement::Nack(Duration::ZERO));
        assert_eq!(ledger.pending(), 1);
    }

    #[test]
    fn failed_settlements_are_requeued() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.requeue(vec![1, 2], vec![(Duration::ZERO, vec![3])]);
        let round = ledger.take_round(false, now, MAX);
        assert_eq!(round.acks, [1, 2]);
        assert_eq!(round.nacks, [(Duration::ZERO, vec![3])]);
    }
}
