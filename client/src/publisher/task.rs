//! [`Task`]: the background task of one publisher (and its clones). It
//! takes commands from the handles, cuts batches, keeps up to
//! `max_in_flight` sends running, answers every message's future, and
//! pauses an ordered publisher after a failure.
//!
//! It is the only owner of the queue and of the publisher's view of the
//! pause; the handles only read the shared flag. It never blocks: every
//! wait is a branch of its one `select!`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};

use super::pause::{Pause, paused};
use super::room::Room;
use super::send::{Sender, Sent};
use crate::batch::{BatchLimits, BatchQueue, Pending};
use crate::error::{Error, Result};

/// A request to the publisher task.
pub(crate) enum Command {
    Publish(Pending),
    Flush(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
    /// Lift the pause with this epoch (a later pause stays; a pause the
    /// task did not make, after a full queue, is none of its business).
    Resume(u64),
}

/// Everything a [`Task`] is made of, besides its command channel.
pub(crate) struct TaskConfig {
    pub(crate) sender: Sender,
    pub(crate) limits: BatchLimits,
    pub(crate) max_in_flight: usize,
    pub(crate) room: Arc<Room>,
    pub(crate) pause: Arc<Pause>,
}

/// A send in flight.
type InFlight = Pin<Box<dyn Future<Output = Sent> + Send>>;

/// The background task of one publisher.
pub(crate) struct Task {
    sender: Arc<Sender>,
    queue: BatchQueue,
    max_in_flight: usize,
    commands: mpsc::UnboundedReceiver<Command>,
    room: Arc<Room>,
    pause: Arc<Pause>,
    /// The epoch and cause of the pause, from the failure until the
    /// matching resume arrives in command order.
    paused: Option<(u64, Error)>,
    /// False once every handle is gone.
    receiving: bool,
    /// True once `close` was called.
    closing: bool,
    in_flight: FuturesUnordered<InFlight>,
}

impl Task {
    pub(crate) fn new(config: TaskConfig, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        Self {
            sender: Arc::new(config.sender),
            queue: BatchQueue::new(config.limits),
            max_in_flight: config.max_in_flight,
            commands,
            room: config.room,
            pause: config.pause,
            paused: None,
            receiving: true,
            closing: false,
            in_flight: FuturesUnordered::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.dispatch(Instant::now());
            let stopping = !self.receiving || self.closing;
            if stopping && self.queue.is_idle() {
                break;
            }
            let slot_free = self.in_flight.len() < self.max_in_flight;
            let can_receive = self.receiving && !self.queue.has_sealed();
            let linger = self.queue.linger_deadline().filter(|_| slot_free);
            let room = Arc::clone(&self.room);
            tokio::select! {
                biased;
                Some(sent) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish(sent);
                }
                command = self.commands.recv(), if can_receive => {
                    self.handle(command);
                    self.take_queued();
                }
                // The open batch cannot grow while the queue is full:
                // lingering longer only delays the room it would give back.
                () = room.found_full() => self.queue.seal(),
                () = sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {
                    self.queue.seal();
                }
            }
        }
        // Publishes that raced with close() are answered, not dropped.
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            self.handle_after_close(command);
        }
        debug!(topic = %self.sender.topic, "publisher stopped");
    }

    fn handle(&mut self, command: Option<Command>) {
        match command {
            None => {
                self.receiving = false;
                self.queue.seal();
            }
            Some(Command::Publish(pending)) if self.closing => pending.answer(Err(Error::Closed)),
            Some(Command::Publish(pending)) => match &self.paused {
                Some((_, cause)) => pending.answer(Err(paused(cause))),
                None => self.queue.push(pending, Instant::now()),
            },
            Some(Command::Flush(reply)) => {
                self.queue.seal();
                self.queue.wait(reply);
            }
            Some(Command::Close(reply)) => {
                self.closing = true;
                self.queue.seal();
                self.queue.wait(reply);
            }
            Some(Command::Resume(epoch)) => {
                if self.paused.as_ref().is_some_and(|(e, _)| *e == epoch) {
                    self.paused = None;
                    info!(topic = %self.sender.topic, "publisher resumed");
                }
            }
        }
    }

    /// Takes the commands already waiting, up to a full batch, so that
    /// messages queued together leave together instead of one per call.
    fn take_queued(&mut self) {
        while self.receiving && !self.queue.has_sealed() {
            match self.commands.try_recv() {
                Ok(command) => self.handle(Some(command)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.handle(None),
            }
        }
    }

    fn handle_after_close(&mut self, command: Command) {
        match command {
            Command::Publish(pending) => pending.answer(Err(Error::Closed)),
            Command::Flush(reply) | Command::Close(reply) => {
                let _ = reply.send(Ok(()));
            }
            Command::Resume(_) => {}
        }
    }

    /// Seals a batch whose linger ended and starts sealed batches while
    /// slots are free.
    fn dispatch(&mut self, now: Instant) {
        if self.in_flight.len() < self.max_in_flight {
            self.queue.seal_if_due(now);
        }
        while self.in_flight.len() < self.max_in_flight {
            let Some(batch) = self.queue.pop_sealed() else {
                break;
            };
            let sender = Arc::clone(&self.sender);
            self.in_flight
                .push(Box::pin(async move { sender.send(batch).await }));
        }
    }

    /// Answers every message of a sent batch. In an ordered publisher a
    /// failure pauses first — before any answer, so that a caller who sees
    /// the failure can already resume — and then fails the whole queue.
    fn finish(&mut self, sent: Sent) {
        let Sent {
            seq,
            pendings,
            results,
        } = sent;
        let first_error = results
            .iter()
            .find_map(|result| result.as_ref().err())
            .map(Error::duplicate);
        if self.sender.ordered
            && let Some(cause) = &first_error
        {
            let epoch = self.pause.set(cause);
            info!(topic = %self.sender.topic, seq, error = %cause, "ordered publisher paused until resumed");
            self.paused = Some((epoch, cause.duplicate()));
        }
        let mut results = results.into_iter();
        for pending in pendings {
            // Not sent: an ordered send stopped at an earlier failure.
            let result = results.next().unwrap_or_else(|| Err(self.unsent()));
            pending.answer(result);
        }
        self.queue.completed(seq, first_error.as_ref());
        if self.paused.is_some() {
            let error = self.unsent();
            self.queue.fail_queued(&error);
        }
    }

    /// The error of a message not sent because of the pause.
    fn unsent(&self) -> Error {
        match &self.paused {
            Some((_, cause)) => paused(cause),
            None => Error::Closed,
        }
    }
}
