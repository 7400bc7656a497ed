//! The publisher's bookkeeping, free of I/O: [`BatchQueue`] groups queued
//! messages into batches (by count, bytes and linger) and tracks which
//! batches are unfinished, so that `flush` waiters are answered once every
//! batch sealed before them has completed. A paused publisher fails the
//! whole queue at once ([`BatchQueue::fail_queued`]).
//!
//! This module never sends anything and never reads the clock itself: the
//! publisher task passes `now` in, which keeps it testable.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tidings::v1::PublishMessage;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::publisher::Permit;

/// One queued message and where its offset (or error) goes.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The message, ready for the wire.
    pub(crate) message: PublishMessage,
    /// Its share of a request, in bytes ([`wire_size`]).
    pub(crate) size: usize,
    /// The caller's end of its `PublishFuture`.
    pub(crate) reply: oneshot::Sender<Result<u64>>,
    /// Its room in the publisher's queue, given back when it is dropped
    /// (after the answer).
    #[expect(
        dead_code,
        reason = "held only for its drop, which gives the room back"
    )]
    pub(crate) permit: Permit,
}

impl Pending {
    /// Answers the message's future and gives its room back.
    pub(crate) fn answer(self, result: Result<u64>) {
        let _ = self.reply.send(result);
    }
}

/// The share of a `Publish` request that `message` takes, in bytes.
pub(crate) fn wire_size(message: &PublishMessage) -> usize {
    let len = prost::Message::encoded_len(message);
    // Field tag + length prefix + the message itself.
    1 + prost::length_delimiter_len(len) + len
}

/// A sealed batch: its sequence number and its messages, in queue order.
pub(crate) type Batch = (u64, Vec<Pending>);

/// How batches are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Most messages in one batch (at least 1).
    pub(crate) max_messages: usize,
    /// Most bytes in one batch; a single larger message goes alone.
    pub(crate) max_bytes: usize,
    /// How long the first message of a batch waits for company.
    pub(crate) linger: Duration,
}

/// A `flush` (or `close`) waiting for every batch up to `upto`.
#[derive(Debug)]
struct Waiter {
    upto: Option<u64>,
    first_error: Option<Error>,
    reply: oneshot::Sender<Result<()>>,
}

/// Open batch, sealed batches awaiting a send slot, unfinished batches and
/// flush waiters.
#[derive(Debug)]
pub(crate) struct BatchQueue {
    limits: BatchLimits,
    open: Vec<Pending>,
    open_bytes: usize,
    open_since: Option<Instant>,
    sealed: VecDeque<Batch>,
    next_seq: u64,
    unfinished: BTreeSet<u64>,
    waiters: Vec<Waiter>,
}

impl BatchQueue {
    /// An empty queue cutting batches by `limits`.
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            sealed: VecDeque::new(),
            next_seq: 0,
            unfinished: BTreeSet::new(),
            waiters: Vec::new(),
        }
    }

    /// Adds a message to the open batch, sealing the batch before it when
    /// the message would not fit, and after it when the batch is full.
    pub(crate) fn push(&mut self, pending: Pending, now: Instant) {
        if !self.open.is_empty() && self.open_bytes + pending.size > self.limits.max_bytes {
            self.seal();
        }
        self.open_bytes += pending.size;
        self.open.push(pending);
        self.open_since.get_or_insert(now);
        if self.open.len() >= self.limits.max_messages || self.open_bytes >= self.limits.max_bytes {
            self.seal();
        }
    }

    /// Seals the open batch, if it holds anything.
    pub(crate) fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unfinished.insert(seq);
        self.sealed.push_back((seq, std::mem::take(&mut self.open)));
        self.open_bytes = 0;
        self.open_since = None;
    }

    /// When the open batch's linger ends, if it holds anything.
    pub(crate) fn linger_deadline(&self) -> Option<Instant> {
        self.open_since.map(|since| since + self.limits.linger)
    }

    /// Seals the open batch when its linger has ended by `now`.
    pub(crate) fn seal_if_due(&mut self, now: Instant) {
        if self
            .linger_deadline()
            .is_some_and(|deadline| deadline <= now)
        {
            self.seal();
        }
    }

    /// Whether a sealed batch awaits a send slot.
    pub(crate) fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// The oldest sealed batch, to be sent.
    pub(crate) fn pop_sealed(&mut self) -> Option<Batch> {
        self.sealed.pop_front()
    }

    /// Whether nothing is open, sealed or unfinished.
    pub(crate) fn is_idle(&self) -> bool {
        self.open.is_empty() && self.unfinished.is_empty()
    }

    /// Registers a waiter for every batch sealed so far (call [`seal`]
    /// first to include the open batch). Answers it at once when they have
    /// all completed.
    ///
    /// [`seal`]: BatchQueue::seal
    pub(crate) fn wait(&mut self, reply: oneshot::Sender<Result<()>>) {
        let upto = self.next_seq.checked_sub(1);
        let waiter = Waiter {
            upto,
            first_error: None,
            reply,
        };
        if self.is_done(&waiter) {
            let _ = waiter.reply.send(Ok(()));
        } else {
            self.waiters.push(waiter);
        }
    }

    /// Fails every message not yet sent (the open batch and the sealed
    /// ones) with a copy of `error`, and completes their batches.
    pub(crate) fn fail_queued(&mut self, error: &Error) {
        self.seal();
        while let Some((seq, batch)) = self.sealed.pop_front() {
            for pending in batch {
                pending.answer(Err(error.duplicate()));
            }
            self.completed(seq, Some(error));
        }
    }

    /// Records that batch `seq` completed, with `error` when it failed, and
    /// answers every waiter that no longer waits for anything.
    pub(crate) fn completed(&mut self, seq: u64, error: Option<&Error>) {
        self.unfinished.remove(&seq);
        let waiters = std::mem::take(&mut self.waiters);
        for mut waiter in waiters {
            if let Some(error) = error
                && waiter.upto.is_some_and(|upto| seq <= upto)
                && waiter.first_error.is_none()
            {
                waiter.first_error = Some(error.duplicate());
            }
            if self.is_done(&waiter) {
                let result = waiter.first_error.map_or(Ok(()), Err);
                let _ = waiter.reply.send(result);
            } else {
                self.waiters.push(waiter);
            }
        }
    }

    fn is_done(&self, waiter: &Waiter) -> bool {
        match (waiter.upto, self.unfinished.first()) {
            (Some(upto), Some(&oldest)) => oldest > upto,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::Room;

    fn limits(max_messages: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_messages,
            max_bytes,
            linger: Duration::from_millis(5),
        }
    }

    fn pending(payload: &str) -> (Pending, oneshot::Receiver<Result<u64>>) {
        let (reply, rx) = oneshot::channel();
        let message = PublishMessage {
            payload: payload.to_owned().into(),
            ..Default::default()
        };
        let size = wire_size(&message);
        let room = Room::new(usize::MAX, usize::MAX);
        let permit = room.try_take(size).expect("an unbounded room").permit;
        let pending = Pending {
            message,
            size,
            reply,
            permit,
        };
        (pending, rx)
    }

    fn push(queue: &mut BatchQueue, payload: &str, now: Instant) {
        queue.push(pending(payload).0, now);
    }

    fn payloads(batch: &Batch) -> Vec<String> {
        batch
            .1
            .iter()
            .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
            .collect()
    }

    #[test]
    fn size_counts_the_encoded_message_and_its_framing() {
        let (p, _rx) = pending("hello");
        // payload field: tag + length + 5 bytes = 7; framing: tag + length = 2.
        assert_eq!(p.size, 9);
    }

    #[test]
    fn batches_are_cut_by_count_in_order() {
        let now = Instant::now();
        let mut queue = BatchQueue::new(limits(2, 1 << 20));
        for payload in ["a", "b", "c"] {
            push(&mut queue, payload, now);
        }
        let first = queue.pop_sealed().expect("a full batch is sealed");
        assert_eq!(
            (first.0, payloads(&first)),
            (0, vec!["a".into(), "b".into()])
        );
        assert!(!queue.has_sealed(), "c stays open");
        queue.seal();
        let second = queue.pop_sealed().expect("sealed on demand");
        assert_eq!((second.0, payloads(&second)), (1, vec!["c".into()]));
    }

    #[test]
    fn batches_are_cut_by_bytes_and_a_big_message_goes_alone() {
        let now = Instant::now();
        let mut queue = BatchQueue::new(limits(100, 20));
        push(&mut queue, "0123456789", now); // 14 bytes
        push(&mut queue, "0123456789", now); // would make 28: seals the first
        push(&mut queue, &"x".repeat(50), now); // too big for any batch
        let sizes: Vec<usize> = std::iter::from_fn(|| queue.pop_sealed())
            .map(|b| b.1.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert!(queue.linger_deadline().is_none(), "nothing left open");
    }

    #[test]
    fn the_open_batch_is_sealed_when_its_linger_ends() {
        let start = Instant::now();
        let mut queue = BatchQueue::new(limits(100, 1 << 20));
        push(&mut queue, "a", start);
        push(&mut queue, "b", start + Duration::from_millis(3));
        assert_eq!(
            queue.linger_deadline(),
            Some(start + Duration::from_millis(5)),
            "the linger counts from the first message"
        );
        queue.seal_if_due(start + Duration::from_millis(4));
        assert!(!queue.has_sealed());
        queue.seal_if_due(start + Duration::from_millis(5));
        assert_eq!(queue.pop_sealed().map(|b| b.1.len()), Some(2));
    }

    #[test]
    fn flush_waits_for_every_earlier_batch_and_reports_the_first_error() {
        let now = Instant::now();
        let mut queue = BatchQueue::new(limits(1, 1 << 20));
        push(&mut queue, "a", now); // batch 0
        push(&mut queue, "b", now); // batch 1
        let (reply, mut flushed) = oneshot::channel();
        queue.wait(reply);
        push(&mut queue, "c", now); // batch 2: not waited for

        queue.completed(1, Some(&Error::from(tonic::Status::not_found("no topic"))));
        assert!(flushed.try_recv().is_err(), "batch 0 is still unfinished");
        queue.completed(0, None);
        let result = flushed.try_recv().expect("answered once 0 and 1 completed");
        assert_eq!(result.map_err(|e| e.code()), Err(tonic::Code::NotFound));
        assert!(!queue.is_idle(), "batch 2 is unfinished");
        queue.completed(2, None);
        assert!(queue.is_idle());
    }

    #[test]
    fn failing_the_queue_answers_every_unsent_message_and_the_flush() {
        let now = Instant::now();
        let mut queue = BatchQueue::new(limits(2, 1 << 20));
        let mut answers = Vec::new();
        for payload in ["a", "b", "c", "d", "e"] {
            let (pending, answer) = pending(payload);
            queue.push(pending, now);
            answers.push(answer);
        }
        let in_flight = queue.pop_sealed().expect("a, b");
        let (reply, mut flushed) = oneshot::channel();
        queue.seal();
        queue.wait(reply);

        let cause = Error::from(tonic::Status::internal("disk full"));
        queue.completed(in_flight.0, Some(&cause));
        queue.fail_queued(&Error::Closed);
        assert!(queue.is_idle(), "nothing is left");
        for mut answer in answers.drain(2..) {
            assert!(matches!(answer.try_recv(), Ok(Err(Error::Closed))));
        }
        let flushed = flushed.try_recv().expect("answered");
        assert_eq!(
            flushed.map_err(|e| e.code()),
            Err(tonic::Code::Internal),
            "the flush reports the first failure"
        );
    }

    #[test]
    fn flush_with_nothing_queued_returns_at_once() {
        let mut queue = BatchQueue::new(limits(10, 1 << 20));
        let (reply, mut flushed) = oneshot::channel();
        queue.wait(reply);
        assert!(matches!(flushed.try_recv(), Ok(Ok(()))));
    }
}
