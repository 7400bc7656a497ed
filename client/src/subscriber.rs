//! [`Subscriber`]: a `Stream` of [`Delivery`] values over a `Subscribe`
//! call that reconnects on its own, and [`SubscriberBuilder`].
//!
//! A reader task owns the gRPC stream: it records each delivery with the
//! settlement task (`settle.rs`) the moment it arrives, so its lease is
//! kept alive even while it waits in the subscriber's buffer, and reopens
//! the stream with backoff when the broker goes away. This module does not
//! settle anything itself.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tidings::v1::{SubscribeRequest, SubscribeResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tonic::Streaming;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::backoff::{self, Backoff};
use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::{Error, Result, is_retryable};
use crate::settle::{Settle, SettleConfig};
use crate::types::{StartPosition, deadline_seconds};

/// The default [`SubscriberBuilder::max_outstanding_messages`].
pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: u32 = 1000;
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

    /// Ends the stream after `max` deliveries, counted across reconnects
    /// (0 means never, the default). The broker sends no more than that, and
    /// the last ones stay leased until settled or their deadline passes, so
    /// a program that reads a fixed number of messages neither receives
    /// extra ones nor hands its own back early.
    pub fn max_messages(mut self, max: u32) -> Self {
        self.max_messages = (max > 0).then_some(max);
        self
    }

    /// How long after receipt an unsettled delivery's lease is still
    /// extended automatically (default 10 minutes); after that it expires
    /// and the message is delivered again.
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
            max_outstanding_bytes: 0,
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
        let reader = Reader {
            client: self.client,
            request: reopen_request(request),
            settle: Arc::clone(&settle),
            deliveries_tx,
            backoff: Backoff::new(min, max),
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
/// Dropping the subscriber ends the stream after sending pending
/// settlements in the background; [`close`](Subscriber::close) waits for
/// them.
pub struct Subscriber {
    subscription: String,
    ack_deadline: Duration,
    deliveries: mpsc::Receiver<Result<Delivery>>,
    settle: Arc<Settle>,
    reader: Option<JoinHandle<()>>,
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

    /// Sends pending acks, nacks and extensions, then ends the stream.
    /// Deliveries still held stay ackable afterwards.
    ///
    /// # Errors
    /// The first settlement the broker refused, or `UNAVAILABLE` when the
    /// broker could not be reached to send them.
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
}

impl Stream for Subscriber {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.deliveries.poll_recv(cx) {
                // Buffered when its stream broke: the broker took it back
                // and delivers it again, so it is not handed out twice.
                Poll::Ready(Some(Ok(delivery))) if !delivery.hand_out() => {}
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

/// The reader task: reads the stream, reopens it, hands deliveries over.
struct Reader {
    client: Client,
    request: SubscribeRequest,
    settle: Arc<Settle>,
    deliveries_tx: mpsc::Sender<Result<Delivery>>,
    backoff: Backoff,
    /// The deliveries to hand out in all, when `max_messages` was set.
    max_messages: Option<u32>,
    /// Of those, the ones the current stream still has to bring.
    remaining: Option<u32>,
}

/// How one stream ended.
enum End {
    /// The subscriber is gone.
    Dropped,
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
    async fn run(mut self, mut stream: Streaming<SubscribeResponse>) {
        loop {
            let epoch = self.settle.begin_epoch();
            let end = self.read(&mut stream, epoch).await;
            if matches!(end, End::Completed) {
                debug!("received every message asked for");
                return;
            }
            if matches!(end, End::Dropped) {
                // Acks first, so the broker does not redeliver what was
                // acknowledged when the stream ends.
                self.settle.set_closing();
                let _ = self.settle.flush().await;
            }
            self.settle.end_epoch(epoch);
            drop(stream);
            match end {
                End::Dropped | End::Completed => return,
                End::Failed(status) => return self.fail(status).await,
                End::Broken(Some(status)) => {
                    warn!(code = ?status.code(), "the subscribe stream broke; reconnecting");
                }
                End::Broken(None) => {
                    warn!("the subscribe stream ended early with OK; reconnecting");
                }
            }
            if !self.ask_for_the_rest() {
                debug!("every message asked for was handed out");
                return;
            }
            match self.reconnect().await {
                Some(reopened) => stream = reopened,
                None => return,
            }
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

    /// Reads frames until the stream ends or the subscriber is dropped.
    async fn read(&mut self, stream: &mut Streaming<SubscribeResponse>, epoch: u64) -> End {
        loop {
            let frame = tokio::select! {
                biased;
                () = self.deliveries_tx.closed() => return End::Dropped,
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
            // the deliveries wait in the buffer.
            let deliveries: Vec<Delivery> = messages
                .into_iter()
                .map(|m| Delivery::new(m, epoch, Arc::clone(&self.settle)))
                .collect();
            for delivery in deliveries {
                if self.deliveries_tx.send(Ok(delivery)).await.is_err() {
                    return End::Dropped;
                }
            }
            if self.remaining == Some(0) {
                return End::Completed;
            }
        }
    }

    /// Reopens the stream with backoff; `None` when the subscriber is gone
    /// or the broker refused for good (then the error was handed over).
    async fn reconnect(&mut self) -> Option<Streaming<SubscribeResponse>> {
        loop {
            let delay = self.backoff.next_delay();
            let mut service = self.client.subscriber_service();
            let opened = tokio::select! {
                () = self.deliveries_tx.closed() => return None,
                opened = async {
                    sleep(delay).await;
                    service.subscribe(self.request.clone()).await
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
