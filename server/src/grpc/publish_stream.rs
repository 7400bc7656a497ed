//! `PublishStream`: many publishes on one call, each request a `Publish`,
//! answered in request order.
//!
//! One task per stream reads requests and starts each publish with
//! [`Engine::start_publish`](crate::broker::Engine::start_publish), which
//! returns once the publish has its place among the engine's writes.
//! Starting them one after another, in the order read, is what stores them
//! in request order; awaiting their outcomes together (in a
//! [`FuturesOrdered`], which yields them in the order started) is what
//! lets the writer's group commit take many of them in one write.
//!
//! Flow control: at most [`WINDOW_REQUESTS`] requests, or about
//! [`WINDOW_BYTES`] of them, wait for their answers; beyond that the task
//! stops reading, so HTTP/2 flow control holds the publisher back. The
//! answers go out through a bounded channel: a publisher that does not
//! read them stops the task too.
//!
//! Shutdown: when `stop` is cancelled the task stops reading, answers
//! every request it started, and ends the stream with UNAVAILABLE; it then
//! drops what the publisher still sends for a moment, so that the
//! connection stays open until the publisher has read that status. A
//! publisher that half-closes gets its answers and then OK. Nothing here
//! decides how a publish is stored.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use futures::stream::{FuturesOrdered, StreamExt as _};
use prost::Message as _;
use tidings::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument as _, Span, debug};

use super::convert::PublishCommand;
use super::limits::read_failure;
use super::wire::PublishRequest;
use crate::auth::Caller;
use crate::broker::SharedEngine;
use crate::metrics::Telemetry;

/// The most requests of one stream that may wait for their answers. A
/// publisher keeping 256 in flight (what the client and the benchmarks
/// use) never meets it, so it runs at full speed; four times that leaves
/// room for bursts, while the broker holds at most this many requests per
/// stream.
pub(super) const WINDOW_REQUESTS: usize = 1024;

/// About the most bytes of requests (as encoded on the wire) of one stream
/// that may wait for their answers: 256 requests of 64 KiB. A request is
/// always read when none waits, whatever its size (the transport limit
/// bounds it).
pub(super) const WINDOW_BYTES: usize = 16 << 20;

/// How long a stream that ended with a status goes on reading what the
/// publisher still sends (see [`linger`]): time for the publisher to read
/// the status and stop.
const LINGER: Duration = Duration::from_secs(1);

/// Answers buffered between the stream's task and the transport.
const ANSWERS_BUFFERED: usize = 128;

/// The status that ends a stream when the broker shuts down.
const SHUTTING_DOWN: &str =
    "the broker is shutting down; requests after the last answer were not stored";

/// The response stream of `PublishStream`.
pub type PublishStreamResponses =
    Pin<Box<dyn Stream<Item = Result<v1::PublishStreamResponse, Status>> + Send>>;

/// The answer to one request, and the bytes it held in the window.
type Answer = (v1::PublishStreamResponse, usize);

/// The future of an [`Answer`].
type WaitingAnswer = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Starts requests: returns once a request has its place among the
/// writes, with the future of its answer.
trait Start {
    /// Starts `request`, which holds `bytes` of the window.
    fn start(
        &self,
        request: PublishRequest,
        bytes: usize,
    ) -> impl Future<Output = WaitingAnswer> + Send;
}

/// What one stream publishes with, for whom.
pub(super) struct PublishStream {
    /// Where the requests are stored.
    pub(super) broker: SharedEngine,
    /// Where each publish's time goes.
    pub(super) telemetry: Telemetry,
    /// Who opened the stream: each request's topic needs its `publish`
    /// grant.
    pub(super) caller: Caller,
    /// Cancelled when the broker starts shutting down.
    pub(super) stop: CancellationToken,
}

impl PublishStream {
    /// Serves `requests` from a task of its own; returns the answers.
    pub(super) fn serve(
        self,
        requests: impl Stream<Item = Result<PublishRequest, Status>> + Send + Unpin + 'static,
    ) -> PublishStreamResponses {
        let (answers_tx, answers_rx) = mpsc::channel(ANSWERS_BUFFERED);
        let span = Span::current();
        let stop = self.stop.clone();
        tokio::spawn(run(requests, self, stop, answers_tx).instrument(span));
        Box::pin(ReceiverStream::new(answers_rx))
    }
}

/// Reads requests, starts them with `starter` and answers them, in order,
/// until the publisher half-closes, the stream fails or `stop` is
/// cancelled; then answers what it started and ends the stream. Returns
/// early when the publisher is gone.
async fn run(
    mut requests: impl Stream<Item = Result<PublishRequest, Status>> + Unpin,
    starter: impl Start,
    stop: CancellationToken,
    answers_tx: mpsc::Sender<Result<v1::PublishStreamResponse, Status>>,
) {
    let mut waiting = FuturesOrdered::new();
    let mut waiting_bytes = 0;
    // One future for the whole loop: a fresh one per turn would register
    // with the token, and leave it, for every request.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let end = loop {
        let room =
            waiting.len() < WINDOW_REQUESTS && (waiting_bytes < WINDOW_BYTES || waiting.is_empty());
        tokio::select! {
            biased;
            () = &mut stopped => break Some(Status::unavailable(SHUTTING_DOWN)),
            Some((answer, bytes)) = waiting.next(), if !waiting.is_empty() => {
                waiting_bytes -= bytes;
                if answers_tx.send(Ok(answer)).await.is_err() {
                    debug!("publisher left");
                    return;
                }
            }
            read = requests.next(), if room => match read {
                Some(Ok(request)) => {
                    let bytes = request.encoded_len();
                    waiting_bytes += bytes;
                    waiting.push_back(starter.start(request, bytes).await);
                }
                None => break None,
                Some(Err(status)) => break Some(read_failure(status)),
            },
        }
    };
    debug!(waiting = waiting.len(), "no longer reading");
    while let Some((answer, _)) = waiting.next().await {
        if answers_tx.send(Ok(answer)).await.is_err() {
            return;
        }
    }
    if let Some(status) = end {
        debug!(code = ?status.code(), "ending");
        // The last word: a blocking send. It fails only when the publisher
        // is gone.
        if answers_tx.send(Err(status)).await.is_ok() {
            drop(answers_tx);
            linger(requests).await;
        }
    }
}

/// Reads and drops what the publisher still sends after the stream's
/// status went out, until it stops or [`LINGER`] has passed. While a
/// request stream is open its connection stays open too, even as the
/// broker shuts down; a connection closed with data unread in it is reset
/// by the system, and a reset can destroy the status before the publisher
/// has read it.
async fn linger(mut requests: impl Stream<Item = Result<PublishRequest, Status>> + Unpin) {
    let drained = async { while let Some(Ok(_)) = requests.next().await {} };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

impl Start for PublishStream {
    /// Starts publishing `request` as `Publish` would; a failed request's
    /// answer is ready at once.
    async fn start(&self, request: PublishRequest, bytes: usize) -> WaitingAnswer {
        let started = Instant::now();
        let telemetry = self.telemetry.clone();
        let failed = |status: Status| -> WaitingAnswer {
            telemetry.publish_stream_request(status.code());
            Box::pin(std::future::ready((failure(&status), bytes)))
        };
        let command = match PublishCommand::try_from(request) {
            Ok(command) => command,
            Err(err) => return failed(err.into()),
        };
        if let Err(err) = self.caller.publish(command.topic.as_str()) {
            return failed(err.into());
        }
        let pending = match self
            .broker
            .start_publish(&command.topic, command.messages)
            .await
        {
            Ok(pending) => pending,
            Err(err) => return failed(err.into()),
        };
        Box::pin(async move {
            let answer = match pending.await {
                Ok(published) => {
                    telemetry.publish_took(started.elapsed());
                    telemetry.publish_stream_request(tonic::Code::Ok);
                    v1::PublishStreamResponse {
                        offsets: published.offsets,
                        duplicates: published.duplicates,
                        ..Default::default()
                    }
                }
                Err(err) => {
                    let status = Status::from(err);
                    telemetry.publish_stream_request(status.code());
                    failure(&status)
                }
            };
            (answer, bytes)
        })
    }
}

/// The answer to a request that failed with `status`.
fn failure(status: &Status) -> v1::PublishStreamResponse {
    debug!(code = ?status.code(), message = status.message(), "request failed");
    v1::PublishStreamResponse {
        error_code: status.code() as i32,
        error_message: status.message().to_owned(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::grpc::wire::PublishMessage;

    /// Starts every request at once and answers it when the test says.
    #[derive(Default, Clone)]
    struct Held {
        /// One per request started, in order: sending answers it.
        release: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    }

    impl Held {
        /// Answers the `index`-th request started.
        fn release(&self, index: usize) {
            let release = std::mem::replace(
                &mut self.release.lock().expect("not poisoned")[index],
                oneshot::channel().0,
            );
            release.send(()).expect("the request waits");
        }
    }

    impl Start for Held {
        async fn start(&self, _request: PublishRequest, bytes: usize) -> WaitingAnswer {
            let (release_tx, release_rx) = oneshot::channel();
            let mut release = self.release.lock().expect("not poisoned");
            let offset = release.len() as u64;
            release.push(release_tx);
            Box::pin(async move {
                let _ = release_rx.await;
                let answer = v1::PublishStreamResponse {
                    offsets: vec![offset],
                    ..Default::default()
                };
                (answer, bytes)
            })
        }
    }

    /// Four windows of requests, each of one message of `payload_bytes`,
    /// then none, the stream staying open; `pulled` counts those read.
    fn endless(
        payload_bytes: usize,
        pulled: &Arc<AtomicUsize>,
    ) -> impl Stream<Item = Result<PublishRequest, Status>> + Unpin + use<> {
        let pulled = Arc::clone(pulled);
        let requests = futures::stream::iter(0..4 * WINDOW_REQUESTS).map(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok(PublishRequest {
                topic: "t".into(),
                messages: vec![PublishMessage {
                    payload: vec![0; payload_bytes].into(),
                    ..Default::default()
                }],
            })
        });
        requests.chain(futures::stream::pending())
    }

    /// Returns once every other task is idle: with the clock paused, a
    /// sleep ends only then.
    async fn idle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn reading_stops_while_the_window_of_requests_is_full() {
        let (pulled, held) = (Arc::new(AtomicUsize::new(0)), Held::default());
        let (answers_tx, mut answers_rx) = mpsc::channel(ANSWERS_BUFFERED);
        let stop = CancellationToken::new();
        tokio::spawn(run(endless(10, &pulled), held.clone(), stop, answers_tx));
        idle().await;
        assert_eq!(pulled.load(Ordering::SeqCst), WINDOW_REQUESTS);
        // One answer out, one more request in.
        held.release(0);
        let first = answers_rx.recv().await.expect("an answer").expect("ok");
        assert_eq!(first.offsets, [0]);
        idle().await;
        assert_eq!(pulled.load(Ordering::SeqCst), WINDOW_REQUESTS + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_stops_while_the_window_of_bytes_is_full() {
        const MIB: usize = 1 << 20;
        let (pulled, held) = (Arc::new(AtomicUsize::new(0)), Held::default());
        let (answers_tx, _answers_rx) = mpsc::channel(ANSWERS_BUFFERED);
        let stop = CancellationToken::new();
        tokio::spawn(run(endless(MIB, &pulled), held.clone(), stop, answers_tx));
        idle().await;
        // Each request is a little over 1 MiB encoded.
        assert_eq!(pulled.load(Ordering::SeqCst), WINDOW_BYTES / MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_window_is_read_alone() {
        let (pulled, held) = (Arc::new(AtomicUsize::new(0)), Held::default());
        let (answers_tx, mut answers_rx) = mpsc::channel(ANSWERS_BUFFERED);
        let stop = CancellationToken::new();
        let requests = endless(WINDOW_BYTES + 1, &pulled);
        tokio::spawn(run(requests, held.clone(), stop, answers_tx));
        idle().await;
        assert_eq!(pulled.load(Ordering::SeqCst), 1);
        held.release(0);
        answers_rx.recv().await.expect("an answer").expect("ok");
        idle().await;
        assert_eq!(pulled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn on_stop_reading_ends_and_what_was_started_is_answered_first() {
        let (pulled, held) = (Arc::new(AtomicUsize::new(0)), Held::default());
        let (answers_tx, mut answers_rx) = mpsc::channel(ANSWERS_BUFFERED);
        let stop = CancellationToken::new();
        tokio::spawn(run(
            endless(10, &pulled),
            held.clone(),
            stop.clone(),
            answers_tx,
        ));
        idle().await;
        stop.cancel();
        idle().await;
        let started = held.release.lock().expect("not poisoned").len();
        for index in (0..started).rev() {
            held.release(index);
        }
        for offset in 0..started as u64 {
            let answer = answers_rx.recv().await.expect("an answer").expect("ok");
            assert_eq!(answer.offsets, [offset]);
        }
        let end = answers_rx
            .recv()
            .await
            .expect("the end")
            .expect_err("a status");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert_eq!(end.message(), SHUTTING_DOWN);
        assert!(answers_rx.recv().await.is_none());
        // What the publisher sent after the stop was read, to keep the
        // connection open while it reads the status, but not started.
        assert_eq!(pulled.load(Ordering::SeqCst), 4 * WINDOW_REQUESTS);
        assert_eq!(held.release.lock().expect("not poisoned").len(), started);
    }
}
