//! [`Ledger`]: the subscriber's bookkeeping, free of I/O — which deliveries
//! are leased to the live stream, which settlements (acks, rejects, nacks,
//! lease extensions) wait to be sent, and which leases are due for
//! automatic extension.
//!
//! Every delivery gets a serial number. A lease belongs to the newest
//! delivery of its offset on the live stream; only that delivery may nack
//! or extend it. Acks and rejects always go through (they are terminal
//! and idempotent; the broker ignores a stale ack_id). When a stream ends,
//! the broker takes its leases back, so the ledger forgets them and later
//! nacks of those deliveries are skipped.
//!
//! Rejects are grouped by their error text and nacks by their delay and
//! error text: each group goes in requests of its own, since a request
//! carries one `error` (and one `delay`).
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
//! the message again, under a new ack_id, by then). An ack or a reject
//! still goes.
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

/// What a nack asks for: when to deliver again, and why. Nacks that ask
/// the same go in the same requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Nack {
    /// Deliver again after this delay (zero: at once, or after the
    /// subscription's retry backoff).
    pub(crate) delay: Duration,
    /// Why the message failed (empty: not said), already cut to the
    /// broker's limit.
    pub(crate) error: String,
}

impl Nack {
    /// A nack after `delay` that gives no reason.
    pub(crate) fn after(delay: Duration) -> Self {
        Self {
            delay,
            error: String::new(),
        }
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Acknowledge: never deliver again.
    Ack,
    /// Never deliver again, for this reason (already cut to the broker's
    /// limit): dead-lettered at once, or acknowledged and counted when the
    /// subscription has no dead-letter policy.
    Reject(String),
    /// Give back, to be delivered again.
    Nack(Nack),
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

/// An ack, reject or nack waiting to be sent (or sent again).
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
    /// A settlement of `target` that has not been sent yet.
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

/// Settlements to send in one go, each naming its delivery. Also what of
/// a round is to be sent again ([`Ledger::requeue`]).
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Deliveries to acknowledge.
    pub(crate) acks: Vec<Queued>,
    /// Deliveries to reject, grouped by error text.
    pub(crate) rejects: Vec<(String, Vec<Queued>)>,
    /// Deliveries to give back, grouped by delay and error text.
    pub(crate) nacks: Vec<(Nack, Vec<Queued>)>,
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
        self.acks.is_empty()
            && self.rejects.is_empty()
            && self.nacks.is_empty()
            && self.extends.is_empty()
    }
}

/// Leases of the live stream and settlements waiting to be sent.
#[derive(Debug)]
pub(crate) struct Ledger {
    acks: Vec<Queued>,
    rejects: BTreeMap<String, Vec<Queued>>,
    nacks: BTreeMap<Nack, Vec<Queued>>,
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
            rejects: BTreeMap::new(),
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
            // Terminal: sent even for a lease that is gone (the work was
            // done, or judged hopeless; a stale ack_id is ignored).
            Settlement::Ack | Settlement::Reject(_) => {
                if held.is_some() {
                    self.leases.remove(&offset);
                    self.extends.remove(target);
                }
                let queued = Queued::new(target, reply, None);
                match settlement {
                    Settlement::Reject(error) => {
                        self.rejects.entry(error).or_default().push(queued);
                    }
                    _ => self.acks.push(queued),
                }
                None
            }
            // A lease that is gone was taken back by the broker (or belongs
            // to a newer delivery): nacking it would only disturb others.
            Settlement::Nack(_) | Settlement::Extend if held.is_none() => reply,
            Settlement::Nack(nack) => {
                self.leases.remove(&offset);
                self.extends.remove(target);
                let lease = self.live_epoch.zip(held);
                let queued = Queued::new(target, reply, lease);
                self.nacks.entry(nack).or_default().push(queued);
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
        let rejects: usize = self.rejects.values().map(Vec::len).sum();
        let nacks: usize = self.nacks.values().map(Vec::len).sum();
        self.acks.len() + rejects + nacks + self.extends.len()
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
        for (nack, queued) in std::mem::take(&mut self.nacks) {
            let (live, gone): (Vec<Queued>, Vec<Queued>) = queued
                .into_iter()
                .partition(|q| self.nack_is_current(q, now));
            moot.extend(gone);
            if !live.is_empty() {
                nacks.push((nack, live));
            }
        }
        Round {
            acks: std::mem::take(&mut self.acks),
            rejects: std::mem::take(&mut self.rejects).into_iter().collect(),
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

    /// Puts back the settlements of `retry` (what of a round failed and
    /// will be sent again). Extensions come back only for leases still
    /// held; nacks that became moot meanwhile are sorted out by the next
    /// [`take_round`](Self::take_round).
    pub(crate) fn requeue(&mut self, retry: Round) {
        let Round {
            acks,
            rejects,
            nacks,
            extends,
            moot,
        } = retry;
        debug_assert!(moot.is_empty(), "moot nacks are answered, not retried");
        self.acks.extend(acks);
        for (error, queued) in rejects {
            self.rejects.entry(error).or_default().extend(queued);
        }
        for (nack, queued) in nacks {
            self.nacks.entry(nack).or_default().extend(queued);
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
mod tests;
