//! [`Task`]: the background task of one publisher (and its clones). It
//! takes commands from the handles, cuts batches, keeps up to
//! `max_in_flight` sends running, and answers every message's future.
//!
//! It is the only owner of the queue. It never blocks: every wait is a
//! branch of its one `select!`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::room::Room;
use super::send::{Sender, Sent};
use crate::batch::{BatchLimits, BatchQueue, Pending};
use crate::error::{Error, Result};

/// A request to the publisher task.
pub(crate) enum Command {
    Publish(Pending),
    Flush(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// Everything a [`Task`] is made of, besides its command channel.
pub(crate) struct TaskConfig {
    pub(crate) sender: Sender,
    pub(crate) limits: BatchLimits,
    pub(crate) max_in_flight: usize,
    pub(crate) room: Arc<Room>,
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
            Some(Command::Publish(pending)) => self.queue.push(pending, Instant::now()),
            Some(Command::Flush(reply)) => {
                self.queue.seal();
                self.queue.wait(reply);
            }
            Some(Command::Close(reply)) => {
                self.closing = true;
                self.queue.seal();
                self.queue.wait(reply);
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

    /// Answers every message of a sent batch.
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
        for (pending, result) in pendings.into_iter().zip(results) {
            pending.answer(result);
        }
        self.queue.completed(seq, first_error.as_ref());
    }
}
