//! The task behind one `Subscribe` stream.
//!
//! Each turn it claims from its subscription's lease book (never more than
//! the stream may hold, within a byte budget), reads what it was given —
//! a scan of new offsets from the topic's tail cache or storage, bounded by
//! count and bytes; redeliveries by offset — hands the scan to the book,
//! and sends the deliveries in frames. With nothing to send it waits, never
//! polls, on the topic's head, the subscription's wake-up, the next lease
//! deadline, shutdown, deletion, and the client leaving; every wake-up
//! settles expired leases first, so it always makes progress. When it ends,
//! whatever it held is due again, and the error that ended it reaches the
//! client after every frame sent before it.
//!
//! A pull is the same task with `pull_until` set: it ends, finished (its
//! leases running on to their deadlines), after its first turn that sent
//! anything, or when the pull's wait is over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use super::acks::DeliveryWriter;
use super::book::{Budget, Leased, Now, Scan, Scanned, StreamId, Window};
use super::subscription::Subscription;
use super::{AckId, BrokerConfig, BrokerError, BrokerResult, Delivery};
use crate::latency::LatencyHistogram;
use crate::offsets::Offset;
use crate::storage::{ReadLimit, SharedStore, StoredMessage};

/// The most messages claimed at once.
const MAX_CLAIM: usize = 512;
/// Roughly how many bytes of messages one claim reads and delivers.
const CLAIM_BYTES: usize = 4 * 1024 * 1024;
/// Frames buffered between this task and the transport.
pub(super) const FRAME_BUFFER: usize = 2;

/// Why the delivery loop stopped.
enum End {
    /// The client went away.
    Left,
    /// `max_messages` were delivered.
    Complete,
    /// The stream ends with this error.
    Failed(BrokerError),
}

pub(super) struct StreamTask {
    pub(super) store: SharedStore,
    pub(super) config: BrokerConfig,
    pub(super) shutdown: CancellationToken,
    pub(super) subscription: Arc<Subscription>,
    pub(super) writer: Arc<DeliveryWriter>,
    /// Times first deliveries from their publish.
    pub(super) end_to_end: Arc<LatencyHistogram>,
    pub(super) stream: StreamId,
    pub(super) window: Window,
    pub(super) remaining: Option<u64>,
    pub(super) frames_tx: mpsc::Sender<Vec<Delivery>>,
    pub(super) end_tx: oneshot::Sender<BrokerError>,
    /// The subscription's delivery delay held the next message back until
    /// then: the stream waits for it (or anything else that wakes it).
    pub(super) delayed_until: Option<Instant>,
    /// Set for a pull: the stream ends, finished, after its first turn that
    /// sent anything, or at this time when nothing came.
    pub(super) pull_until: Option<Instant>,
    /// A `Subscribe` stream's place among the open streams; pulls hold
    /// none.
    pub(super) _slot: Option<StreamSlot>,
}

/// A place among the broker's open `Subscribe` streams, given back when
/// the stream's task ends.
pub(super) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// Takes a place, unless `limit` streams are open.
    pub(super) fn claim(open: &Arc<AtomicUsize>, limit: Option<usize>) -> BrokerResult<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            limit.is_none_or(|limit| n < limit).then_some(n + 1)
        })
        .map_err(|_| BrokerError::LimitReached {
            what: "open streams",
            limit: limit.unwrap_or_default(),
            flag: "max-open-streams",
            hint: "close streams no longer read, or retry later",
        })?;
        Ok(Self(Arc::clone(open)))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Gives a scan back to the book unless it was admitted: a stream whose
/// read failed must not leave the subscription unable to scan.
struct ScanGuard<'a> {
    subscription: &'a Subscription,
    epoch: u64,
    armed: bool,
}

impl Drop for ScanGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.subscription.book().abandon_scan(self.epoch);
            self.subscription.wake.notify_waiters();
        }
    }
}

impl StreamTask {
    pub(super) async fn run(mut self) {
        let sub = Arc::clone(&self.subscription);
        sub.topic.stream_opened();
        let end = self.deliver().await;
        sub.topic.stream_closed();
        {
            let mut book = sub.book();
            match &end {
                End::Complete => book.finish_stream(self.stream),
                // The broker's own shutdown is no failure of the delivery.
                End::Failed(BrokerError::ShuttingDown) => {
                    book.close_stream(self.stream, false, Now::get());
                }
                End::Left | End::Failed(_) => book.close_stream(self.stream, true, Now::get()),
            }
        }
        sub.wake.notify_waiters();
        if !sub.deleted.is_cancelled() && sub.book().has_changes() {
            self.writer.mark(&sub);
        }
        match end {
            End::Left => debug!("stream ended: the client left"),
            End::Complete => debug!("stream ended: every message asked for was sent"),
            End::Failed(err) => {
                debug!(error = %err, "stream ended with an error");
                // Never blocks: the error travels beside the frames.
                let _ = self.end_tx.send(err);
            }
        }
    }

    async fn deliver(&mut self) -> End {
        let sub = Arc::clone(&self.subscription);
        let mut head_rx = sub.topic.watch_head();
        // Pulls end long before a heartbeat would be due.
        let heartbeat = self
            .config
            .stream_heartbeat
            .filter(|_| self.pull_until.is_none());
        let mut last_frame = Instant::now();
        loop {
            let woken = sub.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            head_rx.borrow_and_update();

            let (sent, scanned) = match self.turn().await {
                Ok(turn) => turn,
                Err(end) => return end,
            };
            if self.remaining == Some(0) || (sent && self.pull_until.is_some()) {
                return End::Complete;
            }
            if sent {
                last_frame = Instant::now();
            }
            if sent || scanned {
                continue;
            }
            let wakeup = sub.book().next_wakeup();
            let delayed_until = self.delayed_until.take();
            tokio::select! {
                () = self.shutdown.cancelled() => return End::Failed(BrokerError::ShuttingDown),
                () = sub.deleted.cancelled() => return End::Failed(sub.deleted_error()),
                () = self.frames_tx.closed() => return End::Left,
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return End::Failed(sub.deleted_error());
                    }
                }
                () = &mut woken => {}
                () = sleep_until_option(wakeup) => {}
                () = sleep_until_option(delayed_until) => {}
                () = sleep_until_option(self.pull_until) => return End::Complete,
                () = sleep_until_option(heartbeat.map(|every| last_frame + every)) => {
                    last_frame = Instant::now();
                    // A stream whose client is behind is busy, not idle.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.frames_tx.try_send(Vec::new())
                    {
                        return End::Left;
                    }
                }
            }
        }
    }

    /// One claim: leases, reads and sends. Returns whether it sent
    /// anything and whether it scanned new offsets.
    async fn turn(&mut self) -> Result<(bool, bool), End> {
        let sub = Arc::clone(&self.subscription);
        let head = sub.topic.head();
        let mut budget = Budget {
            messages: MAX_CLAIM,
            bytes: CLAIM_BYTES,
        };
        if let Some(remaining) = self.remaining {
            budget.messages = budget
                .messages
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        }
        let deadline = sub.ack_deadline();
        let (claim, mut in_hand) = {
            let mut book = sub.book();
            let claim = book.claim(self.stream, self.window, budget, head, Now::get(), deadline);
            let kept = book.take_bodies(&claim.leased);
            (claim, kept)
        };
        let mut leased = claim.leased;
        let mut scanned = claim.scan.is_some();
        if let Some(scan) = claim.scan {
            let left = Budget {
                messages: budget.messages - leased.len(),
                bytes: budget.bytes,
            };
            let start = scan.range.start;
            let (more, read, examined) = self.scan(scan, left).await.map_err(End::Failed)?;
            leased.extend(more);
            in_hand = merge(in_hand, read);
            // A scan held back at its start by the delivery delay made no
            // progress: the stream waits for the delay instead.
            scanned = examined > start || self.delayed_until.is_none();
        }
        if leased.is_empty() {
            return Ok((false, scanned));
        }
        let deliveries = self.fetch(leased, in_hand).await.map_err(End::Failed)?;
        self.send(deliveries).await?;
        Ok((true, scanned))
    }

    /// Reads a scan's messages, from the tail cache when it holds them,
    /// and hands them to the book. Returns what the book leased to this
    /// stream, the messages in hand for it (those read, and those the book
    /// kept), in offset order, and how far the scan examined. A
    /// subscription's delivery delay ends the scan at the first message
    /// not yet due, and sets `delayed_until` to its time.
    async fn scan(
        &mut self,
        scan: Scan,
        budget: Budget,
    ) -> BrokerResult<(Vec<Leased>, Vec<StoredMessage>, Offset)> {
        let sub = &self.subscription;
        let mut guard = ScanGuard {
            subscription: sub,
            epoch: scan.epoch,
            armed: true,
        };
        let range_len = usize::try_from(scan.range.end - scan.range.start).unwrap_or(usize::MAX);
        let limit = ReadLimit {
            max_messages: budget.messages.min(range_len),
            max_bytes: budget.bytes,
        };
        let mut messages = match sub.topic.cached_range(&scan.range, limit) {
            Some(messages) => messages,
            None => {
                self.store
                    .read(sub.topic.id, scan.range.clone(), limit)
                    .await?
            }
        };
        // The whole range was looked at unless the read stopped at a limit.
        let bytes: usize = messages.iter().map(StoredMessage::wire_size).sum();
        let mut examined = match messages.last() {
            Some(last) if messages.len() >= limit.max_messages || bytes >= limit.max_bytes => {
                last.offset + 1
            }
            _ => scan.range.end,
        };
        let delay = sub.delivery_delay();
        if !delay.is_zero() {
            // Publish times never decrease along offsets: the first message
            // not yet due ends the scan, and every later one waits too.
            let now = SystemTime::now();
            let held = messages.iter().position(|m| m.publish_time + delay > now);
            sub.set_delay_cut(held.map(|at| messages[at].offset));
            if let Some(at) = held {
                let due = messages[at].publish_time + delay;
                examined = examined.min(messages[at].offset);
                self.delayed_until =
                    Some(Instant::now() + due.duration_since(now).unwrap_or_default());
                messages.truncate(at);
            }
        }
        // Expired messages are settled like deleted ones: never delivered.
        sub.topic.drop_expired(&mut messages);
        trace!(range = ?scan.range, read = messages.len(), examined, "scanned");
        // Messages the filter turns away are left out: the book settles
        // the offsets of a scanned range that hold no message it was given.
        let messages = match sub.filter() {
            Some(filter) => {
                let mut kept = messages;
                kept.retain(|m| filter.matches(&m.attributes));
                kept
            }
            None => messages,
        };
        let deadline = sub.ack_deadline();
        let (leased, in_hand, others, changed) = {
            let mut book = sub.book();
            let scanned = Scanned {
                range: &scan.range,
                messages: &messages,
                examined,
                epoch: scan.epoch,
                horizon: sub.topic.delay_horizon(),
            };
            let leased = book.admit(
                self.stream,
                scanned,
                self.window,
                budget,
                Now::get(),
                deadline,
            );
            let kept = book.take_bodies(&leased);
            (
                leased,
                merge(messages, kept),
                book.has_work(sub.topic.head()),
                book.has_changes(),
            )
        };
        guard.armed = false;
        if others {
            // Others may take what this stream had no room for, or scan on.
            sub.wake.notify_waiters();
        }
        if changed {
            self.writer.mark(sub);
        }
        Ok((leased, in_hand, examined))
    }

    /// The deliveries of `leased`, in lease order: from `in_hand` (the
    /// scan's messages and those the book kept, in offset order), the topic's tail cache, or
    /// storage. A message no longer stored (deleted meanwhile) is settled
    /// instead of delivered.
    async fn fetch(
        &self,
        leased: Vec<Leased>,
        mut in_hand: Vec<StoredMessage>,
    ) -> BrokerResult<Vec<Delivery>> {
        let sub = &self.subscription;
        sub.topic.drop_expired(&mut in_hand);
        let mut in_hand = Messages::new(in_hand);
        let wanted: Vec<Offset> = leased
            .iter()
            .map(|l| l.offset)
            .filter(|&o| !in_hand.has(o))
            .collect();
        let mut elsewhere = Vec::new();
        if !wanted.is_empty() {
            let (cached, missing) = sub.topic.cached(wanted.into_iter());
            elsewhere = cached;
            if !missing.is_empty() {
                elsewhere.extend(self.store.read_offsets(sub.topic.id, missing).await?);
            }
            sub.topic.drop_expired(&mut elsewhere);
            elsewhere.sort_unstable_by_key(|m| m.offset);
        }
        let mut elsewhere = Messages::new(elsewhere);
        let mut deliveries = Vec::with_capacity(leased.len());
        let mut gone = Vec::new();
        let mut filtered = Vec::new();
        // The scan judged the messages in hand; a message due again is
        // judged by the filter as it is now.
        let filter = sub.filter();
        for lease in leased {
            let message = match in_hand.take(lease.offset) {
                Some(message) => message,
                None => match elsewhere.take(lease.offset) {
                    Some(message) => {
                        if let Some(filter) = &filter
                            && !filter.matches(&message.attributes)
                        {
                            filtered.push(lease.offset);
                            continue;
                        }
                        message
                    }
                    None => {
                        gone.push(lease.offset);
                        continue;
                    }
                },
            };
            let ack_id = AckId {
                subscription: sub.id,
                offset: lease.offset,
                lease: lease.lease,
            };
            deliveries.push(Delivery {
                message,
                attempt: lease.attempt,
                ack_id: ack_id.encode(),
            });
        }
        if !gone.is_empty() {
            debug!(count = gone.len(), "leased messages are no longer stored");
        }
        if !filtered.is_empty() {
            debug!(
                count = filtered.len(),
                "the filter turned away messages due again"
            );
            gone.append(&mut filtered);
        }
        if !gone.is_empty() {
            sub.book().gone_offsets(&gone, Now::get());
            self.writer.mark(sub);
        }
        Ok(deliveries)
    }

    /// Sends deliveries in frames. Counts against `max_messages` only what
    /// was sent; what could not be sent is handed back uncounted.
    async fn send(&mut self, deliveries: Vec<Delivery>) -> Result<(), End> {
        trace!(count = deliveries.len(), "delivering");
        let mut frames = frames(deliveries, self.config.max_frame_bytes).into_iter();
        while let Some(frame) = frames.next() {
            let count = frame.len() as u64;
            let unsent = |frame: &[Delivery], rest: &mut dyn Iterator<Item = Vec<Delivery>>| {
                let mut offsets: Vec<Offset> = frame.iter().map(|d| d.message.offset).collect();
                offsets.extend(rest.flatten().map(|d| d.message.offset));
                offsets
            };
            let sent = tokio::select! {
                sent = self.frames_tx.reserve() => sent.ok(),
                () = self.shutdown.cancelled() => {
                    self.release(&unsent(&frame, &mut frames));
                    return Err(End::Failed(BrokerError::ShuttingDown));
                }
                () = self.subscription.deleted.cancelled() => {
                    return Err(End::Failed(self.subscription.deleted_error()));
                }
            };
            let Some(permit) = sent else {
                self.release(&unsent(&frame, &mut frames));
                return Err(End::Left);
            };
            self.subscription.sent(&frame, &self.end_to_end);
            permit.send(frame);
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining = remaining.saturating_sub(count);
            }
        }
        Ok(())
    }

    /// Hands back leases that were never sent.
    fn release(&self, offsets: &[Offset]) {
        self.subscription
            .book()
            .release_unsent(self.stream, offsets);
    }
}

/// Messages in offset order, taken out one by one by offset.
struct Messages {
    offsets: Vec<Offset>,
    messages: Vec<Option<StoredMessage>>,
}

impl Messages {
    /// `messages` must be in offset order.
    fn new(messages: Vec<StoredMessage>) -> Self {
        Self {
            offsets: messages.iter().map(|m| m.offset).collect(),
            messages: messages.into_iter().map(Some).collect(),
        }
    }

    fn has(&self, offset: Offset) -> bool {
        self.offsets.binary_search(&offset).is_ok()
    }

    fn take(&mut self, offset: Offset) -> Option<StoredMessage> {
        let at = self.offsets.binary_search(&offset).ok()?;
        self.messages[at].take()
    }
}

/// Two runs of messages in offset order, as one in offset order.
fn merge(a: Vec<StoredMessage>, b: Vec<StoredMessage>) -> Vec<StoredMessage> {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut all = a;
    all.extend(b);
    all.sort_unstable_by_key(|m| m.offset);
    all.dedup_by_key(|m| m.offset);
    all
}

/// Splits deliveries into frames of at most `max_bytes` (a larger single
/// message travels alone).
fn frames(deliveries: Vec<Delivery>, max_bytes: usize) -> Vec<Vec<Delivery>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for delivery in deliveries {
        let size = delivery.message.wire_size();
        if !frame.is_empty() && bytes + size > max_bytes {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += size;
        frame.push(delivery);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

async fn sleep_until_option(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use bytestring::ByteString;
    use std::time::SystemTime;

    fn delivery(offset: Offset, size: usize) -> Delivery {
        Delivery {
            message: StoredMessage {
                offset,
                publish_time: SystemTime::UNIX_EPOCH,
                payload: Bytes::from(vec![0; size]),
                key: String::new(),
                attributes: Vec::new(),
                id: ByteString::new(),
                deliver_at: None,
            },
            attempt: 1,
            ack_id: String::new(),
        }
    }

    #[test]
    fn frames_respect_the_byte_limit_and_keep_order() {
        let deliveries = (0..10).map(|o| delivery(o, 100)).collect();
        let frames = frames(deliveries, 300);
        assert!(frames.len() > 1);
        assert!(
            frames
                .iter()
                .all(|f| f.iter().map(|d| d.message.wire_size()).sum::<usize>() <= 300)
        );
        let order: Vec<_> = frames.iter().flatten().map(|d| d.message.offset).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn an_oversized_message_travels_alone() {
        let frames = frames(
            vec![delivery(0, 10), delivery(1, 1000), delivery(2, 10)],
            100,
        );
        assert_eq!(
            frames.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }
}
