//! [`Sender`]: sends one batch, as a request on the publisher's
//! `PublishStream` call or as a unary `Publish` call, and reports one
//! result per message. It sends the batch again, with backoff, only when it
//! certainly never reached the broker, or when every message has an id the
//! broker deduplicates by; after a refusal of the batch's content it sends
//! the messages one by one. A broker that answers `PublishStream` with
//! `UNIMPLEMENTED` gets unary calls from then on.
//!
//! It answers no futures and changes no publisher state: the task does
//! that with the [`Sent`] it returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidings::v1::PublishMessage;
use tokio::time::{Instant, sleep};
use tracing::{debug, info};

use crate::backoff::Backoff;
use crate::batch::{Batch, Pending};
use crate::client::Client;
use crate::error::{Error, Result, is_retryable, never_sent};
use crate::publish_stream::{Failure, PublishStream};
use crate::types::Published;

/// How a batch that could not be sent is tried again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetrySettings {
    /// How long after its first attempt a batch is still tried again.
    pub(crate) window: Duration,
    /// The first delay between attempts.
    pub(crate) backoff_min: Duration,
    /// The largest delay between attempts.
    pub(crate) backoff_max: Duration,
}

/// What every send of one publisher needs.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) client: Client,
    pub(crate) topic: String,
    pub(crate) retry: RetrySettings,
    /// Stop at a message's failure: the messages after it are not sent.
    pub(crate) ordered: bool,
    /// How batches travel.
    pub(crate) route: Route,
}

/// How a [`Sender`]'s batches travel.
#[derive(Debug)]
pub(crate) struct Route {
    /// The publisher's stream; `None` when it publishes with unary calls
    /// only.
    stream: Option<PublishStream>,
    /// A batch of more bytes than this (a lone message over
    /// `max_batch_bytes`) goes as a unary call: a request over the broker's
    /// size limit fails alone there, where on the stream it would end the
    /// call and fail every request waiting on it.
    max_stream_bytes: usize,
    /// Set once the broker answered `PublishStream` with `UNIMPLEMENTED`.
    unimplemented: AtomicBool,
}

impl Route {
    /// Batches of up to `max_stream_bytes` bytes on a stream of `client`
    /// when `stream` is true, else unary calls only.
    pub(crate) fn new(client: &Client, stream: bool, max_stream_bytes: usize) -> Self {
        Self {
            stream: stream.then(|| client.publish_stream()),
            max_stream_bytes,
            unimplemented: AtomicBool::new(false),
        }
    }

    /// The stream a batch of `pendings` goes on, if it goes on one.
    fn stream_for(&self, pendings: &[Pending]) -> Option<&PublishStream> {
        let bytes: usize = pendings.iter().map(|p| p.size).sum();
        self.stream
            .as_ref()
            .filter(|_| bytes <= self.max_stream_bytes)
            .filter(|_| !self.unimplemented.load(Ordering::Relaxed))
    }
}

/// A batch after its send: the messages, and a result for each one that
/// was sent, in order. An ordered sender leaves the results short when it
/// stopped at a failure; the messages without a result were not sent.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) seq: u64,
    pub(crate) pendings: Vec<Pending>,
    pub(crate) results: Vec<Result<u64>>,
}

impl Sender {
    /// Sends batch `seq`.
    pub(crate) async fn send(&self, (seq, pendings): Batch) -> Sent {
        debug!(topic = %self.topic, seq, messages = pendings.len(), "publishing a batch");
        let results = match self.call(&pendings).await {
            Ok(offsets) => offsets.into_iter().map(Ok).collect(),
            Err(error) if pendings.len() > 1 && is_per_message(&error) => {
                debug!(topic = %self.topic, seq, %error, "batch refused; sending its messages one by one");
                self.one_by_one(&pendings).await
            }
            Err(error) => pendings.iter().map(|_| Err(error.duplicate())).collect(),
        };
        Sent {
            seq,
            pendings,
            results,
        }
    }

    /// Sends each message alone, in order; an ordered sender stops at the
    /// first failure.
    async fn one_by_one(&self, pendings: &[Pending]) -> Vec<Result<u64>> {
        let mut results = Vec::with_capacity(pendings.len());
        for pending in pendings {
            let result = self
                .call(std::slice::from_ref(pending))
                .await
                .map(|offsets| offsets[0]);
            let failed = result.is_err();
            results.push(result);
            if failed && self.ordered {
                break;
            }
        }
        results
    }

    /// One publish of `pendings` ([`Sender::publish_once`]), made again with backoff while it fails
    /// in a way that is safe to retry, for as long as the retry window
    /// lasts. The last attempt is made when the window ends.
    async fn call(&self, pendings: &[Pending]) -> Result<Vec<u64>> {
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry.backoff_min, self.retry.backoff_max);
        let mut attempt = 1_u32;
        loop {
            let error = match self.publish_once(pendings).await {
                Ok(offsets) => return Ok(offsets),
                Err(error) => error,
            };
            let left = self.retry.window.saturating_sub(started.elapsed());
            if left.is_zero() || !is_safe_to_retry(&error, all_have_ids(pendings)) {
                return Err(error);
            }
            let delay = backoff.next_delay().min(left);
            debug!(topic = %self.topic, attempt, ?delay, %error, "batch not sent; trying again");
            sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt at `pendings`: a request on the stream, or a unary
    /// call when the batch does not go on the stream or the broker turns
    /// out not to serve it.
    async fn publish_once(&self, pendings: &[Pending]) -> Result<Vec<u64>> {
        let messages =
            || -> Vec<PublishMessage> { pendings.iter().map(|p| p.message.clone()).collect() };
        let offsets = |published: Vec<Published>| published.into_iter().map(|p| p.offset).collect();
        if let Some(stream) = self.route.stream_for(pendings) {
            match stream.publish(&self.topic, messages()).await {
                Ok(published) => return Ok(offsets(published)),
                Err(Failure::Failed(error)) => return Err(error),
                // Nothing was stored: the same batch goes as a call.
                Err(Failure::Unimplemented(status)) => {
                    if !self.route.unimplemented.swap(true, Ordering::Relaxed) {
                        info!(topic = %self.topic, status = %status.message(), "the broker does not serve PublishStream; publishing with unary Publish calls");
                    }
                }
            }
        }
        self.client
            .publish_batch(&self.topic, messages())
            .await
            .map(offsets)
    }
}

/// Whether a failed `Publish` may be made again with no risk of storing
/// its messages twice: when it never reached the broker, or, for a batch
/// whose messages all carry an id (`with_ids`), after any transient
/// failure — `UNAVAILABLE` (the broker's own), a connection that broke
/// during the call (which `tonic` may also report as `CANCELLED`,
/// `UNKNOWN` or `INTERNAL` with the transport's error as the source), or a
/// timeout (the broker's `DEADLINE_EXCEEDED`, or the client's own, which
/// `tonic` reports as `CANCELLED`) — since the broker stores a repeated id
/// once. This is the one place that decides.
fn is_safe_to_retry(error: &Error, with_ids: bool) -> bool {
    error.status().is_some_and(|status| {
        never_sent(status)
            || (with_ids
                && (is_retryable(status) || status.code() == tonic::Code::DeadlineExceeded))
    })
}

/// Whether every message of a batch carries an id.
fn all_have_ids(pendings: &[Pending]) -> bool {
    pendings.iter().all(|p| !p.message.id.is_empty())
}

/// Whether a refused batch may hold good messages beside a bad one: the
/// broker (or the transport, for an oversized request) refused its content.
fn is_per_message(error: &Error) -> bool {
    matches!(
        error.code(),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange
    )
}

#[cfg(test)]
mod tests {
    use tidings::v1::PublishMessage;
    use tokio::sync::oneshot;

    use super::*;
    use crate::batch::wire_size;
    use crate::publisher::Room;

    /// A sender to a port where nothing listens.
    fn sender_to_nowhere(retry: RetrySettings) -> Sender {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let client = Client::builder(format!("http://{addr}"))
            .connect_lazy()
            .expect("a valid URL");
        Sender {
            route: Route::new(&client, true, usize::MAX),
            client,
            topic: "t".into(),
            retry,
            ordered: false,
        }
    }

    fn pending(room: &std::sync::Arc<Room>) -> (Pending, oneshot::Receiver<Result<u64>>) {
        let message = PublishMessage {
            payload: "m".into(),
            ..Default::default()
        };
        let size = wire_size(&message);
        let (reply, answer) = oneshot::channel();
        let permit = room.try_take(size).expect("room").permit;
        let pending = Pending {
            message,
            size,
            reply,
            permit,
        };
        (pending, answer)
    }

    /// What the retries rest on: a `Publish` to a broker that cannot be
    /// reached fails as never sent.
    #[tokio::test]
    async fn a_refused_connection_counts_as_never_sent() {
        let sender = sender_to_nowhere(RetrySettings {
            window: Duration::ZERO,
            backoff_min: Duration::ZERO,
            backoff_max: Duration::ZERO,
        });
        let err = sender
            .client
            .publish_batch("t", Vec::new())
            .await
            .expect_err("nothing listens");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(is_safe_to_retry(&err, false), "{err:?}");
    }

    #[tokio::test]
    async fn an_unsent_batch_is_tried_until_the_window_ends() {
        let window = Duration::from_millis(200);
        let sender = sender_to_nowhere(RetrySettings {
            window,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
        });
        let room = Room::new(10, 1 << 20);
        let (pending, _answer) = pending(&room);
        let started = Instant::now();
        let sent = sender.send((7, vec![pending])).await;
        assert!(
            started.elapsed() >= window,
            "gave up after {:?}",
            started.elapsed()
        );
        assert_eq!(sent.seq, 7);
        assert_eq!(sent.pendings.len(), 1);
        let [Err(err)] = &sent.results[..] else {
            panic!("one failure expected: {:?}", sent.results);
        };
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn only_a_call_that_never_left_is_safe_to_retry() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        let unsent = Error::from(tonic::Status::from_error(Box::new(connect)));
        assert!(is_safe_to_retry(&unsent, false));
        let stored_maybe = Error::from(tonic::Status::unavailable("shutting down"));
        assert!(!is_safe_to_retry(&stored_maybe, false));
        assert!(!is_safe_to_retry(&Error::Closed, false));
    }

    #[test]
    fn with_ids_a_call_that_may_have_been_stored_is_safe_to_retry_too() {
        let stored_maybe = Error::from(tonic::Status::unavailable("shutting down"));
        assert!(is_safe_to_retry(&stored_maybe, true));
        let timed_out = Error::from(tonic::Status::deadline_exceeded("timeout"));
        assert!(is_safe_to_retry(&timed_out, true));
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(
            expired.code(),
            tonic::Code::Cancelled,
            "the client's own timeout"
        );
        assert!(is_safe_to_retry(&Error::from(expired), true));
        let refused = Error::from(tonic::Status::invalid_argument("too large"));
        assert!(!is_safe_to_retry(&refused, true));
        let cancelled = Error::from(tonic::Status::cancelled("sent by the broker"));
        assert!(!is_safe_to_retry(&cancelled, true));
        assert!(!is_safe_to_retry(&Error::Closed, true));
    }
}
