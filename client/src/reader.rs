//! The reader task of a [`Subscriber`](crate::Subscriber): it owns the
//! gRPC `Subscribe` stream. It records each delivery with the settlement
//! task (`settle.rs`) the moment it arrives, so its lease is kept alive
//! even while it waits, lets deliveries through to the subscriber's buffer
//! only while they fit the byte budget, and reopens the stream with
//! backoff when the broker goes away. When the subscriber shuts down it
//! stops reading and hands the open stream back, so that the stream ends
//! only once the handlers are done. It settles nothing itself.

use std::sync::Arc;
use std::time::Duration;

use tidings::v1::{SubscribeRequest, SubscribeResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::{Error, Result, is_retryable};
use crate::settle::{Counts, Settle};

/// A stream the reader stopped reading, handed back for
/// [`Subscriber::shutdown`] to end once the handlers are done.
pub(crate) struct OpenStream {
    /// Dropping it ends the stream.
    _stream: Streaming<SubscribeResponse>,
    pub(crate) epoch: u64,
    /// Received deliveries never handed over: they go back with the
    /// stream.
    _parked: Vec<Delivery>,
}

/// The reader task: reads the stream, reopens it, hands deliveries over.
pub(crate) struct Reader {
    pub(crate) client: Client,
    /// The request that reopens the stream.
    pub(crate) request: SubscribeRequest,
    pub(crate) settle: Arc<Settle>,
    pub(crate) counts: watch::Receiver<Counts>,
    pub(crate) deliveries_tx: mpsc::Sender<Result<Delivery>>,
    /// Turns true when the subscriber shuts down.
    pub(crate) stop_rx: watch::Receiver<bool>,
    /// Received deliveries not handed over when reading stopped.
    pub(crate) parked: Vec<Delivery>,
    pub(crate) backoff: Backoff,
    pub(crate) max_outstanding_bytes: u64,
    /// The deliveries to hand out in all, when `max_messages` was set.
    pub(crate) max_messages: Option<u32>,
    /// Of those, the ones the current stream still has to bring.
    pub(crate) remaining: Option<u32>,
    /// A stream that brings nothing, not even a heartbeat, for this long
    /// is taken for dead.
    pub(crate) idle_timeout: Duration,
}

/// How one stream ended.
enum End {
    /// The subscriber is gone.
    Dropped,
    /// The subscriber is shutting down: stop reading, keep the stream.
    Stopped,
    /// Every one of the `max_messages` asked for arrived (the broker ends
    /// the stream with OK after them; that end is not read). Its
    /// deliveries stay leased, so they stay current.
    Completed,
    /// The broker went away, or the stream ended with OK before it was
    /// done; reconnect.
    Broken(Option<tonic::Status>),
    /// The broker ended the stream for good.
    Failed(tonic::Status),
}

impl Reader {
    /// Reads (and reopens) the stream until it is over; returns it still
    /// open when the subscriber is shutting down.
    pub(crate) async fn run(
        mut self,
        mut stream: Streaming<SubscribeResponse>,
    ) -> Option<OpenStream> {
        loop {
            let epoch = self.settle.begin_epoch();
            let end = self.read(&mut stream, epoch).await;
            match end {
                End::Completed => {
                    debug!("received every message asked for");
                    return None;
                }
                End::Stopped => {
                    return Some(OpenStream {
                        _stream: stream,
                        epoch,
                        _parked: std::mem::take(&mut self.parked),
                    });
                }
                // Acks first, so the broker does not redeliver what was
                // acknowledged when the stream ends. Failures are left for
                // the subscriber's own flush to report.
                End::Dropped => {
                    self.settle.set_closing();
                    self.settle.flush_quietly().await;
                }
                _ => {}
            }
            self.settle.end_epoch(epoch);
            drop(stream);
            match end {
                End::Dropped | End::Completed | End::Stopped => return None,
                End::Failed(status) => {
                    self.fail(status).await;
                    return None;
                }
                End::Broken(Some(status)) => {
                    warn!(code = ?status.code(), "the subscribe stream broke; reconnecting");
                }
                End::Broken(None) => {
                    warn!("the subscribe stream ended early with OK; reconnecting");
                }
            }
            if !self.ask_for_the_rest() {
                debug!("every message asked for was handed out");
                return None;
            }
            stream = self.reconnect().await?;
        }
    }

    /// After a stream ended early: the next one asks for the deliveries
    /// not handed out yet. Those still buffered went back with the ended
    /// stream, so they count as not delivered. Returns false when nothing
    /// is left to ask for.
    fn ask_for_the_rest(&mut self) -> bool {
        let Some(max) = self.max_messages else {
            return true;
        };
        let handed_out = u32::try_from(self.settle.handed_out()).unwrap_or(u32::MAX);
        let rest = max.saturating_sub(handed_out);
        self.remaining = Some(rest);
        self.request.max_messages = rest;
        rest > 0
    }

    /// Reads frames until the stream ends or the subscriber is dropped or
    /// shutting down.
    async fn read(&mut self, stream: &mut Streaming<SubscribeResponse>, epoch: u64) -> End {
        loop {
            let frame = tokio::select! {
                biased;
                () = self.deliveries_tx.closed() => return End::Dropped,
                Ok(_) = self.stop_rx.wait_for(|stop| *stop) => return End::Stopped,
                frame = tokio::time::timeout(self.idle_timeout, stream.message()) => match frame {
                    Ok(frame) => frame,
                    Err(_) => {
                        return End::Broken(Some(tonic::Status::unavailable(format!(
                            "the stream brought nothing, not even a heartbeat, for {:?}",
                            self.idle_timeout
                        ))));
                    }
                },
            };
            let messages = match frame {
                Ok(Some(frame)) => frame.messages,
                // The broker ends a stream with OK only once it delivered
                // the `max_messages` asked for, and then we stopped reading
                // before this (see below). Every other end carries a
                // status: NOT_FOUND when the subscription was deleted,
                // UNAVAILABLE when the broker shuts down. So OK here means
                // something between us cut the stream (a proxy capping
                // stream lifetimes), or a broker lost the final status. It
                // is not the end of the subscription: take it as a break
                // and reopen. The reopened stream names no topic, so a
                // subscription deleted meanwhile is reported NOT_FOUND and
                // never created again.
                Ok(None) => return End::Broken(None),
                Err(status) if is_retryable(&status) => return End::Broken(Some(status)),
                Err(status) => return End::Failed(status),
            };
            self.backoff.reset();
            if let Some(remaining) = self.remaining.as_mut() {
                let received = u32::try_from(messages.len()).unwrap_or(u32::MAX);
                *remaining = remaining.saturating_sub(received);
            }
            // Recorded first, all of them, so leases are kept alive while
            // the deliveries wait for room or in the buffer.
            let deliveries: Vec<Delivery> = messages
                .into_iter()
                .map(|m| Delivery::new(m, epoch, Arc::clone(&self.settle)))
                .collect();
            let mut deliveries = deliveries.into_iter();
            while let Some(delivery) = deliveries.next() {
                if let Err((end, delivery)) = self.hand_over(delivery).await {
                    self.parked.push(delivery);
                    self.parked.extend(deliveries);
                    return end;
                }
            }
            if self.remaining == Some(0) {
                return End::Completed;
            }
        }
    }

    /// Puts `delivery` in the subscriber's buffer once it fits the byte
    /// budget (a delivery always fits when nothing else is outstanding)
    /// and the buffer has room; gives it back when the subscriber is gone
    /// or shutting down first.
    async fn hand_over(&mut self, mut delivery: Delivery) -> Result<(), (End, Delivery)> {
        let size = delivery.size();
        let max = self.max_outstanding_bytes;
        let fits =
            |c: &Counts| c.outstanding == 0 || c.outstanding_bytes.saturating_add(size) <= max;
        let Self {
            deliveries_tx,
            stop_rx,
            counts,
            ..
        } = self;
        let permit = tokio::select! {
            biased;
            () = deliveries_tx.closed() => return Err((End::Dropped, delivery)),
            Ok(_) = stop_rx.wait_for(|stop| *stop) => return Err((End::Stopped, delivery)),
            permit = async {
                // The sender lives in `self.settle`, so this cannot fail.
                let _ = counts.wait_for(fits).await;
                deliveries_tx.reserve().await
            } => permit,
        };
        match permit {
            Ok(permit) => {
                delivery.admit();
                permit.send(Ok(delivery));
                Ok(())
            }
            Err(_) => Err((End::Dropped, delivery)),
        }
    }

    /// Reopens the stream with backoff; `None` when the subscriber is gone
    /// or shutting down, or the broker refused for good (then the error
    /// was handed over).
    async fn reconnect(&mut self) -> Option<Streaming<SubscribeResponse>> {
        loop {
            let delay = self.backoff.next_delay();
            let mut service = self.client.subscriber_service();
            let request = self.request.clone();
            let opened = tokio::select! {
                () = self.deliveries_tx.closed() => return None,
                Ok(_) = self.stop_rx.wait_for(|stop| *stop) => return None,
                opened = async {
                    sleep(delay).await;
                    service.subscribe(request).await
                } => opened,
            };
            match opened {
                Ok(response) => {
                    info!("the subscribe stream is open again");
                    return Some(response.into_inner());
                }
                Err(status) if is_retryable(&status) => {
                    debug!(code = ?status.code(), ?delay, "reconnecting failed; trying again");
                }
                Err(status) => {
                    self.fail(status).await;
                    return None;
                }
            }
        }
    }

    /// Hands the error that ended the stream to the subscriber.
    async fn fail(&self, status: tonic::Status) {
        debug!(code = ?status.code(), "the subscribe stream ended for good");
        let _ = self.deliveries_tx.send(Err(Error::Status(status))).await;
    }
}
