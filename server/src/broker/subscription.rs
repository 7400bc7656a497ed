//! A live subscription and its lease book.
//!
//! The [`LeaseBook`] is plain synchronous state, tested on its own with
//! explicit instants: which offsets are acknowledged ([`AckState`], the part
//! that is persisted), which are leased to which stream until when, which are
//! due again, and which are waiting out a nack delay. It does no I/O and
//! knows nothing of storage or transport.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::topic::Topic;
use super::{BrokerError, BrokerResult, SubscriptionInfo};
use crate::names::SubscriptionName;
use crate::offsets::{AckState, Offset};
use crate::storage::{SubscriptionId, SubscriptionRecord};
use std::sync::Arc;

/// Identifies one open stream within its subscription.
pub(super) type StreamId = u64;

/// A message leased to a stream.
#[derive(Debug, Clone, Copy)]
struct Lease {
    stream: StreamId,
    deadline: Instant,
    attempt: u32,
}

/// The delivery state of one subscription.
#[derive(Debug, Default)]
pub(super) struct LeaseBook {
    acks: AckState,
    /// The lowest offset never delivered since the broker started.
    next_new: Offset,
    /// Offsets due for redelivery, with their delivery count so far.
    ready: BTreeMap<Offset, u32>,
    /// Nacked offsets waiting for their delay: (due, offset) -> count.
    delayed: BTreeMap<(Instant, Offset), u32>,
    leases: HashMap<Offset, Lease>,
    /// The leases ordered by deadline.
    deadlines: BTreeSet<(Instant, Offset)>,
    /// Leases held per open stream.
    streams: HashMap<StreamId, usize>,
    next_stream: StreamId,
}

impl LeaseBook {
    pub(super) fn new(acks: AckState) -> Self {
        Self {
            next_new: acks.floor,
            acks,
            ..Self::default()
        }
    }

    pub(super) fn open_stream(&mut self) -> StreamId {
        self.next_stream += 1;
        self.streams.insert(self.next_stream, 0);
        self.next_stream
    }

    /// Ends a stream that broke or was closed by its client: everything it
    /// held is due again at once.
    pub(super) fn close_stream(&mut self, stream: StreamId) {
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
            self.unlease_to_ready(offset);
        }
    }

    /// Ends a stream that finished its work (it delivered all it was asked
    /// for): its client is still there to settle what it received, so those
    /// leases run to their deadlines like any other.
    pub(super) fn finish_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
    }

    pub(super) fn outstanding(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).copied().unwrap_or(0)
    }

    /// Leases up to `max` deliverable offsets to `stream` until
    /// `now + deadline`: first those due again (lowest first), then new ones
    /// below `head` in offset order. Returns (offset, delivery attempt).
    pub(super) fn claim(
        &mut self,
        stream: StreamId,
        max: usize,
        head: Offset,
        now: Instant,
        deadline: Duration,
    ) -> Vec<(Offset, u32)> {
        self.reap(now);
        let mut claimed = Vec::new();
        while claimed.len() < max {
            let Some((offset, count)) = self.ready.pop_first() else {
                break;
            };
            claimed.push((offset, count + 1));
        }
        self.next_new = self.next_new.max(self.acks.floor);
        while claimed.len() < max && self.next_new < head {
            let offset = self.next_new;
            self.next_new += 1;
            if !self.acks.is_acked(offset) {
                claimed.push((offset, 1));
            }
        }
        let until = now + deadline;
        for &(offset, attempt) in &claimed {
            self.lease(offset, stream, until, attempt);
        }
        claimed
    }

    fn lease(&mut self, offset: Offset, stream: StreamId, deadline: Instant, attempt: u32) {
        self.leases.insert(
            offset,
            Lease {
                stream,
                deadline,
                attempt,
            },
        );
        self.deadlines.insert((deadline, offset));
        *self.streams.entry(stream).or_default() += 1;
    }

    /// Removes a lease, returning it.
    fn unlease(&mut self, offset: Offset) -> Option<Lease> {
        let lease = self.leases.remove(&offset)?;
        self.deadlines.remove(&(lease.deadline, offset));
        if let Some(held) = self.streams.get_mut(&lease.stream) {
            *held = held.saturating_sub(1);
        }
        Some(lease)
    }

    fn unlease_to_ready(&mut self, offset: Offset) {
        if let Some(lease) = self.unlease(offset) {
            self.ready.insert(offset, lease.attempt);
        }
    }

    /// Moves expired leases and nacks whose delay is over to `ready`.
    /// Returns whether anything became due.
    pub(super) fn reap(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.unlease_to_ready(offset);
            moved = true;
        }
        while let Some((&(due, offset), &count)) = self.delayed.first_key_value() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, offset));
            self.ready.insert(offset, count);
            moved = true;
        }
        moved
    }

    /// When the next lease expires or the next delayed nack is due.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let lease = self.deadlines.first().map(|&(at, _)| at);
        let delayed = self.delayed.first_key_value().map(|(&(at, _), _)| at);
        match (lease, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acknowledges offsets below `head`. Checks every offset before
    /// changing anything. Returns the first offending offset on failure.
    pub(super) fn ack(&mut self, offsets: &[Offset], head: Offset) -> Result<(), Offset> {
        if let Some(&bad) = offsets.iter().find(|&&offset| offset >= head) {
            return Err(bad);
        }
        for &offset in offsets {
            // An offset is leased, ready or delayed, never two of these:
            // scan the delayed nacks only when it was neither of the others.
            if self.acks.ack(offset)
                && self.unlease(offset).is_none()
                && self.ready.remove(&offset).is_none()
                && !self.delayed.is_empty()
            {
                self.delayed.retain(|&(_, o), _| o != offset);
            }
        }
        Ok(())
    }

    /// Gives leased offsets back, due again after `delay`. Offsets not in
    /// flight are ignored.
    pub(super) fn nack(&mut self, offsets: &[Offset], delay: Duration, now: Instant) {
        for &offset in offsets {
            let Some(lease) = self.unlease(offset) else {
                continue;
            };
            if delay.is_zero() {
                self.ready.insert(offset, lease.attempt);
            } else {
                self.delayed.insert((now + delay, offset), lease.attempt);
            }
        }
    }

    /// Moves the deadline of leased offsets to `now + deadline`; a zero
    /// deadline gives the lease up. Offsets not in flight are ignored.
    pub(super) fn modify_deadline(&mut self, offsets: &[Offset], deadline: Duration, now: Instant) {
        if deadline.is_zero() {
            self.nack(offsets, Duration::ZERO, now);
            return;
        }
        for &offset in offsets {
            if let Some(lease) = self.leases.get_mut(&offset) {
                self.deadlines.remove(&(lease.deadline, offset));
                lease.deadline = now + deadline;
                self.deadlines.insert((lease.deadline, offset));
            }
        }
    }

    pub(super) fn ack_state(&self) -> &AckState {
        &self.acks
    }

    pub(super) fn in_flight(&self) -> usize {
        self.leases.len()
    }

    pub(super) fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

/// A live subscription: its configuration, its lease book, and the signals
/// its streams wait on.
pub(super) struct Subscription {
    pub(super) id: SubscriptionId,
    pub(super) name: SubscriptionName,
    pub(super) topic: Arc<Topic>,
    pub(super) ack_deadline: Duration,
    pub(super) created: SystemTime,
    book: Mutex<LeaseBook>,
    /// Woken when messages become due again or a stream gains room.
    pub(super) wake: Notify,
    /// Cancelled when the subscription or its topic is deleted.
    pub(super) deleted: CancellationToken,
}

impl Subscription {
    pub(super) fn new(record: &SubscriptionRecord, topic: Arc<Topic>, acks: AckState) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            deleted: topic.deleted.child_token(),
            topic,
            ack_deadline: record.ack_deadline,
            created: record.created,
            book: Mutex::new(LeaseBook::new(acks)),
            wake: Notify::new(),
        }
    }

    /// Locks the lease book. Critical sections are short and never await.
    pub(super) fn book(&self) -> MutexGuard<'_, LeaseBook> {
        // A panic while holding the lock leaves the book consistent enough
        // to go on: every method restores its invariants before returning.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn ack(&self, offsets: &[Offset]) -> BrokerResult<()> {
        let head = self.topic.head();
        self.book()
            .ack(offsets, head)
            .map_err(|offset| BrokerError::OffsetNotPublished {
                topic: self.topic.name.clone(),
                offset,
                next_offset: head,
            })?;
        self.wake.notify_waiters();
        Ok(())
    }

    pub(super) fn nack(&self, offsets: &[Offset], delay: Duration) {
        self.book().nack(offsets, delay, Instant::now());
        self.wake.notify_waiters();
    }

    pub(super) fn modify_deadline(&self, offsets: &[Offset], deadline: Duration) {
        self.book()
            .modify_deadline(offsets, deadline, Instant::now());
        self.wake.notify_waiters();
    }

    pub(super) fn ack_snapshot(&self) -> AckState {
        self.book().ack_state().clone()
    }

    pub(super) fn info(&self) -> SubscriptionInfo {
        let head = self.topic.head();
        let mut book = self.book();
        // Leases of finished streams expire with nobody waiting on them.
        book.reap(Instant::now());
        SubscriptionInfo {
            name: self.name.clone(),
            topic: self.topic.name.clone(),
            ack_deadline: self.ack_deadline,
            backlog: book.ack_state().unacked_below(head),
            in_flight: book.in_flight() as u64,
            ack_floor: book.ack_state().floor,
            open_streams: u32::try_from(book.open_streams()).unwrap_or(u32::MAX),
            created: self.created,
        }
    }

    /// The error a stream ends with once `deleted` fired.
    pub(super) fn deleted_error(&self) -> BrokerError {
        if self.topic.deleted.is_cancelled() {
            BrokerError::TopicDeleted(self.topic.name.clone())
        } else {
            BrokerError::SubscriptionDeleted(self.name.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn offsets(claimed: &[(Offset, u32)]) -> Vec<Offset> {
        claimed.iter().map(|&(o, _)| o).collect()
    }

    #[test]
    fn new_messages_are_claimed_in_offset_order_up_to_max() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        let now = Instant::now();
        let first = book.claim(s, 3, 10, now, DEADLINE);
        assert_eq!(first, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(offsets(&book.claim(s, 3, 4, now, DEADLINE)), vec![3]);
        assert!(book.claim(s, 3, 4, now, DEADLINE).is_empty());
        assert_eq!(book.outstanding(s), 4);
    }

    #[test]
    fn each_message_goes_to_one_stream_at_a_time() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let (a, b) = (book.open_stream(), book.open_stream());
        let now = Instant::now();
        let to_a = offsets(&book.claim(a, 2, 4, now, DEADLINE));
        let to_b = offsets(&book.claim(b, 5, 4, now, DEADLINE));
        assert_eq!(to_a, vec![0, 1]);
        assert_eq!(to_b, vec![2, 3]);
    }

    #[test]
    fn expired_lease_is_redelivered_with_next_attempt() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        let now = Instant::now();
        book.claim(s, 1, 1, now, DEADLINE);
        assert_eq!(book.next_wakeup(), Some(now + DEADLINE));
        assert!(book.claim(s, 1, 1, now + DEADLINE / 2, DEADLINE).is_empty());
        let again = book.claim(s, 1, 1, now + DEADLINE, DEADLINE);
        assert_eq!(again, vec![(0, 2)]);
    }

    #[test]
    fn extended_lease_is_not_redelivered_at_the_old_deadline() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        let now = Instant::now();
        book.claim(s, 1, 1, now, DEADLINE);
        book.modify_deadline(&[0], DEADLINE * 3, now);
        assert!(book.claim(s, 1, 1, now + DEADLINE * 2, DEADLINE).is_empty());
        assert_eq!(
            book.claim(s, 1, 1, now + DEADLINE * 3, DEADLINE),
            vec![(0, 2)]
        );
    }

    #[test]
    fn nack_with_delay_waits_and_zero_deadline_gives_up_at_once() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        let now = Instant::now();
        book.claim(s, 2, 2, now, DEADLINE);
        book.nack(&[0], Duration::from_secs(5), now);
        book.modify_deadline(&[1], Duration::ZERO, now);
        assert_eq!(book.claim(s, 5, 2, now, DEADLINE), vec![(1, 2)]);
        assert_eq!(book.next_wakeup(), Some(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(5);
        assert_eq!(book.claim(s, 5, 2, later, DEADLINE), vec![(0, 2)]);
    }

    #[test]
    fn closing_a_stream_makes_its_messages_due_for_others() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let (a, b) = (book.open_stream(), book.open_stream());
        let now = Instant::now();
        book.claim(a, 2, 2, now, DEADLINE);
        book.close_stream(a);
        assert_eq!(book.in_flight(), 0);
        assert_eq!(book.claim(b, 5, 2, now, DEADLINE), vec![(0, 2), (1, 2)]);
    }

    #[test]
    fn a_finished_stream_keeps_its_leases_until_their_deadline() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let (done, other) = (book.open_stream(), book.open_stream());
        let now = Instant::now();
        book.claim(done, 2, 2, now, DEADLINE);
        book.finish_stream(done);
        assert_eq!(book.in_flight(), 2);
        assert!(book.claim(other, 5, 2, now, DEADLINE).is_empty());
        book.ack(&[0], 2).unwrap();
        assert_eq!(
            book.claim(other, 5, 2, now + DEADLINE, DEADLINE),
            vec![(1, 2)]
        );
    }

    #[test]
    fn acks_free_capacity_advance_the_floor_and_are_never_redelivered() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        let now = Instant::now();
        book.claim(s, 3, 3, now, DEADLINE);
        book.ack(&[0, 2], 3).unwrap();
        assert_eq!(book.outstanding(s), 1);
        assert_eq!(book.ack_state().floor, 1);
        let later = now + DEADLINE;
        assert_eq!(book.claim(s, 5, 3, later, DEADLINE), vec![(1, 2)]);
    }

    #[test]
    fn ack_of_unpublished_offset_changes_nothing() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        assert_eq!(book.ack(&[1, 7], 5), Err(7));
        assert!(!book.ack_state().is_acked(1));
    }

    #[test]
    fn messages_acked_before_delivery_are_skipped() {
        let mut book = LeaseBook::new(AckState::starting_at(0));
        let s = book.open_stream();
        book.ack(&[1], 3).unwrap();
        let now = Instant::now();
        assert_eq!(offsets(&book.claim(s, 5, 3, now, DEADLINE)), vec![0, 2]);
    }

    #[test]
    fn a_restored_book_starts_at_the_floor_and_skips_acked() {
        let mut acks = AckState::starting_at(4);
        acks.ack(6);
        let mut book = LeaseBook::new(acks);
        let s = book.open_stream();
        let now = Instant::now();
        assert_eq!(offsets(&book.claim(s, 10, 8, now, DEADLINE)), vec![4, 5, 7]);
    }
}
