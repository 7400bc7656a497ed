//! [`Ledger`]: the subscriber's bookkeeping, free of I/O — which deliveries
//! are leased to the live stream, which settlements (acks, nacks, lease
//! extensions) wait to be sent, and which leases are due for automatic
//! extension.
//!
//! Every delivery gets a serial number. A lease belongs to the newest
//! delivery of its offset on the live stream; only that delivery may nack
//! or extend it. Acks always go through (they are idempotent). When a
//! stream ends, the broker takes its leases back, so the ledger forgets
//! them and later nacks of those deliveries are skipped.
//!
//! A settlement names its delivery as the wire will ([`Target`]): by the
//! delivery's `ack_id`, or by offset when the broker gave none. The name
//! is taken from the delivery when the settlement is queued (and, for
//! automatic extensions, from the lease, which holds its delivery's name),
//! never looked up by offset later: after a reconnect a stale delivery
//! and a fresh one of the same offset may both be held, and each must
//! speak only for itself.
//!
//! This module sends nothing and reads no clock: callers pass `now` in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How a settlement names its delivery on the wire: one or the other,
/// never both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Target {
    /// The delivery's `ack_id`: the broker settles only the lease it
    /// names (an ack still acknowledges the message).
    AckId(Arc<str>),
    /// The message's offset, for a broker that gives no `ack_id`.
    Offset(u64),
}

impl Target {
    /// The name of a delivery of `offset` that came with `ack_id` (empty
    /// from a broker that predates ack_ids).
    pub(crate) fn new(offset: u64, ack_id: String) -> Self {
        if ack_id.is_empty() {
            Self::Offset(offset)
        } else {
            Self::AckId(ack_id.into())
        }
    }

    /// The `ack_id`, or `""` when the delivery is named by offset.
    pub(crate) fn ack_id(&self) -> &str {
        match self {
            Self::AckId(ack_id) => ack_id,
            Self::Offset(_) => "",
        }
    }
}

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
#[derive(Debug, Clone)]
struct Lease {
    serial: u64,
    /// The name of the delivery that holds it, for its extensions.
    target: Target,
    received: Instant,
    /// False once `max_lease_extension` has passed since receipt.
    extending: bool,
}

/// Settlements to send in one go, each naming its delivery.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Round {
    /// Deliveries to acknowledge.
    pub(crate) acks: Vec<Target>,
    /// Deliveries to give back, grouped by delay.
    pub(crate) nacks: Vec<(Duration, Vec<Target>)>,
    /// Leases to extend by the ack deadline.
    pub(crate) extends: Vec<Target>,
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
    acks: Vec<Target>,
    nacks: BTreeMap<Duration, Vec<Target>>,
    extends: BTreeSet<Target>,
    /// By offset: the broker leases a message to one stream at a time, so
    /// the live stream holds at most one lease per offset.
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

    /// Records a delivery of `offset`, named `target`, on the stream of
    /// `epoch`, received at `now`; returns its serial number. It takes over
    /// the lease of an earlier delivery of the same offset.
    pub(crate) fn received(
        &mut self,
        epoch: u64,
        offset: u64,
        target: Target,
        now: Instant,
    ) -> u64 {
        self.last_serial += 1;
        if self.is_live(epoch) {
            let lease = Lease {
                serial: self.last_serial,
                target,
                received: now,
                extending: true,
            };
            if let Some(earlier) = self.leases.insert(offset, lease) {
                // Its lease is gone: an extension it queued is moot.
                self.extends.remove(&earlier.target);
            }
        }
        self.last_serial
    }

    /// Queues the settlement of delivery `serial` of `offset`, named
    /// `target` on the wire.
    pub(crate) fn settle(
        &mut self,
        offset: u64,
        serial: u64,
        target: &Target,
        settlement: Settlement,
    ) {
        let holds_lease = self
            .leases
            .get(&offset)
            .is_some_and(|lease| lease.serial == serial);
        match settlement {
            Settlement::Ack => {
                if holds_lease {
                    self.leases.remove(&offset);
                    self.extends.remove(target);
                }
                self.acks.push(target.clone());
            }
            // A lease that is gone was taken back by the broker (or belongs
            // to a newer delivery): nacking it would only disturb others.
            Settlement::Nack(_) | Settlement::Extend if !holds_lease => {}
            Settlement::Nack(delay) => {
                self.leases.remove(&offset);
                self.extends.remove(target);
                self.nacks.entry(delay).or_default().push(target.clone());
            }
            Settlement::Extend => {
                self.extends.insert(target.clone());
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
            for lease in self.leases.values_mut() {
                lease.extending &= now.saturating_duration_since(lease.received) < max_extension;
                if lease.extending {
                    extends.insert(lease.target.clone());
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
    pub(crate) fn requeue(&mut self, acks: Vec<Target>, nacks: Vec<(Duration, Vec<Target>)>) {
        self.acks.extend(acks);
        for (delay, targets) in nacks {
            self.nacks.entry(delay).or_default().extend(targets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(600);

    /// A delivery named by its ack_id.
    fn id(ack_id: &str) -> Target {
        Target::AckId(ack_id.into())
    }

    /// A delivery named by its offset (a broker without ack_ids).
    fn at(offset: u64) -> Target {
        Target::Offset(offset)
    }

    /// Records a delivery; returns its serial number and name.
    fn receive(ledger: &mut Ledger, epoch: u64, offset: u64, ack_id: &str) -> (u64, Target) {
        let target = Target::new(offset, ack_id.to_owned());
        let serial = ledger.received(epoch, offset, target.clone(), Instant::now());
        (serial, target)
    }

    #[test]
    fn a_delivery_is_named_by_its_ack_id_or_else_its_offset() {
        let named = Target::new(7, "a7".to_owned());
        assert_eq!((&named, named.ack_id()), (&id("a7"), "a7"));
        let unnamed = Target::new(7, String::new());
        assert_eq!((&unnamed, unnamed.ack_id()), (&at(7), ""));
    }

    #[test]
    fn acks_and_nacks_are_batched_and_leave_the_lease() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, epoch, 10, "");
        let (b, tb) = receive(&mut ledger, epoch, 11, "");
        let (c, tc) = receive(&mut ledger, epoch, 12, "");
        ledger.settle(10, a, &ta, Settlement::Ack);
        ledger.settle(11, b, &tb, Settlement::Nack(Duration::ZERO));
        ledger.settle(12, c, &tc, Settlement::Nack(Duration::from_secs(5)));
        assert_eq!(ledger.pending(), 3);
        assert_eq!(ledger.outstanding(), 0);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [at(10)]);
        assert_eq!(
            round.nacks,
            [
                (Duration::ZERO, vec![at(11)]),
                (Duration::from_secs(5), vec![at(12)])
            ]
        );
        assert!(round.extends.is_empty(), "settled leases are not extended");
        assert!(ledger.take_round(false, now, MAX).is_empty());
    }

    #[test]
    fn settlements_carry_the_ack_id_and_not_the_offset() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, epoch, 10, "ack-10");
        let (b, tb) = receive(&mut ledger, epoch, 11, "ack-11");
        let (c, tc) = receive(&mut ledger, epoch, 12, "ack-12");
        receive(&mut ledger, epoch, 13, "ack-13");
        ledger.settle(10, a, &ta, Settlement::Ack);
        ledger.settle(11, b, &tb, Settlement::Nack(Duration::ZERO));
        ledger.settle(12, c, &tc, Settlement::Extend);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [id("ack-10")]);
        assert_eq!(round.nacks, [(Duration::ZERO, vec![id("ack-11")])]);
        assert_eq!(round.extends, [id("ack-12"), id("ack-13")]);
    }

    #[test]
    fn leases_are_extended_until_the_maximum_extension() {
        let start = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        ledger.received(epoch, 1, id("one"), start);
        ledger.received(epoch, 2, at(2), start + Duration::from_secs(5));
        let max = Duration::from_secs(10);
        let round = ledger.take_round(true, start + Duration::from_secs(9), max);
        assert_eq!(round.extends, [id("one"), at(2)]);
        let round = ledger.take_round(true, start + Duration::from_secs(11), max);
        assert_eq!(
            round.extends,
            [at(2)],
            "offset 1 is past its maximum extension"
        );
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
        let (serial, target) = receive(&mut ledger, epoch, 7, "");
        ledger.settle(7, serial, &target, Settlement::Extend);
        ledger.settle(8, serial, &at(8), Settlement::Extend);
        assert_eq!(ledger.take_round(false, now, MAX).extends, [at(7)]);
    }

    #[test]
    fn deliveries_of_an_ended_stream_are_acked_but_never_nacked() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let old = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, old, 1, "");
        let (b, tb) = receive(&mut ledger, old, 2, "");
        ledger.end_epoch(old);
        assert!(!ledger.is_live(old));
        let new = ledger.begin_epoch();
        assert!(ledger.is_live(new));
        ledger.settle(1, a, &ta, Settlement::Ack);
        ledger.settle(2, b, &tb, Settlement::Nack(Duration::ZERO));
        ledger.settle(2, b, &tb, Settlement::Extend);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [at(1)]);
        assert!(
            round.nacks.is_empty() && round.extends.is_empty(),
            "{round:?}"
        );
    }

    /// After a reconnect the stale delivery of an offset and the fresh one
    /// are both held: each is settled under its own ack_id, and only the
    /// fresh one's lease is extended.
    #[test]
    fn a_stale_and_a_fresh_delivery_of_one_offset_each_use_their_own_ack_id() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let old = ledger.begin_epoch();
        let (stale, stale_id) = receive(&mut ledger, old, 5, "old-5");
        ledger.end_epoch(old);
        let new = ledger.begin_epoch();
        let (fresh, fresh_id) = receive(&mut ledger, new, 5, "new-5");

        ledger.settle(5, stale, &stale_id, Settlement::Extend);
        ledger.settle(5, stale, &stale_id, Settlement::Nack(Duration::ZERO));
        let round = ledger.take_round(true, now, MAX);
        assert!(
            round.nacks.is_empty(),
            "the stale one holds no lease: {round:?}"
        );
        assert_eq!(round.extends, [id("new-5")]);

        // The work was done: the stale delivery's ack goes out, under its
        // own name, and the fresh lease is still the fresh one's.
        ledger.settle(5, stale, &stale_id, Settlement::Ack);
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.acks, [id("old-5")]);
        assert_eq!(round.extends, [id("new-5")]);

        ledger.settle(5, fresh, &fresh_id, Settlement::Nack(Duration::ZERO));
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.nacks, [(Duration::ZERO, vec![id("new-5")])]);
        assert!(round.extends.is_empty(), "{round:?}");
    }

    /// A settlement queued by a delivery keeps that delivery's name even
    /// when a newer delivery of the offset arrives before it is sent.
    #[test]
    fn a_queued_nack_keeps_its_ack_id_when_the_offset_comes_again() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
        ledger.settle(3, first, &first_id, Settlement::Nack(Duration::ZERO));
        receive(&mut ledger, epoch, 3, "second");
        let round = ledger.take_round(true, now, MAX);
        assert_eq!(round.nacks, [(Duration::ZERO, vec![id("first")])]);
        assert_eq!(round.extends, [id("second")]);
    }

    #[test]
    fn an_extension_queued_by_a_superseded_delivery_is_dropped() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
        ledger.settle(3, first, &first_id, Settlement::Extend);
        receive(&mut ledger, epoch, 3, "second");
        assert!(ledger.take_round(false, now, MAX).is_empty());
        assert_eq!(ledger.take_round(true, now, MAX).extends, [id("second")]);
    }

    #[test]
    fn a_newer_delivery_owns_the_lease() {
        let mut ledger = Ledger::default();
        let epoch = ledger.begin_epoch();
        let (first, target) = receive(&mut ledger, epoch, 3, "");
        let (second, _) = receive(&mut ledger, epoch, 3, "");
        ledger.settle(3, first, &target, Settlement::Nack(Duration::ZERO));
        assert_eq!(ledger.pending(), 0, "the stale delivery does not nack");
        ledger.settle(3, second, &target, Settlement::Nack(Duration::ZERO));
        assert_eq!(ledger.pending(), 1);
    }

    #[test]
    fn failed_settlements_are_requeued() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.requeue(vec![at(1), id("two")], vec![(Duration::ZERO, vec![at(3)])]);
        let round = ledger.take_round(false, now, MAX);
        assert_eq!(round.acks, [at(1), id("two")]);
        assert_eq!(round.nacks, [(Duration::ZERO, vec![at(3)])]);
    }
}
