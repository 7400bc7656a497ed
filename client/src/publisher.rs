//! [`Publisher`]: a cheap handle to a background task that batches queued
//! messages into `Publish` calls, keeps several batches in flight, and
//! resolves each message's [`PublishFuture`] with its offset or the error
//! of its batch.
//!
//! This module holds the public API: the handle, the future and the
//! builder. The task lives in `publisher/task.rs` and the `Publish` call in
//! `publisher/send.rs`; the batching decisions in `batch.rs`. Nothing here
//! retries a `Publish` that may have reached the broker (that could store
//! a batch twice), and no message is dropped without an answer to its
//! future.

mod send;
mod task;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tidings::v1::PublishMessage;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, info_span};

use crate::batch::{BatchLimits, Pending};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::Message;
use send::Sender;
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

/// Publishes messages to one topic, in batches, several batches at a time.
///
/// [`publish`](Publisher::publish) queues a message at once (it never waits)
/// and returns a [`PublishFuture`] that resolves to the message's offset
/// once the broker stored it durably, or to the error of its batch. A
/// background task cuts the queue into batches of up to
/// [`max_batch_messages`](PublisherBuilder::max_batch_messages) messages and
/// [`max_batch_bytes`](PublisherBuilder::max_batch_bytes) bytes, waiting at
/// most [`linger`](PublisherBuilder::linger) after a batch's first message,
/// and keeps up to [`max_in_flight`](PublisherBuilder::max_in_flight)
/// `Publish` calls running at once. Messages queued together leave
/// together: by default (no linger) a message is sent as soon as a call
/// slot is free, with every message queued behind it, and while all slots
/// are busy new messages gather into the next batch — so batches grow with
/// the load and a lone message is never held back.
///
/// Clones share the queue and the task. Dropping every clone publishes
/// what is queued in the background; [`close`](Publisher::close) does the
/// same and waits for it.
///
/// # Order
/// Messages are queued in the order of `publish` calls, and each batch is
/// stored contiguously in that order. With `max_in_flight(1)` the topic
/// holds a publisher's messages exactly in publish order. With more batches
/// in flight (the default) batches may be stored in a different order than
/// they were cut, as with Pub/Sub publishers without ordering keys.
///
/// # Errors and retries
/// Every message's future gets an answer: its offset, the error of its
/// batch (for example `NOT_FOUND` for an unknown topic, `UNAVAILABLE` when
/// the broker is down), or [`Error::Closed`]. Failed batches are not
/// retried, since the broker may have stored a batch whose answer was lost.
/// When the broker refuses a batch of several messages as
/// `INVALID_ARGUMENT` (say one message is too large), the messages are sent
/// again one by one, in order, so that only the bad one fails.
///
/// # Memory
/// The queue is not bounded: `publish` never blocks and never loses a
/// message. Backpressure comes from awaiting the futures — a producer that
/// awaits each message (or keeps a bounded window of futures, or calls
/// [`flush`](Publisher::flush) now and then) never gets ahead of the
/// broker by more than that.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// What the handles share; dropping the last one closes the command
/// channel, which tells the task to publish what is left and stop.
struct Shared {
    topic: String,
    commands: mpsc::UnboundedSender<Command>,
    closed: AtomicBool,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.shared.topic)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The topic this publisher publishes to.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Queues a message; the future resolves to its offset once the broker
    /// stored it, or to the error of its batch. Dropping the future does not
    /// cancel the publish.
    pub fn publish(&self, message: impl Into<Message>) -> PublishFuture {
        if self.shared.closed.load(Ordering::Acquire) {
            return PublishFuture::failed(Error::Closed);
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending::new(PublishMessage::from(message.into()), reply);
        match self.shared.commands.send(Command::Publish(pending)) {
            Ok(()) => PublishFuture {
                state: State::Waiting(answer),
            },
            Err(_) => PublishFuture::failed(Error::Closed),
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
    /// [`Error::Closed`]. Closing twice is fine.
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
}

/// The answer to one [`Publisher::publish`]: the message's offset in its
/// topic, or why it was not stored. The message is published whether or not
/// this future is awaited.
#[derive(Debug)]
#[must_use = "the message is published either way; await the future to learn its offset or error"]
pub struct PublishFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Waiting(oneshot::Receiver<Result<u64>>),
    Failed(Option<Error>),
}

impl PublishFuture {
    fn failed(error: Error) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl Future for PublishFuture {
    type Output = Result<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            // A reply dropped unanswered means the task is gone (its
            // runtime shut down).
            State::Waiting(answer) => Pin::new(answer)
                .poll(cx)
                .map(|answer| answer.unwrap_or(Err(Error::Closed))),
            State::Failed(error) => Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
        }
    }
}

/// Settings of a [`Publisher`]; made by [`Client::publisher_builder`].
///
/// ```no_run
/// # async fn example(client: tidings_client::Client) {
/// use std::time::Duration;
///
/// let publisher = client
///     .publisher_builder("order.placed")
///     .max_batch_messages(500)
///     .linger(Duration::from_millis(5))
///     .max_in_flight(1) // keep publish order in the topic
///     .build();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    client: Client,
    topic: String,
    limits: BatchLimits,
    max_in_flight: usize,
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
        }
    }

    /// Most messages in one `Publish` call (default 1000; 0 counts as 1).
    pub fn max_batch_messages(mut self, max: usize) -> Self {
        self.limits.max_messages = max.max(1);
        self
    }

    /// Most bytes in one `Publish` call (default 1 MiB); a larger message
    /// is sent alone. Keep it under the broker's request limit (4 MiB by
    /// default).
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

    /// Most `Publish` calls running at once (default 8; 0 counts as 1).
    /// With 1, messages are stored in publish order.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Starts the publisher's task.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn build(self) -> Publisher {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let sender = Sender {
            client: self.client,
            topic: self.topic.clone(),
        };
        let config = TaskConfig {
            sender,
            limits: self.limits,
            max_in_flight: self.max_in_flight,
        };
        let task = Task::new(config, commands_rx);
        let span = info_span!("publisher", topic = %self.topic);
        tokio::spawn(task.run().instrument(span));
        Publisher {
            shared: Arc::new(Shared {
                topic: self.topic,
                commands,
                closed: AtomicBool::new(false),
            }),
        }
    }
}
