//! [`Delivery`]: one message handed out by a [`Subscriber`](crate::Subscriber),
//! with the means to settle it.
//!
//! Settling only queues the settlement with the subscriber's settlement
//! task (see `settle.rs`), which batches and sends it; nothing here does
//! I/O or blocks. The awaitable forms return a [`SettleFuture`] that the
//! task answers.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tidings::v1::ReceivedMessage;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::lease::{Nack, Settlement, Target};
use crate::settle::Settle;

/// The longest delay the broker accepts for a nack.
pub const MAX_NACK_DELAY: Duration = Duration::from_secs(600);

/// The longest error text the broker accepts with a reject or a nack, in
/// bytes. [`Delivery::reject`] and [`Delivery::nack_with_error`] cut longer
/// texts to it (on a character boundary) rather than have the broker
/// refuse the whole batch.
pub const MAX_ERROR_BYTES: usize = 1024;

/// One delivered message. Settle it with [`ack`](Delivery::ack),
/// [`nack`](Delivery::nack) or [`reject`](Delivery::reject); dropping it
/// unsettled nacks it, so it is delivered again at once.
///
/// While a delivery is unsettled, its subscriber keeps its lease alive
/// (up to the subscriber's `max_lease_extension`), so slow processing does
/// not cause a redelivery. Settlements are sent in batches within the
/// subscriber's `ack_flush_interval`; they keep being sent after the
/// [`Subscriber`](crate::Subscriber) itself is dropped, and
/// [`Subscriber::close`](crate::Subscriber::close) waits for them.
pub struct Delivery {
    offset: u64,
    payload: Bytes,
    key: String,
    attributes: HashMap<String, String>,
    id: String,
    publish_time: Option<SystemTime>,
    delivery_attempt: u32,
    /// How settlements name this delivery: its ack_id, or its offset.
    target: Target,
    epoch: u64,
    serial: u64,
    settle: Arc<Settle>,
    settled: bool,
    /// Its size for flow control: payload, key and attributes.
    size: u64,
    /// Whether flow control let it through (it counts as outstanding).
    admitted: bool,
    /// Whether it was handed to the application (it counts as held).
    handed_out: bool,
}

impl Delivery {
    /// Wraps a received message of the stream of `epoch`, recording it with
    /// the settlement task.
    pub(crate) fn new(message: ReceivedMessage, epoch: u64, settle: Arc<Settle>) -> Self {
        let target = Target::new(message.offset, message.ack_id);
        let serial = settle.received(epoch, message.offset, target.clone());
        let attributes_size: usize = message
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let size = message.payload.len() + message.key.len() + attributes_size;
        Self {
            offset: message.offset,
            payload: message.payload,
            key: message.key,
            attributes: message.attributes,
            id: message.id,
            publish_time: message
                .publish_time
                .and_then(|t| SystemTime::try_from(t).ok()),
            delivery_attempt: message.delivery_attempt,
            target,
            epoch,
            serial,
            settle,
            settled: false,
            size: u64::try_from(size).unwrap_or(u64::MAX),
            admitted: false,
            handed_out: false,
        }
    }

    /// Its size for flow control: payload, key and attributes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Counts this delivery as outstanding: flow control let it through.
    pub(crate) fn admit(&mut self) {
        self.settle.admit(self.size);
        self.admitted = true;
    }

    /// Counts this delivery as handed to the application, if the stream it
    /// came on is still open; returns whether it is. A delivery of an
    /// ended stream was taken back by the broker and comes again.
    pub(crate) fn hand_out(&mut self) -> bool {
        self.handed_out = self.settle.hand_out(self.epoch);
        self.handed_out
    }

    /// The message's offset in its topic.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The message body, as published.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The key, as published (empty when none).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The attributes, as published.
    pub fn attributes(&self) -> &HashMap<String, String> {
        &self.attributes
    }

    /// The id it was published with ([`Message::id`](crate::Message::id));
    /// empty when none.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the broker stored the message.
    pub fn publish_time(&self) -> Option<SystemTime> {
        self.publish_time
    }

    /// How many times the message has been delivered on this subscription,
    /// this delivery included: 1 on the first (counts restart with the
    /// broker).
    pub fn delivery_attempt(&self) -> u32 {
        self.delivery_attempt
    }

    /// The broker's name for this one delivery (the message and the lease
    /// this subscriber holds on it): opaque, and empty from a broker that
    /// gives none.
    ///
    /// Settling names the delivery by its `ack_id` when it has one, by its
    /// offset only when it has none. By `ack_id`, a delivery whose lease
    /// has moved on (it expired, or its stream broke and the message went
    /// to another) cannot nack or extend the lease another stream now
    /// holds; its ack still counts while the message is unacknowledged.
    pub fn ack_id(&self) -> &str {
        self.target.ack_id()
    }

    /// The subscription it was delivered on.
    pub fn subscription(&self) -> &str {
        self.settle.subscription()
    }

    /// Acknowledges the message: it is never delivered again on this
    /// subscription. Fire and forget: sent within the flush interval and
    /// retried on transient failures; a failure is reported by the next
    /// [`Subscriber::flush`](crate::Subscriber::flush) or
    /// [`close`](crate::Subscriber::close). To wait for the broker's
    /// answer, use [`ack_with_response`](Self::ack_with_response).
    pub fn ack(mut self) {
        self.finish(Settlement::Ack, None);
    }

    /// Acknowledges the message, like [`ack`](Self::ack), and returns a
    /// future that resolves once the broker has stored the ack.
    ///
    /// The ack is queued at once, whether or not the future is awaited.
    ///
    /// # Errors
    /// The future resolves to [`Error::Status`] when the broker refused the
    /// ack (for example `NOT_FOUND`: the subscription was deleted), or
    /// [`Error::GaveUp`] when the broker could not be reached (or did not
    /// answer in time) and the subscriber was closing. Transient failures
    /// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, the
    /// client's request timeout) are retried with backoff before that.
    /// An error handed to this future is not reported again by
    /// [`Subscriber::flush`](crate::Subscriber::flush); if the future is
    /// dropped unawaited, it is.
    pub fn ack_with_response(mut self) -> SettleFuture {
        self.finish_awaitable(Settlement::Ack)
    }

    /// Rejects the message: it cannot be processed and is never delivered
    /// again on this subscription. With a dead-letter policy the broker
    /// moves it to the dead-letter topic at once (reason `rejected`, with
    /// `error` as its `tidings.last_error` attribute); without one it is
    /// acknowledged and counted in the subscription's `rejected`.
    ///
    /// `error` says why, for whoever reads the dead letter; an empty one
    /// gives no reason. It is cut to [`MAX_ERROR_BYTES`], on a character
    /// boundary.
    ///
    /// Like [`ack`](Self::ack), a reject is final: the lease is no longer
    /// extended, it is sent (by ack_id) even when the lease has moved on,
    /// it is batched with other rejects of the same error text, retried on
    /// transient failures, and a failure is reported by the next
    /// [`Subscriber::flush`](crate::Subscriber::flush) or
    /// [`close`](crate::Subscriber::close).
    pub fn reject(mut self, error: impl Into<String>) {
        self.finish(Settlement::Reject(error_text(error.into())), None);
    }

    /// Rejects the message, like [`reject`](Self::reject), and returns a
    /// future that resolves once the broker has stored the reject.
    ///
    /// # Errors
    /// As for [`ack_with_response`](Self::ack_with_response).
    pub fn reject_with_response(mut self, error: impl Into<String>) -> SettleFuture {
        self.finish_awaitable(Settlement::Reject(error_text(error.into())))
    }

    /// Gives the message back, to be delivered again: at once, or after
    /// the subscription's retry policy's backoff when it has one.
    pub fn nack(mut self) {
        self.finish(Settlement::Nack(Nack::after(Duration::ZERO)), None);
    }

    /// Gives the message back, like [`nack`](Self::nack), saying why it
    /// failed: if the message is later dead-lettered after too many
    /// failed deliveries, the last such `error` is its `tidings.last_error`
    /// attribute. It is cut to [`MAX_ERROR_BYTES`], on a character
    /// boundary.
    pub fn nack_with_error(mut self, error: impl Into<String>) {
        let nack = Nack {
            delay: Duration::ZERO,
            error: error_text(error.into()),
        };
        self.finish(Settlement::Nack(nack), None);
    }

    /// Gives the message back, like [`nack`](Self::nack), and returns a
    /// future that resolves once the broker has it back: once it answered
    /// the nack, or at once when the nack is moot because this delivery no
    /// longer holds its lease (the stream it came on ended, or its
    /// `max_lease_extension` passed), so the broker took it back already.
    ///
    /// # Errors
    /// As for [`ack_with_response`](Self::ack_with_response).
    pub fn nack_with_response(mut self) -> SettleFuture {
        self.finish_awaitable(Settlement::Nack(Nack::after(Duration::ZERO)))
    }

    /// Gives the message back, to be delivered again after `delay` (at most
    /// [`MAX_NACK_DELAY`]; longer delays are shortened to it).
    pub fn nack_after(mut self, delay: Duration) {
        let nack = Nack::after(delay.min(MAX_NACK_DELAY));
        self.finish(Settlement::Nack(nack), None);
    }

    /// Extends the lease now, by the subscription's ack deadline. The
    /// subscriber does this on its own on a timer until
    /// `max_lease_extension` has passed since receipt; after that the
    /// lease is let go (the broker may deliver the message again, under a
    /// new ack_id) and this does nothing.
    pub fn extend(&self) {
        self.settle.settle(
            self.offset,
            self.serial,
            &self.target,
            Settlement::Extend,
            None,
        );
    }

    fn finish_awaitable(&mut self, settlement: Settlement) -> SettleFuture {
        let (reply, answer) = oneshot::channel();
        self.finish(settlement, Some(reply));
        SettleFuture { answer }
    }

    fn finish(&mut self, settlement: Settlement, reply: Option<oneshot::Sender<Result<()>>>) {
        self.settled = true;
        // Queued first, then no longer held: once shutdown sees nothing
        // held, every settlement is queued and its flush covers them.
        self.settle
            .settle(self.offset, self.serial, &self.target, settlement, reply);
        self.settle
            .release(self.size, self.admitted, self.handed_out);
    }
}

/// Cuts `error` to [`MAX_ERROR_BYTES`], on a character boundary.
fn error_text(mut error: String) -> String {
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

/// The outcome of an awaitable settlement
/// ([`Delivery::ack_with_response`], [`Delivery::reject_with_response`],
/// [`Delivery::nack_with_response`]):
/// `Ok` once the broker stored it. Dropping it does not cancel the
/// settlement.
#[derive(Debug)]
#[must_use = "the settlement is sent anyway; await this to learn whether the broker stored it"]
pub struct SettleFuture {
    answer: oneshot::Receiver<Result<()>>,
}

impl Future for SettleFuture {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::Closed)))
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Settlement::Nack(Nack::after(Duration::ZERO)), None);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("offset", &self.offset)
            .field("payload_len", &self.payload.len())
            .field("key", &self.key)
            .field("attributes", &self.attributes)
            .field("publish_time", &self.publish_time)
            .field("delivery_attempt", &self.delivery_attempt)
            .field("ack_id", &self.ack_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_error_is_kept_whole() {
        let error = "x".repeat(MAX_ERROR_BYTES);
        assert_eq!(error_text(error.clone()), error);
        assert_eq!(error_text(String::new()), "");
    }

    #[test]
    fn a_long_error_is_cut_on_a_char_boundary() {
        let ascii = error_text("y".repeat(MAX_ERROR_BYTES + 1));
        assert_eq!(ascii.len(), MAX_ERROR_BYTES);
        // "é" is two bytes: 1023 of "a" then "é" would cross the limit.
        let error = format!("{}é and more", "a".repeat(MAX_ERROR_BYTES - 1));
        let cut = error_text(error);
        assert_eq!(cut, "a".repeat(MAX_ERROR_BYTES - 1));
        let wide = error_text("€".repeat(MAX_ERROR_BYTES));
        assert_eq!(
            wide.len(),
            MAX_ERROR_BYTES / 3 * 3,
            "whole three-byte chars"
        );
    }
}
