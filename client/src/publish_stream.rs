//! [`PublishStream`]: one long-lived `PublishStream` call that many
//! publishes share. Each publish is one request on the call; the broker
//! answers the requests in order, and each answer goes to the publish that
//! made its request.
//!
//! The call is opened by the first publish, and again by the first publish
//! after it ended. A call that ends (the broker shut down, the connection
//! broke) fails every publish it had not answered with its status, as a
//! `Publish` call cut off the same way would fail. This module never
//! retries and never falls back to unary `Publish` calls: the
//! [`Publisher`](crate::Publisher) decides that (`publisher/send.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use tidings::v1::{PublishMessage, PublishRequest, PublishStreamResponse};
use tokio::sync::oneshot;
use tracing::debug;

use crate::client::{Client, published};
use crate::error::{Error, Result};
use crate::types::Published;

/// One long-lived `PublishStream` call to a broker, shared by any number of
/// publishes (to any topics); made by [`Client::publish_stream`]. Clones
/// share the call.
///
/// [`publish_batch`](PublishStream::publish_batch) is the stream's form of
/// [`Client::publish_batch`]: the messages go as one request, stored
/// together at consecutive offsets or not at all, and the answer comes
/// back on the same call. Publishes made while others wait for their
/// answers are sent at once, behind them, and the broker stores the
/// requests in the order they were sent. There is no batching, queue or
/// retry here; for those use a [`Publisher`](crate::Publisher), which
/// publishes over a `PublishStream` of its own.
///
/// The call is opened by the first publish and kept open; when it ends (the
/// broker shut down, the connection broke), the publishes it had not
/// answered fail with its status, and the next publish opens a new call.
/// Dropping every clone closes the call once its answers are in.
#[derive(Clone)]
pub struct PublishStream {
    shared: Arc<Shared>,
}

impl fmt::Debug for PublishStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishStream").finish_non_exhaustive()
    }
}

/// What the clones share: the client, and the call now open (if any).
struct Shared {
    client: Client,
    line: Mutex<Option<Line>>,
}

/// One call: where its requests go, and who waits for their answers. The
/// task reading the answers holds only `waiting`, so dropping the line
/// ends the requests, which tells the broker to finish the call.
struct Line {
    requests_tx: mpsc::UnboundedSender<PublishRequest>,
    waiting: Arc<Waiting>,
}

/// The publishes a call has not answered yet, in request order.
#[derive(Default)]
struct Waiting {
    state: Mutex<WaitingState>,
}

#[derive(Default)]
struct WaitingState {
    replies: VecDeque<Reply>,
    /// Set when the call ended: nothing more is answered on it.
    ended: bool,
}

/// Where one request's answer goes.
struct Reply {
    topic: String,
    count: usize,
    tx: oneshot::Sender<Result<Vec<Published>, Failure>>,
}

/// Why a publish on the stream failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The broker does not serve `PublishStream` (an older broker): it
    /// stored nothing of the request, which can go as a `Publish` call.
    Unimplemented(tonic::Status),
    /// As a `Publish` call would have failed.
    Failed(Error),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unimplemented(status) => Self::Status(status),
            Failure::Failed(error) => error,
        }
    }
}

impl Failure {
    fn duplicate(&self) -> Self {
        match self {
            Self::Unimplemented(status) => Self::Unimplemented(status.clone()),
            Self::Failed(error) => Self::Failed(error.duplicate()),
        }
    }
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// Adds `reply` behind the others and sends its request, unless the call
    /// has ended (then the reply comes back).
    fn push(
        &self,
        reply: Reply,
        request: PublishRequest,
        requests_tx: &mpsc::UnboundedSender<PublishRequest>,
    ) -> Result<(), (Reply, PublishRequest)> {
        let mut state = self.lock();
        if state.ended {
            return Err((reply, request));
        }
        state.replies.push_back(reply);
        // A call whose request side is gone is ending: its task fails this
        // reply with the rest once it sees the end.
        let _ = requests_tx.unbounded_send(request);
        Ok(())
    }

    /// Hands `response` to the oldest unanswered publish.
    ///
    /// # Errors
    /// When no publish waits: the broker answered a request never made.
    fn answer(&self, response: PublishStreamResponse) -> Result<(), Failure> {
        let Some(reply) = self.lock().replies.pop_front() else {
            return Err(Failure::Failed(Error::Status(tonic::Status::internal(
                "the broker answered a request that was not made on this publish stream",
            ))));
        };
        let result = if response.error_code == 0 {
            published(
                &reply.topic,
                reply.count,
                response.offsets,
                response.duplicates,
            )
        } else {
            let code = tonic::Code::from_i32(response.error_code);
            Err(Error::Status(tonic::Status::new(
                code,
                response.error_message,
            )))
        };
        let _ = reply.tx.send(result.map_err(Failure::Failed));
        Ok(())
    }

    /// Ends the call: every publish still waiting fails with `failure`.
    fn end(&self, failure: &Failure) {
        let replies = {
            let mut state = self.lock();
            state.ended = true;
            std::mem::take(&mut state.replies)
        };
        for reply in replies {
            let _ = reply.tx.send(Err(failure.duplicate()));
        }
    }
}

impl PublishStream {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                line: Mutex::new(None),
            }),
        }
    }

    /// Publishes `messages` to `topic` as one request on the stream:
    /// stored together at consecutive offsets, or not at all. Returns each
    /// message's offset and whether it was a duplicate, as
    /// [`Client::publish_batch`] does.
    ///
    /// With a [request timeout](crate::ClientBuilder::request_timeout), a
    /// publish not answered in time fails as a `Publish` call would
    /// (`CANCELLED`, "Timeout expired"), and the call is closed: the next
    /// publish opens a new one.
    ///
    /// # Errors
    /// The status a `Publish` call would have failed with (`NOT_FOUND` for
    /// an unknown topic, `INVALID_ARGUMENT` for a bad message, …), which
    /// fails this publish only; the status that ended the call, for every
    /// publish it had not answered (`UNAVAILABLE` when the broker shut down
    /// or the connection broke); `UNIMPLEMENTED` from a broker without
    /// `PublishStream` (nothing was stored: publish with
    /// [`Client::publish_batch`] instead).
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<Published>> {
        Ok(self.publish(topic, messages).await?)
    }

    /// [`publish_batch`](PublishStream::publish_batch), telling a broker
    /// without `PublishStream` apart.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<Published>, Failure> {
        let (tx, answer) = oneshot::channel();
        let reply = Reply {
            topic: topic.to_owned(),
            count: messages.len(),
            tx,
        };
        let request = PublishRequest {
            topic: topic.to_owned(),
            messages,
        };
        let waiting = self.enqueue(reply, request);
        let answered = match self.shared.client.request_timeout() {
            None => answer.await,
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    // The call may be stuck: later publishes get a new one.
                    self.retire(&waiting);
                    let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
                    return Err(Failure::Failed(Error::Status(expired)));
                }
            },
        };
        // The task answers every reply before it ends, unless its runtime
        // is shutting down.
        answered.unwrap_or_else(|_| Err(Failure::Failed(Error::Closed)))
    }

    /// Queues `reply` and sends `request` on the open call, opening one when
    /// there is none or it has ended. Returns the call's waiting list.
    fn enqueue(&self, mut reply: Reply, mut request: PublishRequest) -> Arc<Waiting> {
        let mut line = self
            .shared
            .line
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let open = match line.as_ref() {
                Some(open) if !open.waiting.is_ended() => open,
                _ => line.insert(self.open()),
            };
            match open.waiting.push(reply, request, &open.requests_tx) {
                Ok(()) => return Arc::clone(&open.waiting),
                // It ended in between: open another.
                Err(back) => (reply, request) = back,
            }
            *line = None;
        }
    }

    /// Closes the call of `waiting`, if it is still the open one.
    fn retire(&self, waiting: &Arc<Waiting>) {
        let mut line = self
            .shared
            .line
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if line
            .as_ref()
            .is_some_and(|open| Arc::ptr_eq(&open.waiting, waiting))
        {
            *line = None;
        }
    }

    /// Starts a call, and a task that hands its answers out.
    fn open(&self) -> Line {
        let (requests_tx, requests_rx) = mpsc::unbounded();
        let waiting = Arc::new(Waiting::default());
        let mut service = self.shared.client.publisher_service();
        let answers = Arc::clone(&waiting);
        tokio::spawn(async move {
            // No request timeout: it would cut the whole call.
            let failure = match service.publish_stream(requests_rx).await {
                Ok(response) => read_answers(response.into_inner(), &answers).await,
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    Failure::Unimplemented(status)
                }
                Err(status) => Failure::Failed(Error::Status(status)),
            };
            debug!(error = ?failure, "publish stream ended");
            answers.end(&failure);
        });
        Line {
            requests_tx,
            waiting,
        }
    }
}

/// Hands out the call's answers until it ends; returns what the
/// publishes still waiting fail with.
async fn read_answers(
    mut responses: tonic::Streaming<PublishStreamResponse>,
    waiting: &Waiting,
) -> Failure {
    loop {
        match responses.message().await {
            Ok(Some(response)) => {
                if let Err(failure) = waiting.answer(response) {
                    return failure;
                }
            }
            // The broker finishes the call only once the requests ended
            // and every one was answered: nothing should be waiting.
            Ok(None) => {
                return Failure::Failed(Error::Status(tonic::Status::internal(
                    "the broker ended the publish stream without answering every request",
                )));
            }
            Err(status) => return Failure::Failed(Error::Status(status)),
        }
    }
}
