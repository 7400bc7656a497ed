//! [`Subscriber`]: a `Stream` of [`Delivery`] values over a `Subscribe`
//! call that reconnects on its own, and [`SubscriberBuilder`].
//!
//! A reader task owns the gRPC stream: it records each delivery with the
//! settlement task (`settle.rs`) the moment it arrives, so its lease is
//! kept alive even while it waits in the subscriber's buffer, lets
//! deliveries through to the application only while they fit its byte
//! budget, and reopens the stream with backoff when the broker goes away.
//! On [`Subscriber::shutdown`] it stops reading and hands the open stream
//! back, so that it ends only once the handlers are done. This module does
//! not settle anything itself.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tidings::v1::{SubscribeRequest, SubscribeResponse};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tonic::Streaming;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::backoff::{self, Backoff};
use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::{Error, Result, is_retryable};
use crate::settle::{Counts, Settle, SettleConfig};
use crate::types::{StartPosition, deadline_seconds};

/// The default [`SubscriberBuilder::max_outstanding_messages`].
pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: u32 = 1000;
/// The default [`SubscriberBuilder::max_outstanding_bytes`]: 100 MiB.
pub const DEFAULT_MAX_OUTSTANDING_BYTES: u64 = 100 << 20;
/// The default [`SubscriberBuilder::max_lease_extension`]: 10 minutes.
pub const DEFAULT_MAX_LEASE_EXTENSION: Duration = Duration::from_secs(600);
/// The default [`SubscriberBuilder::ack_flush_interval`].
pub const DEFAULT_ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// The most outstanding messages the broker allows one stream.
const MAX_OUTSTANDING_LIMIT: u32 = 100_000;

/// Settings of a [`Subscriber`]; made by [`Client::subscriber`].
///
/// ```no_run
/// # async fn example(client: tidings_client::Client) -> tidings_client::Result<()> {
/// use std::time::Duration;
/// use tidings_client::StartPosition;
///
/// let subscriber = client
///     .subscriber("inventory")
///     .topic("order.placed") // create the subscription when missing
///     .start(StartPosition::Earliest)
///     .ack_deadline(Duration::from_secs(30))
///     .max_outstanding_messages(100)
///     .subscribe()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SubscriberBuilder {
    client: Client,
    subscription: String,
    topic: String,
    start: StartPosition,
    ack_deadline: Option<Duration>,
    max_outstanding_messages: u32,
    max_outstanding_bytes: u64,
    max_messages: Option<u32>,
    max_lease_extension: Duration,
    ack_flush_interval: Duration,
    backoff: (Duration, Duration),
}

impl SubscriberBuilder {
    pub(crate) fn new(client: Client, subscription: String) -> Self {
        Self {
            client,
            subscription,
            topic: String::new(),
            start: StartPosition::Earliest,
            ack_deadline: None,
            max_outstanding_messages: DEFAULT_MAX_OUTSTANDING_MESSAGES,
            max_outstanding_bytes: DEFAULT_MAX_OUTSTANDING_BYTES,
            max_messages: None,
            max_lease_extension: DEFAULT_MAX_LEASE_EXTENSION,
            ack_flush_interval: DEFAULT_ACK_FLUSH_INTERVAL,
            backoff: (backoff::DEFAULT_MIN, backoff::DEFAULT_MAX),
        }
    }

    /// The subscription's topic: when the subscription does not exist, it
    /// is created on this topic. Without it, a missing subscription is
    /// `NOT_FOUND`. Only [`subscribe`](Self::subscribe) sends it: if the
    /// subscription is deleted while the subscriber runs, the subscriber
    /// ends with `NOT_FOUND` and does not create it again.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Where a subscription created by [`subscribe`](Self::subscribe)
    /// begins (the earliest message by default).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// The ack deadline of a subscription created by
    /// [`subscribe`](Self::subscribe) (whole seconds, rounded up; the
    /// broker's default of 30 s otherwise).
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = Some(deadline);
        self
    }

    /// Flow control: the most delivered, unsettled messages at once
    /// (default 1000, at most 100 000; 0 means the default).
    pub fn max_outstanding_messages(mut self, max: u32) -> Self {
        self.max_outstanding_messages = match max {
            0 => DEFAULT_MAX_OUTSTANDING_MESSAGES,
            max => max.min(MAX_OUTSTANDING_LIMIT),
        };
        self
    }

    /// Flow control by size: the most bytes (payload, key and attributes)
    /// of delivered, unsettled messages at once (default 100 MiB; 0 means
    /// the default). The broker is asked to hold to it, and the subscriber
    /// holds to it too, handing out no more until settlements make room. A
    /// message larger than the limit still comes when nothing else is
    /// outstanding. Whichever of this and
    /// [`max_outstanding_messages`](Self::max_outstanding_messages) is
    /// reached first applies.
    pub fn max_outstanding_bytes(mut self, max: u64) -> Self {
        self.max_outstanding_bytes = match max {
            0 => DEFAULT_MAX_OUTSTANDING_BYTES,
            max => max,
        };
        self
    }

    /// Ends the stream after `max` deliveries, counted across reconnects
    /// (0 means never, the default). The broker sends no more than that, and
    /// the last ones stay leased until settled or their deadline passes, so
    /// a program that reads a fixed number of messages neither receives
    /// extra ones nor hands its own back early.
    pub fn max_messages(mut self, max: u32) -> Self {
        self.max_messages = (max > 0).then_some(max);
        self
    }

    /// How long after receipt an unsettled delivery's lease is held and
    /// extended automatically (default 10 minutes). After that the
    /// subscriber lets the lease go: it is no longer extended, the broker
    /// delivers the message again (perhaps to another consumer, under a
    /// new ack_id), and a nack or [`Delivery::extend`] of the old delivery
    /// is not sent. Its ack still is (the broker takes it while the message
    /// is unacknowledged).
    pub fn max_lease_extension(mut self, max: Duration) -> Self {
        self.max_lease_extension = max;
        self
    }

    /// How long settlements gather before they are sent together (default
    /// 5 ms); many pending settlements are sent sooner.
    pub fn ack_flush_interval(mut self, interval: Duration) -> Self {
        self.ack_flush_interval = interval;
        self
    }

    /// The delays between reconnection attempts: doubling from `min` to
    /// `max` (default 50 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Opens the stream.
    ///
    /// # Errors
    /// What the broker answers to `Subscribe`: `NOT_FOUND` (no such
    /// subscription and no topic given, or no such topic),
    /// `FAILED_PRECONDITION` (the subscription exists on another topic),
    /// `INVALID_ARGUMENT`, or `UNAVAILABLE` when the broker is down. These
    /// come back here, not as stream items.
    pub async fn subscribe(self) -> Result<Subscriber> {
        let request = SubscribeRequest {
            subscription: self.subscription.clone(),
            topic: self.topic.clone(),
            start: Some(self.start.into()),
            max_outstanding_messages: self.max_outstanding_messages,
            ack_deadline_seconds: self.ack_deadline.map_or(0, deadline_seconds),
            max_messages: self.max_messages.unwrap_or(0),
            max_outstanding_bytes: self.max_outstanding_bytes,
        };
        let stream = self
            .client
            .subscriber_service()
            .subscribe(request.clone())
            .await?
            .into_inner();
        let ack_deadline = self
            .client
            .get_subscription(&self.subscription)
            .await?
            .ack_deadline;
        let (min, max) = self.backoff;
        let settle = Settle::spawn(SettleConfig {
            client: self.client.clone(),
            subscription: self.subscription.clone(),
            ack_deadline,
            max_lease_extension: self.max_lease_extension,
            flush_interval: self.ack_flush_interval,
            backoff: Backoff::new(min, max),
        });
        let (deliveries_tx, deliveries) = mpsc::channel(self.max_outstanding_messages as usize);
        let (stop_tx, stop_rx) = watch::channel(false);
        let reader = Reader {
            client: self.client,
            request: reopen_request(request),
            counts: settle.counts(),
            settle: Arc::clone(&settle),
            deliveries_tx,
            stop_rx,
            parked: Vec::new(),
            backoff: Backoff::new(min, max),
            max_outstanding_bytes: self.max_outstanding_bytes,
            max_messages: self.max_messages,
            remaining: self.max_messages,
        };
        let span = info_span!("subscriber", subscription = %self.subscription);
        let reader = tokio::spawn(reader.run(stream).instrument(span));
        info!(subscription = %self.subscription, ?ack_deadline, "subscribed");
        Ok(Subscriber {
            subscription: self.subscription,
            ack_deadline,
            deliveries,
            settle,
            stop_tx,
            reader: Some(reader),
        })
    }
}

/// The request that reopens a stream: the first one without its topic.
/// Only the first open may create the subscription; if it was deleted
/// since, reopening is NOT_FOUND and the subscriber ends with that error
/// rather than bring the subscription back at its start position (which
/// would replay the topic).
fn reopen_request(first: SubscribeRequest) -> SubscribeRequest {
    SubscribeRequest {
        topic: String::new(),
        ..first
    }
}

/// A stream of [`Delivery`] values of one subscription.
///
/// It yields `Ok(delivery)` for each message; settle each one (see
/// [`Delivery`]). When the broker goes away (`UNAVAILABLE`, a broken
/// connection, or a stream that ends with OK before it was done) the
/// subscriber reconnects with backoff and carries on; deliveries from
/// before stay ackable, and the unsettled ones are delivered again. Any
/// other error (say the subscription was deleted: `NOT_FOUND`) is yielded
/// once as `Err`, and then the stream ends. Reconnecting never creates
/// the subscription again. Without an error, the stream ends only after
/// `max_messages` deliveries.
///
/// Three ways to finish:
/// - [`shutdown`](Subscriber::shutdown) stops taking messages, waits (up
///   to a timeout) for the handlers to settle the deliveries they hold,
///   sends their settlements, and only then ends the stream: no message a
///   handler acknowledged in time is delivered again.
/// - [`close`](Subscriber::close) ends the stream at once: the broker
///   takes back every unsettled delivery and delivers it again (a late
///   ack of one is still sent, and counts unless another consumer acked
///   the message first). It then sends pending settlements.
/// - Dropping the subscriber ends the stream like `close`, sending
///   pending settlements in the background; nobody hears of failures.
///
/// [`flush`](Subscriber::flush), `close` and `shutdown` report acks and
/// nacks that the broker refused or that were given up
/// ([`Error::Unsettled`]).
pub struct Subscriber {
    subscription: String,
    ack_deadline: Duration,
    deliveries: mpsc::Receiver<Result<Delivery>>,
    settle: Arc<Settle>,
    /// Tells the reader to stop reading, for [`Subscriber::shutdown`].
    stop_tx: watch::Sender<bool>,
    reader: Option<JoinHandle<Option<OpenStream>>>,
}

/// What [`Subscriber::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "deliveries still held at the timeout are delivered again"]
pub struct ShutdownReport {
    /// Deliveries the handlers still held, unsettled, when the timeout
    /// passed. The broker took them back when the stream ended and
    /// delivers them again; an ack of one made later is still sent, and
    /// counts unless another consumer acknowledged the message first.
    pub unsettled: usize,
}

impl Subscriber {
    /// The subscription's name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The subscription's ack deadline, as the broker reported it: leases
    /// are extended well before it passes.
    pub fn ack_deadline(&self) -> Duration {
        self.ack_deadline
    }

    /// Waits until every ack and nack made so far has been sent and
    /// answered by the broker. Transient failures are retried meanwhile,
    /// for as long as it takes (the broker may be restarting).
    ///
    /// # Errors
    /// [`Error::Unsettled`] when acks or nacks were refused by the broker
    /// since the last flush, with how many and the first cause (those
    /// made with [`Delivery::ack_with_response`] and
    /// [`Delivery::nack_with_response`] whose future was awaited report
    /// to it instead).
    pub async fn flush(&self) -> Result<()> {
        self.settle.flush().await
    }

    /// Ends the stream at once, then sends pending acks, nacks and
    /// extensions. Deliveries still held stay ackable afterwards, but the
    /// broker took their messages back when the stream ended, so they are
    /// delivered again (see [`shutdown`](Self::shutdown) to wait for
    /// them instead).
    ///
    /// # Errors
    /// [`Error::Unsettled`] when acks or nacks were not stored: the broker
    /// refused them (a status such as `NOT_FOUND` or
    /// `FAILED_PRECONDITION`), or it could not be reached, or did not
    /// answer in time, through a few more attempts while closing.
    pub async fn close(mut self) -> Result<()> {
        self.settle.set_closing();
        // End the stream first: the reader sends what is already settled,
        // then drops the stream, and the broker takes back whatever is
        // unsettled at once. Nacking buffered deliveries while the stream
        // was still open would have them sent straight back to it.
        self.deliveries.close();
        if let Some(reader) = self.reader.take() {
            let _ = reader.await;
        }
        // What is still buffered belongs to the ended stream: dropping it
        // sends nothing.
        while self.deliveries.try_recv().is_ok() {}
        self.settle.flush().await
    }

    /// Finishes without duplicates: stops taking messages (the stream is
    /// no longer read, so the broker sends no more than it already has),
    /// waits up to `timeout` for the handlers to settle every delivery
    /// they hold, sends every settlement, and only then ends the stream.
    ///
    /// Messages received but never handed out, and deliveries still held
    /// when the timeout passes, go back to the broker when the stream
    /// ends, to be delivered again; the report counts the latter. Leases
    /// keep being extended while it waits.
    ///
    /// # Errors
    /// As for [`close`](Self::close).
    pub async fn shutdown(mut self, timeout: Duration) -> Result<ShutdownReport> {
        let _ = self.stop_tx.send(true);
        let open = match self.reader.take() {
            Some(reader) => reader.await.ok().flatten(),
            None => None,
        };
        let mut counts = self.settle.counts();
        let settled = tokio::time::timeout(timeout, counts.wait_for(|c| c.held == 0))
            .await
            .is_ok();
        let unsettled = if settled { 0 } else { counts.borrow().held };
        if unsettled > 0 {
            warn!(
                subscription = %self.subscription,
                unsettled,
                ?timeout,
                "deliveries were still held at the end of shutdown; they will be delivered again"
            );
        }
        self.settle.set_closing();
        let flushed = self.settle.flush().await;
        if let Some(open) = open {
            self.settle.end_epoch(open.epoch);
            drop(open);
        }
        self.deliveries.close();
        while self.deliveries.try_recv().is_ok() {}
        info!(subscription = %self.subscription, unsettled, "shut down");
        flushed.map(|()| ShutdownReport { unsettled })
    }
}

impl Stream for Subscriber {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.deliveries.poll_recv(cx) {
                Poll::Ready(Some(Ok(mut delivery))) => {
                    // Buffered when its stream broke: the broker took it
                    // back and delivers it again, so it is not handed out
                    // twice.
                    if delivery.hand_out() {
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                }
                other => return other,
            }
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("subscription", &self.subscription)
            .field("ack_deadline", &self.ack_deadline)
            .finish_non_exhaustive()
    }
}

/// A stream the reader stopped reading, handed back for
/// [`Subscriber::shutdown`] to end once the handlers are done.
struct OpenStream {
    /// Dropping it ends the stream.
    _stream: Streaming<SubscribeResponse>,
    epoch: u64,
    /// Received deliveries never handed over: they go back with the
    /// stream.
    _parked: Vec<Delivery>,
}

/// The reader task: reads the stream, reopens it, hands deliveries over.
struct Reader {
    client: Client,
    request: SubscribeRequest,
    settle: Arc<Settle>,
    counts: watch::Receiver<Counts>,
    deliveries_tx: mpsc::Sender<Result<Delivery>>,
    stop_rx: watch::Receiver<bool>,
    /// Received deliveries not handed over when reading stopped.
    parked: Vec<Delivery>,
    backoff: Backoff,
    max_outstanding_bytes: u64,
    /// The deliveries to hand out in all, when `max_messages` was set.
    max_messages: Option<u32>,
    /// Of those, the ones the current stream still has to bring.
    remaining: Option<u32>,
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
    async fn run(mut self, mut stream: Streaming<SubscribeResponse>) -> Option<OpenStream> {
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
                frame = stream.message() => frame,
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
