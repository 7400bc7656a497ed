//! [`Publisher`]: a cheap handle to a background task that batches queued
//! messages into requests on a `PublishStream` call (or into `Publish`
//! calls), keeps several batches in flight, and resolves each message's
//! [`PublishFuture`] with its offset or the error of its batch.
//!
//! This module holds the public API: the handle, the future and the
//! builder. The task lives in `publisher/task.rs`, the sending of a batch
//! (stream or call, retries, the fallback to calls) in
//! `publisher/send.rs`, the queue limits in
//! `publisher/room.rs` and the ordered publisher's pause in
//! `publisher/pause.rs`; the batching decisions in `batch.rs`. Nothing here
//! retries a `Publish` that may have reached the broker (that could store
//! a batch twice) unless every message of the batch has an id, and no
//! message is dropped without an answer to its future.

mod pause;
mod room;
mod send;
mod task;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tidings::v1::PublishMessage;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, info_span};

use crate::backoff;
use crate::batch::{BatchLimits, Pending, wire_size};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::Message;
use pause::Pause;
use room::Granted;
pub(crate) use room::{Permit, Room};
use send::{RetrySettings, Route, Sender};
use task::{Command, Task, TaskConfig};

/// The default [`PublisherBuilder::max_batch_messages`].
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 1000;
/// The default [`PublisherBuilder::max_batch_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The default [`PublisherBuilder::linger`]: none. Batches still form under
/// load, from the messages queued while every call slot is busy.
pub const DEFAULT_LINGER: Duration = Duration::ZERO;
/// The default [`PublisherBuilder::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// The default [`PublisherBuilder::max_queued_messages`]: room for every
/// call slot to carry a full batch, and as much again.
pub const DEFAULT_MAX_QUEUED_MESSAGES: usize =
    2 * DEFAULT_MAX_IN_FLIGHT * DEFAULT_MAX_BATCH_MESSAGES;
/// The default [`PublisherBuilder::max_queued_bytes`]: 64 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// The default [`PublisherBuilder::retry_window`]: 30 s.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// What [`Publisher::publish`] does when the publisher's queue is full
/// (see [`PublisherBuilder::max_queued_messages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenQueueFull {
    /// The message waits in its [`PublishFuture`] until there is room; it
    /// joins the queue when it gets room, in the order in which the
    /// waiting futures were first polled, behind everything queued before.
    /// Awaiting the futures is then what slows the producer down. A
    /// future dropped while it waits drops its message unsent.
    #[default]
    Wait,
    /// The future fails at once with [`Error::QueueFull`] and the message
    /// is not queued, like a Kafka producer's "queue full". An ordered
    /// publisher (`max_in_flight(1)`) also pauses, as after a failure, so
    /// that no later message overtakes the refused one: see "Order" on
    /// [`Publisher`].
    Fail,
}

/// Publishes messages to one topic, in batches, several batches at a time.
///
/// [`publish`](Publisher::publish) queues a message and returns a
/// [`PublishFuture`] that resolves to the message's offset once the broker
/// stored it durably (for a message whose id was stored already, the
/// original's offset), or to the reason it was not stored. A background task
/// cuts the queue into batches of up to
/// [`max_batch_messages`](PublisherBuilder::max_batch_messages) messages and
/// [`max_batch_bytes`](PublisherBuilder::max_batch_bytes) bytes, waiting at
/// most [`linger`](PublisherBuilder::linger) after a batch's first message,
/// and keeps up to [`max_in_flight`](PublisherBuilder::max_in_flight)
/// batches waiting for their answers at once (see "Transport"). Messages
/// queued together leave together: by default (no linger) a message is
/// sent as soon as a slot is free, with every message queued behind it, and while all slots
/// are busy new messages gather into the next batch — so batches grow with
/// the load and a lone message is never held back.
///
/// Clones share the queue and the task. Dropping every clone publishes
/// what is queued in the background; [`close`](Publisher::close) does the
/// same and waits for it.
///
/// # Memory
/// The queue holds at most
/// [`max_queued_messages`](PublisherBuilder::max_queued_messages) messages
/// and [`max_queued_bytes`](PublisherBuilder::max_queued_bytes) bytes
/// (default 16 000 and 64 MiB), counting every message from `publish` until
/// its future is answered: queued, in flight or being retried. When it is
/// full, `publish` either waits for room ([`WhenQueueFull::Wait`], the
/// default: the future holds the message and enters it into the queue when
/// there is room) or fails at once with [`Error::QueueFull`]
/// ([`WhenQueueFull::Fail`]). Either way the publisher's memory stays
/// bounded while the broker is down and the application keeps publishing.
/// When a message finds the queue full, the batch being gathered leaves
/// without waiting for the rest of its linger.
///
/// # Transport
/// By default the batches go as requests on one long-lived
/// `PublishStream` call of the publisher's own, opened by its first batch
/// and opened again by the first batch after it ended, with up to
/// `max_in_flight` requests waiting for their answers; a batch is one
/// request, as it would be one `Publish` call. A broker that answers
/// `PublishStream` with `UNIMPLEMENTED` (one from before it) stored
/// nothing: the batch goes as a unary `Publish` call, and so does every
/// later one of this publisher. A lone message larger than
/// [`max_batch_bytes`](PublisherBuilder::max_batch_bytes) always goes as a
/// unary call, so that a request over the broker's size limit cannot end
/// the stream. [`publish_stream(false)`](PublisherBuilder::publish_stream)
/// asks for unary calls only (for proxies that cut long-lived calls).
///
/// Everything below holds on either transport. A request the broker
/// refuses on the stream fails its messages with the status a `Publish`
/// call would have failed with, and the stream goes on. When the stream
/// ends — the broker shut down or restarted, the connection broke — the
/// batches it had not answered fail or are sent again exactly as `Publish`
/// calls cut off the same way (see Retries), and the next batch opens a new
/// stream. With a [request timeout](crate::ClientBuilder::request_timeout),
/// a batch not answered in time fails as a timed-out call, and the stream
/// is closed for a new one.
///
/// # Retries
/// A batch that never reached the broker — the connection for its call or
/// its stream could not be made (refused, unreachable, connect timeout, TLS
/// handshake) — is sent again, with backoff
/// ([`retry_backoff`](PublisherBuilder::retry_backoff), 50 ms doubling to
/// 5 s), until [`retry_window`](PublisherBuilder::retry_window) (default
/// 30 s) has passed since its first attempt; then it fails with that
/// `UNAVAILABLE`. Nothing else is retried, since the broker may have stored
/// a batch whose answer was lost: not the broker's own `UNAVAILABLE` (nor
/// a stream it ended with `UNAVAILABLE`), not a connection that broke
/// during the call, not a request timeout. Those fail
/// the batch at once. When the broker refuses a batch of several messages
/// as `INVALID_ARGUMENT` (say one message is too large), the messages are
/// sent again one by one, in order, so that only the bad one fails.
///
/// A batch in which every message has an id ([`Message::with_id`]) is
/// safe to send again even if the broker stored it: the broker stores an
/// id once within the topic's dedup window (2 minutes unless the topic
/// says otherwise) and answers a repeat with the original's offset. Such a
/// batch is also retried after the broker's `UNAVAILABLE`, a connection
/// that broke during the call, or a timeout, within the same retry window.
/// Keep the retry window shorter than the topic's dedup window, or a late
/// retry may store a message twice.
///
/// # Order
/// Messages are queued in the order of `publish` calls (or, for messages
/// that waited for room, the order in which their futures got it), and each
/// batch is stored contiguously in that order. With more than one batch in
/// flight (the default) batches may be stored in a different order than
/// they were cut, as with Pub/Sub publishers without ordering keys.
///
/// With `max_in_flight(1)` the publisher is *ordered*: the topic holds its
/// messages exactly in publish order, and a failure cannot be overtaken.
/// When a message fails (after any retries), every message queued behind
/// it fails with [`Error::Paused`], whose source is the first failure, and
/// so does every later `publish`, until [`resume`](Publisher::resume) is
/// called. Publish the failed messages again after resuming, and order is
/// kept. A message waiting for room when the publisher pauses fails the
/// same way. A message refused with [`Error::QueueFull`] pauses the
/// publisher too (the messages queued before it are still sent). Dropping
/// a future that waits for room loses its message, and nothing pauses:
/// await the futures of an ordered publisher.
///
/// # Answers
/// Every queued message's future gets an answer: its offset, the error of
/// its batch (for example `NOT_FOUND` for an unknown topic, `UNAVAILABLE`
/// when the broker stayed unreachable for the whole retry window),
/// [`Error::Paused`], or [`Error::Closed`].
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// What the handles share; dropping the last one (and the last future
/// waiting for room) closes the command channel, which tells the task to
/// publish what is left and stop.
struct Shared {
    topic: String,
    commands: mpsc::UnboundedSender<Command>,
    closed: AtomicBool,
    room: Arc<Room>,
    when_full: WhenQueueFull,
    pause: Arc<Pause>,
    /// `max_in_flight(1)`: a refused message pauses the publisher.
    ordered: bool,
}

impl Shared {
    /// Whether a message may be queued now: not after `close`, not while
    /// paused.
    fn accepts(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.pause.check()
    }

    /// Hands a message that has room to the task, then passes the turn in
    /// line on: the next in line cannot queue before this message.
    fn enqueue(
        &self,
        message: PublishMessage,
        size: usize,
        granted: Granted,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let Granted { permit, turn } = granted;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            message,
            size,
            reply,
            permit,
        };
        let sent = self.commands.send(Command::Publish(pending));
        drop(turn);
        sent.map(|()| answer).map_err(|_| Error::Closed)
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.shared.topic)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .field("paused", &self.shared.pause.is_paused())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The topic this publisher publishes to.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Queues a message; the future resolves to its offset once the broker
    /// stored it, or to the error of its batch.
    ///
    /// When the queue has room the message is queued at once, and dropping
    /// the future does not cancel the publish. When the queue is full, see
    /// [`WhenQueueFull`]: the future either fails at once with
    /// [`Error::QueueFull`] or holds the message until there is room (and
    /// then dropping it before it got room drops the message).
    ///
    /// It fails at once with [`Error::Closed`] after
    /// [`close`](Publisher::close), and with [`Error::Paused`] while an
    /// ordered publisher is paused.
    pub fn publish(&self, message: impl Into<Message>) -> PublishFuture {
        if let Err(error) = self.shared.accepts() {
            return PublishFuture::failed(error);
        }
        let message = PublishMessage::from(message.into());
        let size = wire_size(&message);
        if let Some(granted) = self.shared.room.try_take(size) {
            return match self.shared.enqueue(message, size, granted) {
                Ok(answer) => PublishFuture::queued(answer),
                Err(error) => PublishFuture::failed(error),
            };
        }
        match self.shared.when_full {
            WhenQueueFull::Fail => {
                let error = Error::QueueFull {
                    max_messages: self.shared.room.max_messages(),
                    max_bytes: self.shared.room.max_bytes(),
                };
                if self.shared.ordered {
                    // Nothing may overtake the refused message. The task
                    // is not paused: what is queued is ahead of it.
                    self.shared.pause.set(&error);
                }
                PublishFuture::failed(error)
            }
            WhenQueueFull::Wait => {
                let shared = Arc::clone(&self.shared);
                PublishFuture {
                    state: State::WaitingForRoom(Box::pin(async move {
                        let granted = Arc::clone(&shared.room).take(size).await;
                        shared.accepts()?;
                        shared.enqueue(message, size, granted)
                    })),
                }
            }
        }
    }

    /// Waits until every message queued before this call is stored (or
    /// failed).
    ///
    /// # Errors
    /// The first error of the batches waited for. Each message's own future
    /// still gets its own answer.
    pub async fn flush(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.shared.commands.send(Command::Flush(reply)).is_err() {
            // Closed: close() already waited for everything.
            return Ok(());
        }
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// Flushes, then stops: later `publish` calls (on any clone) fail with
    /// [`Error::Closed`]. Closing twice is fine. A batch being retried is
    /// waited for, up to its retry window.
    ///
    /// # Errors
    /// As [`flush`](Publisher::flush).
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let (reply, answer) = oneshot::channel();
        if self.shared.commands.send(Command::Close(reply)).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// Whether this ordered publisher is paused after a failure (see
    /// "Order" on [`Publisher`]). Only a publisher with `max_in_flight(1)`
    /// pauses.
    pub fn is_paused(&self) -> bool {
        self.shared.pause.is_paused()
    }

    /// Lifts the pause of an ordered publisher after a failure (or a
    /// [`Error::QueueFull`]): messages published from now on are sent
    /// again. Publish the messages that failed first (the one that failed
    /// with the cause, then those that failed with [`Error::Paused`], in
    /// their order). Does nothing when the publisher is not paused.
    pub fn resume(&self) {
        if let Some(epoch) = self.shared.pause.lift() {
            // After `lift`, so anything published after this call comes
            // after the resume in the task's order; before the task sees
            // it, it refuses whatever was published while paused.
            let _ = self.shared.commands.send(Command::Resume(epoch));
        }
    }
}

/// The answer to one [`Publisher::publish`]: the message's offset in its
/// topic, or why it was not stored. A message that was queued is published
/// whether or not this future is awaited; one that waits for room
/// ([`WhenQueueFull::Wait`]) is queued only while the future is polled.
#[must_use = "await the future to learn the message's offset or error (a message waiting for room is queued only while its future is polled)"]
pub struct PublishFuture {
    state: State,
}

/// A message waiting for room, then handing itself to the task.
type ForRoom = Pin<Box<dyn Future<Output = Result<oneshot::Receiver<Result<u64>>>> + Send + Sync>>;

enum State {
    WaitingForRoom(ForRoom),
    Queued(oneshot::Receiver<Result<u64>>),
    Failed(Option<Error>),
}

impl PublishFuture {
    fn queued(answer: oneshot::Receiver<Result<u64>>) -> Self {
        Self {
            state: State::Queued(answer),
        }
    }

    fn failed(error: Error) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::WaitingForRoom(_) => "waiting for room",
            State::Queued(_) => "queued",
            State::Failed(_) => "failed",
        };
        f.debug_struct("PublishFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for PublishFuture {
    type Output = Result<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                State::WaitingForRoom(waiting) => match ready!(waiting.as_mut().poll(cx)) {
                    Ok(answer) => self.state = State::Queued(answer),
                    Err(error) => self.state = State::Failed(Some(error)),
                },
                // A reply dropped unanswered means the task is gone (its
                // runtime shut down).
                State::Queued(answer) => {
                    return Pin::new(answer)
                        .poll(cx)
                        .map(|answer| answer.unwrap_or(Err(Error::Closed)));
                }
                State::Failed(error) => {
                    return Poll::Ready(Err(error.take().unwrap_or(Error::Closed)));
                }
            }
        }
    }
}

/// Settings of a [`Publisher`]; made by [`Client::publisher_builder`].
///
/// ```no_run
/// # async fn example(client: tidings_client::Client) {
/// use std::time::Duration;
/// use tidings_client::WhenQueueFull;
///
/// let publisher = client
///     .publisher_builder("order.placed")
///     .max_batch_messages(500)
///     .linger(Duration::from_millis(5))
///     .max_in_flight(1) // keep publish order in the topic
///     .max_queued_messages(10_000)
///     .when_queue_full(WhenQueueFull::Fail)
///     .retry_window(Duration::from_secs(60))
///     .build();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    client: Client,
    topic: String,
    limits: BatchLimits,
    max_in_flight: usize,
    max_queued_messages: usize,
    max_queued_bytes: usize,
    when_full: WhenQueueFull,
    retry: RetrySettings,
    stream: bool,
}

impl PublisherBuilder {
    pub(crate) fn new(client: Client, topic: String) -> Self {
        Self {
            client,
            topic,
            limits: BatchLimits {
                max_messages: DEFAULT_MAX_BATCH_MESSAGES,
                max_bytes: DEFAULT_MAX_BATCH_BYTES,
                linger: DEFAULT_LINGER,
            },
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            when_full: WhenQueueFull::default(),
            retry: RetrySettings {
                window: DEFAULT_RETRY_WINDOW,
                backoff_min: backoff::DEFAULT_MIN,
                backoff_max: backoff::DEFAULT_MAX,
            },
            stream: true,
        }
    }

    /// Most messages in one batch: one request, or one `Publish` call
    /// (default 1000; 0 counts as 1).
    pub fn max_batch_messages(mut self, max: usize) -> Self {
        self.limits.max_messages = max.max(1);
        self
    }

    /// Most bytes in one batch (default 1 MiB); a larger message
    /// is sent alone, as a unary `Publish` call. Keep it under the broker's
    /// request limit (4 MiB by default).
    pub fn max_batch_bytes(mut self, max: usize) -> Self {
        self.limits.max_bytes = max.max(1);
        self
    }

    /// How long a batch's first message waits for more before the batch is
    /// sent (default zero: at once, with whatever is queued by then, and
    /// batching what queues up while every slot is busy). A linger trades
    /// latency for fewer, larger calls when messages trickle in.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.limits.linger = linger;
        self
    }

    /// Most batches waiting for their answers at once, as requests on the
    /// stream or as calls (default 8; 0 counts as 1).
    /// With 1 the publisher is ordered: messages are stored in publish
    /// order, and a failure pauses it until [`Publisher::resume`].
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Most messages the publisher holds at once, from `publish` until
    /// their futures are answered (default 16 000; 0 counts as 1).
    pub fn max_queued_messages(mut self, max: usize) -> Self {
        self.max_queued_messages = max.max(1);
        self
    }

    /// Most bytes the publisher holds at once, counted as the messages
    /// are encoded in a request (default 64 MiB; 0 counts as 1). A single
    /// larger message is taken when the queue is empty.
    pub fn max_queued_bytes(mut self, max: usize) -> Self {
        self.max_queued_bytes = max.max(1);
        self
    }

    /// What `publish` does when the queue is full (default
    /// [`WhenQueueFull::Wait`]).
    pub fn when_queue_full(mut self, when_full: WhenQueueFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// How long a batch that could not reach the broker (no connection
    /// could be made) keeps being sent again, from its first attempt
    /// (default 30 s; zero sends each batch once). Only such batches are
    /// retried: see "Retries" on [`Publisher`].
    pub fn retry_window(mut self, window: Duration) -> Self {
        self.retry.window = window;
        self
    }

    /// The delays between the attempts of a batch that could not reach the
    /// broker: doubling from `min` to `max` (default 50 ms to 5 s).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry.backoff_min = min;
        self.retry.backoff_max = max;
        self
    }

    /// Whether batches go as requests on one long-lived `PublishStream`
    /// call (true, the default) or as unary `Publish` calls (false): for a
    /// network path (a proxy, a load balancer) that cuts long-lived calls,
    /// or to measure the unary shape. Either way the answers, order,
    /// errors and retries are the same; see "Transport" on [`Publisher`].
    pub fn publish_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Starts the publisher's task.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn build(self) -> Publisher {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let room = Room::new(self.max_queued_messages, self.max_queued_bytes);
        let pause = Arc::new(Pause::default());
        let ordered = self.max_in_flight == 1;
        let sender = Sender {
            route: Route::new(&self.client, self.stream, self.limits.max_bytes),
            client: self.client,
            topic: self.topic.clone(),
            retry: self.retry,
            ordered,
        };
        let config = TaskConfig {
            sender,
            limits: self.limits,
            max_in_flight: self.max_in_flight,
            room: Arc::clone(&room),
            pause: Arc::clone(&pause),
        };
        let task = Task::new(config, commands_rx);
        let span = info_span!("publisher", topic = %self.topic);
        tokio::spawn(task.run().instrument(span));
        Publisher {
            shared: Arc::new(Shared {
                topic: self.topic,
                commands,
                closed: AtomicBool::new(false),
                room,
                when_full: self.when_full,
                pause,
                ordered,
            }),
        }
    }
}
