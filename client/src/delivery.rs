//! [`Delivery`]: one message handed out by a [`Subscriber`](crate::Subscriber),
//! with the means to settle it.
//!
//! Settling only queues the settlement with the subscriber's settlement
//! task (see `settle.rs`), which batches and sends it; nothing here does
//! I/O or blocks.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tidings::v1::ReceivedMessage;

use crate::lease::{Settlement, Target};
use crate::settle::Settle;

/// The longest delay the broker accepts for a nack.
pub const MAX_NACK_DELAY: Duration = Duration::from_secs(600);

/// One delivered message. Settle it with [`ack`](Delivery::ack) or
/// [`nack`](Delivery::nack); dropping it unsettled nacks it, so it is
/// delivered again at once.
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
    publish_time: Option<SystemTime>,
    delivery_attempt: u32,
    /// How settlements name this delivery: its ack_id, or its offset.
    target: Target,
    epoch: u64,
    serial: u64,
    settle: Arc<Settle>,
    settled: bool,
}

impl Delivery {
    /// Wraps a received message of the stream of `epoch`, recording it with
    /// the settlement task.
    pub(crate) fn new(message: ReceivedMessage, epoch: u64, settle: Arc<Settle>) -> Self {
        let target = Target::new(message.offset, message.ack_id);
        let serial = settle.received(epoch, message.offset, target.clone());
        Self {
            offset: message.offset,
            payload: message.payload,
            key: message.key,
            attributes: message.attributes,
            publish_time: message
                .publish_time
                .and_then(|t| SystemTime::try_from(t).ok()),
            delivery_attempt: message.delivery_attempt,
            target,
            epoch,
            serial,
            settle,
            settled: false,
        }
    }

    /// Counts this delivery as handed to the application, if the stream it
    /// came on is still open; returns whether it is. A delivery of an
    /// ended stream was taken back by the broker and comes again.
    pub(crate) fn hand_out(&self) -> bool {
        self.settle.hand_out(self.epoch)
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

    /// Acknowledges the message: it is never delivered again on this
    /// subscription. Sent within the flush interval (and retried across
    /// reconnects).
    pub fn ack(mut self) {
        self.finish(Settlement::Ack);
    }

    /// Gives the message back, to be delivered again at once.
    pub fn nack(mut self) {
        self.finish(Settlement::Nack(Duration::ZERO));
    }

    /// Gives the message back, to be delivered again after `delay` (at most
    /// [`MAX_NACK_DELAY`]; longer delays are shortened to it).
    pub fn nack_after(mut self, delay: Duration) {
        self.finish(Settlement::Nack(delay.min(MAX_NACK_DELAY)));
    }

    /// Extends the lease now, by the subscription's ack deadline. The
    /// subscriber does this on its own on a timer; call it only to extend
    /// past `max_lease_extension`.
    pub fn extend(&self) {
        self.settle
            .settle(self.offset, self.serial, &self.target, Settlement::Extend);
    }

    fn finish(&mut self, settlement: Settlement) {
        self.settled = true;
        self.settle
            .settle(self.offset, self.serial, &self.target, settlement);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Settlement::Nack(Duration::ZERO));
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
