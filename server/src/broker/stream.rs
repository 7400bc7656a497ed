//! The task behind one `Subscribe` stream.
//!
//! It claims deliverable offsets from its subscription's lease book (never
//! more than the stream may hold), reads them from storage, and sends them in
//! frames. With nothing to send it waits — never polls — on the topic's head,
//! the subscription's wake-up, the next lease deadline, shutdown, deletion,
//! and the client leaving. When it ends, whatever it held is due again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use super::subscription::{StreamId, Subscription};
use super::{BrokerConfig, BrokerError, BrokerResult, Delivery};
use crate::offsets::Offset;
use crate::storage::{ReadLimit, SharedStore, StoredMessage};

/// The most messages claimed at once.
const MAX_CLAIM: usize = 512;
/// Roughly how many bytes one claim should read from storage.
const CLAIM_BYTES: usize = 4 * 1024 * 1024;
/// Frames buffered between this task and the transport.
pub(super) const FRAME_BUFFER: usize = 2;

/// Why the delivery loop stopped.
enum End {
    /// The client went away, or `max_messages` were delivered.
    Done,
    /// The stream ends with this error.
    Failed(BrokerError),
}

pub(super) struct StreamTask {
    pub(super) store: SharedStore,
    pub(super) config: BrokerConfig,
    pub(super) shutdown: CancellationToken,
    pub(super) subscription: Arc<Subscription>,
    pub(super) stream: StreamId,
    pub(super) max_outstanding: usize,
    pub(super) remaining: Option<u64>,
    pub(super) frames_tx: mpsc::Sender<BrokerResult<Vec<Delivery>>>,
}

impl StreamTask {
    pub(super) async fn run(mut self) {
        self.subscription.topic.stream_opened();
        let end = self.deliver().await;
        self.subscription.topic.stream_closed();
        {
            let mut book = self.subscription.book();
            if self.remaining == Some(0) {
                book.finish_stream(self.stream);
            } else {
                book.close_stream(self.stream);
            }
        }
        self.subscription.wake.notify_waiters();
        match end {
            End::Done => debug!("stream ended"),
            End::Failed(err) => {
                debug!(error = %err, "stream ended with an error");
                // The client may not be reading; don't wait for it forever.
                let _ = self.frames_tx.try_send(Err(err));
            }
        }
    }

    async fn deliver(&mut self) -> End {
        let sub = Arc::clone(&self.subscription);
        let mut head_rx = sub.topic.watch_head();
        loop {
            let woken = sub.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            head_rx.borrow_and_update();

            let claimed = self.claim();
            if !claimed.is_empty() {
                if let Err(end) = self.send(claimed).await {
                    return end;
                }
                if self.remaining == Some(0) {
                    return End::Done;
                }
                continue;
            }
            let wakeup = sub.book().next_wakeup();
            tokio::select! {
                () = self.shutdown.cancelled() => return End::Failed(BrokerError::ShuttingDown),
                () = sub.deleted.cancelled() => return End::Failed(sub.deleted_error()),
                () = self.frames_tx.closed() => return End::Done,
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return End::Failed(sub.deleted_error());
                    }
                }
                () = &mut woken => {}
                () = sleep_until_option(wakeup) => {}
            }
        }
    }

    fn claim(&self) -> Vec<(Offset, u32)> {
        let sub = &self.subscription;
        let head = sub.topic.head();
        let by_size = (CLAIM_BYTES / sub.topic.size_estimate()).clamp(1, MAX_CLAIM);
        let mut book = sub.book();
        let room = self
            .max_outstanding
            .saturating_sub(book.outstanding(self.stream));
        let mut max = room.min(by_size);
        if let Some(remaining) = self.remaining {
            max = max.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        }
        if max == 0 {
            return Vec::new();
        }
        book.claim(self.stream, max, head, Instant::now(), sub.ack_deadline)
    }

    /// Reads the claimed messages and sends them in frames.
    async fn send(&mut self, claimed: Vec<(Offset, u32)>) -> Result<(), End> {
        let deliveries = self.fetch(&claimed).await.map_err(End::Failed)?;
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.saturating_sub(deliveries.len() as u64);
        }
        trace!(count = deliveries.len(), "delivering");
        for frame in frames(deliveries, self.config.max_frame_bytes) {
            tokio::select! {
                sent = self.frames_tx.send(Ok(frame)) => {
                    if sent.is_err() {
                        return Err(End::Done);
                    }
                }
                () = self.shutdown.cancelled() => return Err(End::Failed(BrokerError::ShuttingDown)),
                () = self.subscription.deleted.cancelled() => {
                    return Err(End::Failed(self.subscription.deleted_error()));
                }
            }
        }
        Ok(())
    }

    /// Reads the claimed offsets, in claim order: from the topic's tail
    /// cache when they are there, else from storage — first-time deliveries
    /// form one run read in a single scan, redeliveries are read by offset.
    async fn fetch(&self, claimed: &[(Offset, u32)]) -> BrokerResult<Vec<Delivery>> {
        let topic = &self.subscription.topic;
        let (cached, missing) = topic.cached(claimed.iter().map(|&(o, _)| o));
        let mut by_offset: HashMap<Offset, StoredMessage> =
            cached.into_iter().map(|m| (m.offset, m)).collect();
        if !missing.is_empty() {
            for message in self.read(&missing, claimed).await? {
                by_offset.insert(message.offset, message);
            }
        }
        // An offset missing now belonged to a topic deleted meanwhile; the
        // stream ends on the deletion signal.
        Ok(claimed
            .iter()
            .filter_map(|&(offset, attempt)| {
                let message = by_offset.remove(&offset)?;
                Some(Delivery { message, attempt })
            })
            .collect())
    }

    /// Reads `missing` (ascending within each kind) from storage.
    async fn read(
        &self,
        missing: &[Offset],
        claimed: &[(Offset, u32)],
    ) -> BrokerResult<Vec<StoredMessage>> {
        let topic = self.subscription.topic.id;
        let first_time: HashSet<Offset> = claimed
            .iter()
            .filter(|&&(_, attempt)| attempt == 1)
            .map(|&(o, _)| o)
            .collect();
        let (new, again): (Vec<Offset>, Vec<Offset>) =
            missing.iter().partition(|o| first_time.contains(o));
        let mut messages = Vec::with_capacity(missing.len());
        if !again.is_empty() {
            messages.extend(self.store.read_offsets(topic, again).await?);
        }
        if let (Some(&first), Some(&last)) = (new.first(), new.last()) {
            let limit = ReadLimit {
                max_messages: usize::try_from(last - first + 1).unwrap_or(usize::MAX),
                max_bytes: usize::MAX,
            };
            messages.extend(self.store.read(topic, first, limit).await?);
        }
        Ok(messages)
    }
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
    use std::time::SystemTime;

    fn delivery(offset: Offset, size: usize) -> Delivery {
        Delivery {
            message: StoredMessage {
                offset,
                publish_time: SystemTime::UNIX_EPOCH,
                payload: Bytes::from(vec![0; size]),
                key: String::new(),
                attributes: Vec::new(),
            },
            attempt: 1,
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
