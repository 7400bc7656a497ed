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
//! A lease is held for at most `max_lease_extension` after receipt. Past
//! that the ledger lets it go: it is no longer extended, and a nack or
//! extension of it is moot and never sent (the broker may have delivered
//! the message again, under a new ack_id, by then). An ack still goes.
//!
//! This module sends nothing and reads no clock: callers pass `now` in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Result;

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

impl AsRef<Target> for Target {
    fn as_ref(&self) -> &Target {
        self
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

/// Where the outcome of one settlement goes, for the awaitable forms
/// (`Delivery::ack_with_response` and friends).
pub(crate) type Reply = oneshot::Sender<Result<()>>;

/// A delivery leased to the live stream.
#[derive(Debug, Clone)]
struct Lease {
    serial: u64,
    /// The name of the delivery that holds it, for its extensions.
    target: Target,
    /// When `max_lease_extension` has passed since receipt: from then on
    /// the lease is let go (no longer extended, nacked or counted as held).
    let_go_at: Instant,
}

/// An ack or nack waiting to be sent (or sent again).
#[derive(Debug)]
pub(crate) struct Queued {
    /// How the request names the delivery.
    pub(crate) target: Target,
    /// Who waits for the outcome, if anyone.
    pub(crate) reply: Option<Reply>,
    /// For a nack: the stream (epoch) whose lease it gives back and when
    /// that lease is let go. Once either has passed, the nack is moot: the
    /// broker has the message back already, and the lease may be someone
    /// else's by now.
    lease: Option<(u64, Instant)>,
    /// How many times it was sent without an answer.
    pub(crate) attempts: u32,
}

impl Queued {
    /// An ack or nack of `target` that has not been sent yet.
    fn new(target: &Target, reply: Option<Reply>, lease: Option<(u64, Instant)>) -> Self {
        Self {
            target: target.clone(),
            reply,
            lease,
            attempts: 0,
        }
    }
}

impl AsRef<Target> for Queued {
    fn as_ref(&self) -> &Target {
        &self.target
    }
}

/// Settlements to send in one go, each naming its delivery.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Deliveries to acknowledge.
    pub(crate) acks: Vec<Queued>,
    /// Deliveries to give back, grouped by delay.
    pub(crate) nacks: Vec<(Duration, Vec<Queued>)>,
    /// Leases to extend by the ack deadline.
    pub(crate) extends: Vec<Target>,
    /// Nacks that became moot before they were sent: their lease was let
    /// go or went with its stream, so the broker has the message back.
    pub(crate) moot: Vec<Queued>,
}

impl Round {
    /// Whether there is nothing to send.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.nacks.is_empty() && self.extends.is_empty()
    }
}

/// Leases of the live stream and settlements waiting to be sent.
#[derive(Debug)]
pub(crate) struct Ledger {
    acks: Vec<Queued>,
    nacks: BTreeMap<Duration, Vec<Queued>>,
    extends: BTreeSet<Target>,
    /// By offset: the broker leases a message to one stream at a time, so
    /// the live stream holds at most one lease per offset.
    leases: HashMap<u64, Lease>,
    live_epoch: Option<u64>,
    last_epoch: u64,
    last_serial: u64,
    /// How long after receipt a lease is held (and extended) at most.
    max_extension: Duration,
}

impl Ledger {
    /// An empty ledger that holds each lease for up to `max_extension`
    /// after receipt.
    pub(crate) fn new(max_extension: Duration) -> Self {
        Self {
            acks: Vec::new(),
            nacks: BTreeMap::new(),
            extends: BTreeSet::new(),
            leases: HashMap::new(),
            live_epoch: None,
            last_epoch: 0,
            last_serial: 0,
            max_extension,
        }
    }

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
                let_go_at: now + self.max_extension,
            };
            if let Some(earlier) = self.leases.insert(offset, lease) {
                // Its lease is gone: an extension it queued is moot.
                self.extends.remove(&earlier.target);
            }
        }
        self.last_serial
    }

    /// The lease of delivery `serial` of `offset`, if it still holds one
    /// at `now`. A lease past its `max_extension` is let go here.
    fn held_lease(&mut self, offset: u64, serial: u64, now: Instant) -> Option<&Lease> {
        let lease = self.leases.get(&offset)?;
        if lease.serial != serial {
            return None;
        }
        if now >= lease.let_go_at {
            let target = lease.target.clone();
            self.leases.remove(&offset);
            self.extends.remove(&target);
            return None;
        }
        self.leases.get(&offset)
    }

    /// Queues the settlement of delivery `serial` of `offset`, named
    /// `target` on the wire, at `now`. Returns `reply` when the settlement
    /// is moot and nothing will be sent: a nack or extension of a lease
    /// this delivery no longer holds (the broker took it back when its
    /// stream ended or its extension ran out, or a newer delivery of the
    /// offset holds it now).
    pub(crate) fn settle(
        &mut self,
        offset: u64,
        serial: u64,
        target: &Target,
        settlement: Settlement,
        reply: Option<Reply>,
        now: Instant,
    ) -> Option<Reply> {
        let held = self
            .held_lease(offset, serial, now)
            .map(|lease| lease.let_go_at);
        match settlement {
            Settlement::Ack => {
                if held.is_some() {
                    self.leases.remove(&offset);
                    self.extends.remove(target);
                }
                self.acks.push(Queued::new(target, reply, None));
                None
            }
            // A lease that is gone was taken back by the broker (or belongs
            // to a newer delivery): nacking it would only disturb others.
            Settlement::Nack(_) | Settlement::Extend if held.is_none() => reply,
            Settlement::Nack(delay) => {
                self.leases.remove(&offset);
                self.extends.remove(target);
                let lease = self.live_epoch.zip(held);
                let queued = Queued::new(target, reply, lease);
                self.nacks.entry(delay).or_default().push(queued);
                None
            }
            Settlement::Extend => {
                self.extends.insert(target.clone());
                reply
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

    /// Takes every waiting settlement at `now`; with `extend_leases`, adds
    /// an extension of every lease held. Leases received `max_extension`
    /// ago or more are let go first: never extended or nacked again (they
    /// expire on the broker, which delivers the message again, possibly
    /// to another stream under a new ack_id).
    pub(crate) fn take_round(&mut self, extend_leases: bool, now: Instant) -> Round {
        let extends = &mut self.extends;
        self.leases.retain(|_, lease| {
            let held = now < lease.let_go_at;
            if !held {
                extends.remove(&lease.target);
            }
            held
        });
        let mut extends = std::mem::take(&mut self.extends);
        if extend_leases {
            extends.extend(self.leases.values().map(|lease| lease.target.clone()));
        }
        let mut moot = Vec::new();
        let mut nacks = Vec::new();
        for (delay, queued) in std::mem::take(&mut self.nacks) {
            let (live, gone): (Vec<Queued>, Vec<Queued>) = queued
                .into_iter()
                .partition(|q| self.nack_is_current(q, now));
            moot.extend(gone);
            if !live.is_empty() {
                nacks.push((delay, live));
            }
        }
        Round {
            acks: std::mem::take(&mut self.acks),
            nacks,
            extends: extends.into_iter().collect(),
            moot,
        }
    }

    /// Whether a nack still speaks for a lease its delivery holds.
    fn nack_is_current(&self, nack: &Queued, now: Instant) -> bool {
        nack.lease
            .is_none_or(|(epoch, let_go_at)| self.is_live(epoch) && now < let_go_at)
    }

    /// Puts back settlements whose sending failed and will be retried.
    /// Extensions come back only for leases still held.
    pub(crate) fn requeue(
        &mut self,
        acks: Vec<Queued>,
        nacks: Vec<(Duration, Vec<Queued>)>,
        extends: Vec<Target>,
    ) {
        self.acks.extend(acks);
        for (delay, queued) in nacks {
            self.nacks.entry(delay).or_default().extend(queued);
        }
        if !extends.is_empty() {
            let held: HashSet<&Target> = self.leases.values().map(|l| &l.target).collect();
            let still_held: Vec<Target> =
                extends.into_iter().filter(|t| held.contains(t)).collect();
            self.extends.extend(still_held);
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

    /// Queues a settlement made now, nobody waiting for it.
    fn settle(ledger: &mut Ledger, offset: u64, serial: u64, target: &Target, how: Settlement) {
        let reply = ledger.settle(offset, serial, target, how, None, Instant::now());
        assert!(reply.is_none());
    }

    /// The names of queued acks or nacks.
    fn names(queued: &[Queued]) -> Vec<Target> {
        queued.iter().map(|q| q.target.clone()).collect()
    }

    /// The nacks of a round, by delay, as names.
    fn nacks(round: &Round) -> Vec<(Duration, Vec<Target>)> {
        round
            .nacks
            .iter()
            .map(|(delay, queued)| (*delay, names(queued)))
            .collect()
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
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, epoch, 10, "");
        let (b, tb) = receive(&mut ledger, epoch, 11, "");
        let (c, tc) = receive(&mut ledger, epoch, 12, "");
        settle(&mut ledger, 10, a, &ta, Settlement::Ack);
        settle(&mut ledger, 11, b, &tb, Settlement::Nack(Duration::ZERO));
        settle(
            &mut ledger,
            12,
            c,
            &tc,
            Settlement::Nack(Duration::from_secs(5)),
        );
        assert_eq!(ledger.pending(), 3);
        assert_eq!(ledger.outstanding(), 0);
        let round = ledger.take_round(true, now);
        assert_eq!(names(&round.acks), [at(10)]);
        assert_eq!(
            nacks(&round),
            [
                (Duration::ZERO, vec![at(11)]),
                (Duration::from_secs(5), vec![at(12)])
            ]
        );
        assert!(round.extends.is_empty(), "settled leases are not extended");
        assert!(ledger.take_round(false, now).is_empty());
    }

    #[test]
    fn settlements_carry_the_ack_id_and_not_the_offset() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, epoch, 10, "ack-10");
        let (b, tb) = receive(&mut ledger, epoch, 11, "ack-11");
        let (c, tc) = receive(&mut ledger, epoch, 12, "ack-12");
        receive(&mut ledger, epoch, 13, "ack-13");
        settle(&mut ledger, 10, a, &ta, Settlement::Ack);
        settle(&mut ledger, 11, b, &tb, Settlement::Nack(Duration::ZERO));
        settle(&mut ledger, 12, c, &tc, Settlement::Extend);
        let round = ledger.take_round(true, now);
        assert_eq!(names(&round.acks), [id("ack-10")]);
        assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("ack-11")])]);
        assert_eq!(round.extends, [id("ack-12"), id("ack-13")]);
    }

    #[test]
    fn leases_are_let_go_past_the_maximum_extension() {
        let start = Instant::now();
        let mut ledger = Ledger::new(Duration::from_secs(10));
        let epoch = ledger.begin_epoch();
        let one = ledger.received(epoch, 1, id("one"), start);
        ledger.received(epoch, 2, at(2), start + Duration::from_secs(5));
        let round = ledger.take_round(true, start + Duration::from_secs(9));
        assert_eq!(round.extends, [id("one"), at(2)]);
        let late = start + Duration::from_secs(11);
        let round = ledger.take_round(true, late);
        assert_eq!(round.extends, [at(2)], "offset 1 is past its maximum");
        assert_eq!(ledger.outstanding(), 1, "its lease was let go");

        // Neither nacked nor extended any more; its ack still goes.
        for how in [Settlement::Extend, Settlement::Nack(Duration::ZERO)] {
            let (reply_tx, _reply_rx) = oneshot::channel();
            let moot = ledger.settle(1, one, &id("one"), how, Some(reply_tx), late);
            assert!(moot.is_some(), "{how:?} of a lease let go is moot");
        }
        assert_eq!(ledger.pending(), 0);
        let acked = ledger.settle(1, one, &id("one"), Settlement::Ack, None, late);
        assert!(acked.is_none());
        assert_eq!(names(&ledger.take_round(false, late).acks), [id("one")]);
    }

    #[test]
    fn a_lease_past_its_maximum_is_let_go_when_settled_between_ticks() {
        let start = Instant::now();
        let mut ledger = Ledger::new(Duration::from_secs(10));
        let epoch = ledger.begin_epoch();
        let serial = ledger.received(epoch, 1, id("one"), start);
        let late = start + Duration::from_secs(10);
        let how = Settlement::Nack(Duration::ZERO);
        assert!(
            ledger
                .settle(1, serial, &id("one"), how, None, late)
                .is_none()
        );
        assert_eq!(ledger.pending(), 0, "no nack for a lease let go");
        assert_eq!(ledger.outstanding(), 0);
    }

    #[test]
    fn a_queued_nack_whose_lease_was_let_go_is_moot() {
        let start = Instant::now();
        let mut ledger = Ledger::new(Duration::from_secs(10));
        let epoch = ledger.begin_epoch();
        let serial = ledger.received(epoch, 1, id("one"), start);
        let how = Settlement::Nack(Duration::ZERO);
        ledger.settle(1, serial, &id("one"), how, None, start);
        // Sent, failed, queued again; by the retry the lease is past.
        let round = ledger.take_round(false, start);
        ledger.requeue(Vec::new(), round.nacks, Vec::new());
        let round = ledger.take_round(false, start + Duration::from_secs(11));
        assert!(round.nacks.is_empty(), "{round:?}");
        assert_eq!(names(&round.moot), [id("one")]);
    }

    #[test]
    fn explicit_extension_only_for_a_held_lease() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (serial, target) = receive(&mut ledger, epoch, 7, "");
        settle(&mut ledger, 7, serial, &target, Settlement::Extend);
        settle(&mut ledger, 8, serial, &at(8), Settlement::Extend);
        assert_eq!(ledger.take_round(false, now).extends, [at(7)]);
    }

    #[test]
    fn deliveries_of_an_ended_stream_are_acked_but_never_nacked() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let old = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, old, 1, "");
        let (b, tb) = receive(&mut ledger, old, 2, "");
        ledger.end_epoch(old);
        assert!(!ledger.is_live(old));
        let new = ledger.begin_epoch();
        assert!(ledger.is_live(new));
        settle(&mut ledger, 1, a, &ta, Settlement::Ack);
        settle(&mut ledger, 2, b, &tb, Settlement::Nack(Duration::ZERO));
        settle(&mut ledger, 2, b, &tb, Settlement::Extend);
        let round = ledger.take_round(true, now);
        assert_eq!(names(&round.acks), [at(1)]);
        assert!(
            round.nacks.is_empty() && round.extends.is_empty(),
            "{round:?}"
        );
    }

    #[test]
    fn a_nack_queued_before_its_stream_ended_is_moot() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let old = ledger.begin_epoch();
        let (a, ta) = receive(&mut ledger, old, 1, "");
        settle(&mut ledger, 1, a, &ta, Settlement::Nack(Duration::ZERO));
        ledger.end_epoch(old);
        ledger.begin_epoch();
        let round = ledger.take_round(false, now);
        assert!(round.nacks.is_empty(), "{round:?}");
        assert_eq!(names(&round.moot), [at(1)]);
    }

    /// After a reconnect the stale delivery of an offset and the fresh one
    /// are both held: each is settled under its own ack_id, and only the
    /// fresh one's lease is extended.
    #[test]
    fn a_stale_and_a_fresh_delivery_of_one_offset_each_use_their_own_ack_id() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let old = ledger.begin_epoch();
        let (stale, stale_id) = receive(&mut ledger, old, 5, "old-5");
        ledger.end_epoch(old);
        let new = ledger.begin_epoch();
        let (fresh, fresh_id) = receive(&mut ledger, new, 5, "new-5");

        settle(&mut ledger, 5, stale, &stale_id, Settlement::Extend);
        settle(
            &mut ledger,
            5,
            stale,
            &stale_id,
            Settlement::Nack(Duration::ZERO),
        );
        let round = ledger.take_round(true, now);
        assert!(
            round.nacks.is_empty(),
            "the stale one holds no lease: {round:?}"
        );
        assert_eq!(round.extends, [id("new-5")]);

        // The work was done: the stale delivery's ack goes out, under its
        // own name, and the fresh lease is still the fresh one's.
        settle(&mut ledger, 5, stale, &stale_id, Settlement::Ack);
        let round = ledger.take_round(true, now);
        assert_eq!(names(&round.acks), [id("old-5")]);
        assert_eq!(round.extends, [id("new-5")]);

        settle(
            &mut ledger,
            5,
            fresh,
            &fresh_id,
            Settlement::Nack(Duration::ZERO),
        );
        let round = ledger.take_round(true, now);
        assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("new-5")])]);
        assert!(round.extends.is_empty(), "{round:?}");
    }

    /// A settlement queued by a delivery keeps that delivery's name even
    /// when a newer delivery of the offset arrives before it is sent.
    #[test]
    fn a_queued_nack_keeps_its_ack_id_when_the_offset_comes_again() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
        settle(
            &mut ledger,
            3,
            first,
            &first_id,
            Settlement::Nack(Duration::ZERO),
        );
        receive(&mut ledger, epoch, 3, "second");
        let round = ledger.take_round(true, now);
        assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("first")])]);
        assert_eq!(round.extends, [id("second")]);
    }

    #[test]
    fn an_extension_queued_by_a_superseded_delivery_is_dropped() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
        settle(&mut ledger, 3, first, &first_id, Settlement::Extend);
        receive(&mut ledger, epoch, 3, "second");
        assert!(ledger.take_round(false, now).is_empty());
        assert_eq!(ledger.take_round(true, now).extends, [id("second")]);
    }

    #[test]
    fn a_newer_delivery_owns_the_lease() {
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (first, target) = receive(&mut ledger, epoch, 3, "");
        let (second, _) = receive(&mut ledger, epoch, 3, "");
        settle(
            &mut ledger,
            3,
            first,
            &target,
            Settlement::Nack(Duration::ZERO),
        );
        assert_eq!(ledger.pending(), 0, "the stale delivery does not nack");
        settle(
            &mut ledger,
            3,
            second,
            &target,
            Settlement::Nack(Duration::ZERO),
        );
        assert_eq!(ledger.pending(), 1);
    }

    #[test]
    fn failed_settlements_are_requeued() {
        let now = Instant::now();
        let mut ledger = Ledger::new(MAX);
        let epoch = ledger.begin_epoch();
        let (serial, held) = receive(&mut ledger, epoch, 9, "held");
        let queued = |target: Target| Queued::new(&target, None, None);
        ledger.requeue(
            vec![queued(at(1)), queued(id("two"))],
            vec![(Duration::ZERO, vec![queued(at(3))])],
            vec![held.clone(), id("gone")],
        );
        let round = ledger.take_round(false, now);
        assert_eq!(names(&round.acks), [at(1), id("two")]);
        assert_eq!(nacks(&round), [(Duration::ZERO, vec![at(3)])]);
        assert_eq!(round.extends, [held], "only a held lease is extended again");
        assert!(serial > 0);
    }
}
