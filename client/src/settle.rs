//! The settlement task of a [`Subscriber`](crate::Subscriber): it sends
//! acks, rejects, nacks and lease extensions in batched `Ack`, `Reject`,
//! `Nack` and `ModifyAckDeadline` calls (one `Reject` per error text, one
//! `Nack` per delay and error text), extends every outstanding lease on a timer,
//! retries transient failures with backoff so that nothing is lost across
//! a reconnect, answers awaitable settlements and flushes, and counts what
//! failed until a flush reports it. Each delivery goes in a request's
//! `ack_ids` when it has one, else in its `offsets`; never both.
//!
//! Deliveries reach it through [`Settle`], a handle over a short-lived
//! mutex (never held across `.await`) and a `Notify`: settling is a
//! synchronous call that never blocks. The bookkeeping itself is the
//! [`Ledger`]; this module only adds timing, I/O and the [`Counts`] that
//! flow control and shutdown wait on. It never reads the `Subscribe`
//! stream.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{Instrument as _, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result, is_transient};
use crate::lease::{Ledger, Queued, Reply, Round, Settlement, Target};

mod wire;

use wire::{Names, ack, chunks, extend, nack, reject, requests};
/// Pending settlements that trigger a send before the flush interval ends.
const URGENT_PENDING: usize = 1000;
/// Rounds that fail with a transient error once the subscriber is closing,
/// before what they carry is given up.
const CLOSING_ATTEMPTS: u32 = 5;
/// The shortest interval between automatic lease extensions.
const MIN_EXTENSION_PERIOD: Duration = Duration::from_millis(100);

/// What the settlement task needs to know.
#[derive(Debug)]
pub(crate) struct SettleConfig {
    pub(crate) client: Client,
    pub(crate) subscription: String,
    pub(crate) ack_deadline: Duration,
    pub(crate) max_lease_extension: Duration,
    pub(crate) flush_interval: Duration,
    pub(crate) backoff: Backoff,
}

/// What the application holds, for flow control and shutdown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Deliveries let through flow control and not settled yet (buffered
    /// or handed out).
    pub(crate) outstanding: usize,
    /// Their size in bytes (payload, key and attributes).
    pub(crate) outstanding_bytes: u64,
    /// Deliveries handed to the application and not settled yet.
    pub(crate) held: usize,
}

/// State shared by the handle and the task.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    counts: watch::Sender<Counts>,
}

/// Someone waiting for everything queued before it to be answered.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Result<()>>,
    /// Whether it takes (and reports) the failures counted so far.
    report: bool,
}

/// Acks, rejects and nacks that failed and that nobody has been told
/// about yet.
#[derive(Debug, Default)]
struct Failures {
    refused: u64,
    given_up: u64,
    first: Option<Error>,
}

impl Failures {
    /// Counts one failure: refused, or given up.
    fn count(&mut self, error: &Error) {
        if matches!(error, Error::GaveUp { .. }) {
            self.given_up += 1;
        } else {
            self.refused += 1;
        }
        if self.first.is_none() {
            self.first = Some(error.duplicate());
        }
    }

    /// The error that reports them, if any.
    fn into_error(self) -> Option<Error> {
        let cause = self.first?;
        Some(Error::Unsettled {
            refused: self.refused,
            given_up: self.given_up,
            cause: Box::new(cause),
        })
    }
}

#[derive(Debug)]
struct State {
    ledger: Ledger,
    waiters: Vec<Waiter>,
    failures: Failures,
    /// Deliveries handed to the application, for `max_messages`.
    handed_out: u64,
    closing: bool,
    /// Every [`Settle`] handle is gone: flush and stop.
    gone: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handle to a settlement task, shared (in an `Arc`) by the
/// subscriber, its reader task and every delivery. When the last one is
/// dropped, the task sends what is pending and stops.
#[derive(Debug)]
pub(crate) struct Settle {
    shared: Arc<Shared>,
}

impl Settle {
    /// Starts a settlement task.
    pub(crate) fn spawn(config: SettleConfig) -> Arc<Self> {
        let state = State {
            ledger: Ledger::new(config.max_lease_extension),
            waiters: Vec::new(),
            failures: Failures::default(),
            handed_out: 0,
            closing: false,
            gone: false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            counts: watch::Sender::new(Counts::default()),
        });
        let span = info_span!("settle", subscription = %config.subscription);
        tokio::spawn(run(Arc::clone(&shared), config).instrument(span));
        Arc::new(Self { shared })
    }

    /// A new stream is open; returns its epoch.
    pub(crate) fn begin_epoch(&self) -> u64 {
        self.shared.state().ledger.begin_epoch()
    }

    /// The stream of `epoch` ended.
    pub(crate) fn end_epoch(&self, epoch: u64) {
        self.shared.state().ledger.end_epoch(epoch);
    }

    /// Counts a delivery of the stream of `epoch` as handed to the
    /// application, if that stream is still live; returns whether it is.
    /// (A delivery of an ended stream was taken back by the broker and
    /// comes again.) One step under the lock, so that once
    /// [`end_epoch`](Self::end_epoch) returns, [`handed_out`](Self::handed_out)
    /// no longer counts that stream's deliveries.
    pub(crate) fn hand_out(&self, epoch: u64) -> bool {
        let live = {
            let mut state = self.shared.state();
            let live = state.ledger.is_live(epoch);
            state.handed_out += u64::from(live);
            live
        };
        if live {
            self.shared.counts.send_modify(|counts| counts.held += 1);
        }
        live
    }

    /// How many deliveries were handed to the application.
    pub(crate) fn handed_out(&self) -> u64 {
        self.shared.state().handed_out
    }

    /// Records a delivery of `offset`, named `target` on the wire; returns
    /// its serial number.
    pub(crate) fn received(&self, epoch: u64, offset: u64, target: Target) -> u64 {
        self.shared
            .state()
            .ledger
            .received(epoch, offset, target, Instant::now())
    }

    /// Counts a delivery of `bytes` as let through flow control.
    pub(crate) fn admit(&self, bytes: u64) {
        self.shared.counts.send_modify(|counts| {
            counts.outstanding += 1;
            counts.outstanding_bytes += bytes;
        });
    }

    /// A delivery of `bytes` is settled (or dropped): it no longer counts
    /// as outstanding (if it was `admitted`) or held (if `handed_out`).
    pub(crate) fn release(&self, bytes: u64, admitted: bool, handed_out: bool) {
        if !admitted && !handed_out {
            return;
        }
        self.shared.counts.send_modify(|counts| {
            if admitted {
                counts.outstanding = counts.outstanding.saturating_sub(1);
                counts.outstanding_bytes = counts.outstanding_bytes.saturating_sub(bytes);
            }
            if handed_out {
                counts.held = counts.held.saturating_sub(1);
            }
        });
    }

    /// A view of what the application holds, that can be waited on.
    pub(crate) fn counts(&self) -> watch::Receiver<Counts> {
        self.shared.counts.subscribe()
    }

    /// Queues a settlement of delivery `serial` of `offset`; it is sent
    /// within the flush interval, naming the delivery by `target`. `reply`,
    /// if given, gets the outcome.
    pub(crate) fn settle(
        &self,
        offset: u64,
        serial: u64,
        target: &Target,
        settlement: Settlement,
        reply: Option<Reply>,
    ) {
        let moot = self.shared.state().ledger.settle(
            offset,
            serial,
            target,
            settlement,
            reply,
            Instant::now(),
        );
        match moot {
            // Nothing to send: the broker has the message back already.
            Some(reply) => {
                let _ = reply.send(Ok(()));
            }
            None => self.shared.wake.notify_one(),
        }
    }

    /// From now on, give up on an unreachable broker after a few attempts.
    pub(crate) fn set_closing(&self) {
        self.shared.state().closing = true;
        self.shared.wake.notify_one();
    }

    /// Waits until every settlement queued so far is sent and answered.
    ///
    /// # Errors
    /// [`Error::Unsettled`] when acks, rejects or nacks failed since the last flush
    /// (refused by the broker, or given up while closing), except those
    /// whose failure was handed to an awaiting caller.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.wait_for_round(true).await
    }

    /// As [`flush`](Self::flush), but leaves failures for a later flush to
    /// report.
    pub(crate) async fn flush_quietly(&self) {
        let _ = self.wait_for_round(false).await;
    }

    async fn wait_for_round(&self, report: bool) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.shared.state().waiters.push(Waiter { reply, report });
        self.shared.wake.notify_one();
        answer.await.unwrap_or(Err(Error::Closed))
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.shared.state().gone = true;
        self.shared.wake.notify_one();
    }
}

/// What to do after a round.
enum Next {
    Continue,
    Retry,
    Stop,
}

/// The task: wait for settlements (or the lease timer), send a round,
/// answer or retry.
async fn run(shared: Arc<Shared>, config: SettleConfig) {
    let period = (config.ack_deadline / 3).max(MIN_EXTENSION_PERIOD);
    let mut next_tick = Instant::now() + period;
    let mut backoff = config.backoff.clone();
    let mut closing_failures = 0;
    loop {
        wait_for_work(&shared, next_tick, config.flush_interval).await;
        let now = Instant::now();
        let extend_due = now >= next_tick;
        if extend_due {
            next_tick = now + period;
        }
        let (round, waiters) = {
            let mut state = shared.state();
            let round = state.ledger.take_round(extend_due, now);
            (round, std::mem::take(&mut state.waiters))
        };
        let outcome = send_round(&config, round).await;
        match finish_round(&shared, outcome, waiters, &mut closing_failures) {
            Next::Continue => backoff.reset(),
            Next::Retry => sleep(backoff.next_delay()).await,
            Next::Stop => break,
        }
    }
    debug!("settlement task stopped");
}

/// Returns when there is something to do: the lease timer is due, or
/// settlements are pending and the flush interval has passed since the
/// first (or something urgent came up: many pending, a flush, shutdown).
async fn wait_for_work(shared: &Shared, next_tick: Instant, flush_interval: Duration) {
    if !has_work(shared) {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep_until(next_tick) => return,
        }
    }
    let linger_until = Instant::now() + flush_interval;
    while !is_urgent(shared) {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep_until(linger_until) => break,
        }
    }
}

fn has_work(shared: &Shared) -> bool {
    let state = shared.state();
    state.ledger.pending() > 0 || !state.waiters.is_empty() || state.gone
}

fn is_urgent(shared: &Shared) -> bool {
    let state = shared.state();
    state.ledger.pending() >= URGENT_PENDING || !state.waiters.is_empty() || state.gone
}

/// What became of a round.
#[derive(Default)]
struct Outcome {
    /// What is to be sent again.
    retry: Round,
    /// The last transient failure, when something is to be retried.
    transient: Option<tonic::Status>,
    /// Refusals nobody was told about.
    failures: Failures,
}

/// Sends every settlement of `round`, in requests of bounded size.
async fn send_round(config: &SettleConfig, round: Round) -> Outcome {
    let mut outcome = Outcome::default();
    for queued in round.moot {
        answer(queued.reply, Ok(()), &mut outcome.failures);
    }
    for chunk in chunks(round.acks) {
        let result = ack(config, Names::of(&chunk)).await;
        if let Some(retry) = outcome.settled(chunk, result, "acks", config) {
            outcome.retry.acks.extend(retry);
        }
    }
    for (error, queued) in round.rejects {
        for chunk in chunks(queued) {
            let result = reject(config, Names::of(&chunk), &error).await;
            if let Some(retry) = outcome.settled(chunk, result, "rejects", config) {
                outcome.retry.rejects.push((error.clone(), retry));
            }
        }
    }
    for (how, queued) in round.nacks {
        for chunk in chunks(queued) {
            let result = nack(config, Names::of(&chunk), &how).await;
            if let Some(retry) = outcome.settled(chunk, result, "nacks", config) {
                outcome.retry.nacks.push((how.clone(), retry));
            }
        }
    }
    for chunk in requests(&round.extends, |target| target) {
        match extend(config, Names::of(chunk)).await {
            Ok(()) => {}
            Err(status) if is_transient(&status) => {
                debug!(code = ?status.code(), "lease extensions not sent; will retry");
                outcome.retry.extends.extend_from_slice(chunk);
                outcome.transient = Some(status);
            }
            Err(status) => warn!(
                subscription = %config.subscription,
                code = ?status.code(),
                message = status.message(),
                "the broker refused lease extensions; those messages may be delivered again"
            ),
        }
    }
    outcome
}

impl Outcome {
    /// Answers the settlements of one request that `result` answered;
    /// returns them back when they are to be retried.
    fn settled(
        &mut self,
        chunk: Vec<Queued>,
        result: Result<(), tonic::Status>,
        what: &str,
        config: &SettleConfig,
    ) -> Option<Vec<Queued>> {
        let status = match result {
            Ok(()) => {
                for queued in chunk {
                    answer(queued.reply, Ok(()), &mut self.failures);
                }
                return None;
            }
            Err(status) => status,
        };
        if is_transient(&status) {
            debug!(code = ?status.code(), message = status.message(), "{what} not sent; will retry");
            self.transient = Some(status);
            let retry = chunk
                .into_iter()
                .map(|mut queued| {
                    queued.attempts += 1;
                    queued
                })
                .collect();
            return Some(retry);
        }
        warn!(
            subscription = %config.subscription,
            code = ?status.code(),
            message = status.message(),
            count = chunk.len(),
            "the broker refused {what}"
        );
        for queued in chunk {
            answer(
                queued.reply,
                Err(Error::Status(status.clone())),
                &mut self.failures,
            );
        }
        None
    }
}

/// Hands `result` to whoever awaits it; a failure nobody receives is
/// counted in `failures`, for the next flush to report.
fn answer(reply: Option<Reply>, result: Result<()>, failures: &mut Failures) {
    let unheard = match reply {
        Some(reply) => reply.send(result).err(),
        None => Some(result),
    };
    if let Some(Err(error)) = unheard {
        failures.count(&error);
    }
}

/// Requeues what must be retried (or gives it up after a few attempts
/// when closing), answers the waiters of a complete round, and says what
/// to do next.
fn finish_round(
    shared: &Shared,
    mut outcome: Outcome,
    waiters: Vec<Waiter>,
    closing_failures: &mut u32,
) -> Next {
    let mut state = shared.state();
    if let Some(status) = outcome.transient.take() {
        let closing = state.closing || state.gone;
        *closing_failures += u32::from(closing);
        if !closing || *closing_failures < CLOSING_ATTEMPTS {
            state.ledger.requeue(std::mem::take(&mut outcome.retry));
            merge(&mut state.failures, outcome.failures);
            state.waiters.extend(waiters);
            drop(state);
            shared.wake.notify_one();
            return Next::Retry;
        }
        give_up(&mut outcome, &status);
    }
    *closing_failures = 0;
    merge(&mut state.failures, outcome.failures);
    for waiter in waiters {
        let result = if waiter.report {
            std::mem::take(&mut state.failures)
                .into_error()
                .map_or(Ok(()), Err)
        } else {
            Ok(())
        };
        let _ = waiter.reply.send(result);
    }
    if state.gone && state.ledger.pending() == 0 && state.waiters.is_empty() {
        Next::Stop
    } else {
        Next::Continue
    }
}

/// Gives up the acks, rejects and nacks of `outcome` that were to be
/// retried: the broker stayed unreachable (or too slow) while closing.
fn give_up(outcome: &mut Outcome, status: &tonic::Status) {
    let Round {
        acks,
        rejects,
        nacks,
        ..
    } = std::mem::take(&mut outcome.retry);
    let retried = acks
        .into_iter()
        .chain(rejects.into_iter().flat_map(|(_, queued)| queued))
        .chain(nacks.into_iter().flat_map(|(_, queued)| queued));
    let mut count = 0;
    for queued in retried {
        count += 1;
        let error = Error::GaveUp {
            attempts: queued.attempts,
            cause: Box::new(Error::Status(status.clone())),
        };
        answer(queued.reply, Err(error), &mut outcome.failures);
    }
    if count > 0 {
        warn!(
            count,
            code = ?status.code(),
            message = status.message(),
            "the broker stayed unreachable while closing; acks, rejects or nacks were given up"
        );
    }
}

/// Adds `more` to `failures`, keeping the first cause.
fn merge(failures: &mut Failures, more: Failures) {
    failures.refused += more.refused;
    failures.given_up += more.given_up;
    if failures.first.is_none() {
        failures.first = more.first;
    }
}
