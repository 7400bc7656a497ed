//! [`Subscriber`]: a `Stream` of [`Delivery`] values over a `Subscribe`
//! call that reconnects on its own, and [`SubscriberBuilder`].
//!
//! A reader task (`reader.rs`) owns the gRPC stream and fills the
//! subscriber's buffer; a settlement task (`settle.rs`) sends what the
//! deliveries settle. This module builds both, hands deliveries out, and
//! finishes: `close` ends the stream at once, `shutdown` first waits for
//! the handlers. It does not settle anything itself.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tidings::v1::SubscribeRequest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info, info_span, warn};

use crate::backoff::{self, Backoff};
use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::reader::{OpenStream, Reader};
use crate::settle::{Settle, SettleConfig};
use crate::types::{StartPosition, deadline_seconds};

/// The default [`SubscriberBuilder::max_outstanding_messages`].
pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: u32 = 1000;
/// The default [`SubscriberBuilder::max_outstanding_bytes`]: 100 MiB.
pub const DEFAULT_MAX_OUTSTANDING_BYTES: u64 = 100 << 20;
/// How long a stream may bring nothing, not even the broker's heartbeat
/// (every 30 s by default), before the subscriber takes it for dead and
/// reconnects.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The default [`SubscriberBuilder::max_lease_extension`]: 10 minutes.
pub const DEFAULT_MAX_LEASE_EXTENSION: Duration = Duration::from_secs(600);
/// The default [`SubscriberBuilder::ack_flush_interval`].
pub const DEFAULT_ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// The default [`SubscriberBuilder::ack_flush_interval`] on a subscription
/// with message ordering, where each ack lets its key's next message go.
pub const DEFAULT_ORDERED_ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(1);
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
    ack_flush_interval: Option<Duration>,
    backoff: (Duration, Duration),
    idle_timeout: Duration,
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
            ack_flush_interval: None,
            backoff: (backoff::DEFAULT_MIN, backoff::DEFAULT_MAX),
            idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
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
    /// 5 ms, or 1 ms on a subscription with message ordering, where a key's
    /// next message waits for the ack); many pending settlements are sent
    /// sooner.
    pub fn ack_flush_interval(mut self, interval: Duration) -> Self {
        self.ack_flush_interval = Some(interval);
        self
    }

    /// The delays between reconnection attempts: doubling from `min` to
    /// `max` (default 50 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// How long the stream may bring nothing, not even a heartbeat, before
    /// the subscriber takes it for dead (a connection that went silent
    /// without breaking, say behind a proxy) and reconnects: default 75 s,
    /// two and a half of the broker's default `--stream-heartbeat`. Keep it
    /// above twice the broker's heartbeat.
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
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
        let subscription = self.client.get_subscription(&self.subscription).await?;
        let ack_deadline = subscription.ack_deadline;
        let flush_interval =
            self.ack_flush_interval
                .unwrap_or(if subscription.enable_message_ordering {
                    DEFAULT_ORDERED_ACK_FLUSH_INTERVAL
                } else {
                    DEFAULT_ACK_FLUSH_INTERVAL
                });
        let (min, max) = self.backoff;
        let settle = Settle::spawn(SettleConfig {
            client: self.client.clone(),
            subscription: self.subscription.clone(),
            ack_deadline,
            max_lease_extension: self.max_lease_extension,
            flush_interval,
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
            idle_timeout: self.idle_timeout,
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
/// ([`Error::Unsettled`](crate::Error::Unsettled)).
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

    /// Waits until every ack, reject and nack made so far has been sent and
    /// answered by the broker. Transient failures are retried meanwhile,
    /// for as long as it takes (the broker may be restarting).
    ///
    /// # Errors
    /// [`Error::Unsettled`](crate::Error::Unsettled) when acks, rejects or
    /// nacks were refused by the broker since the last flush, with how many
    /// and the first cause (those made with [`Delivery::ack_with_response`],
    /// [`Delivery::reject_with_response`] and
    /// [`Delivery::nack_with_response`] whose future was awaited report
    /// to it instead).
    pub async fn flush(&self) -> Result<()> {
        self.settle.flush().await
    }

    /// Ends the stream at once, then sends pending acks, rejects, nacks and
    /// extensions. Deliveries still held stay ackable afterwards, but the
    /// broker took their messages back when the stream ended, so they are
    /// delivered again (see [`shutdown`](Self::shutdown) to wait for
    /// them instead).
    ///
    /// # Errors
    /// [`Error::Unsettled`](crate::Error::Unsettled) when acks, rejects or
    /// nacks were not stored: the broker refused them (a status such as `NOT_FOUND` or
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
