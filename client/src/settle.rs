//! The settlement task of a [`Subscriber`](crate::Subscriber): it sends
//! acks, rejects, nacks and lease extensions in batched `Ack`, `Reject`,
//! `Nack` and `ModifyAckDeadline` calls (one `Reject` per error text, one
//! `Nack` per delay and error text), extends every outstanding lease on a timer,
//! retries transient failures with backoff so that nothing is lost across
//! a reconnect, answers awaitable settlements and flushes, and counts what
//! failed until a flush reports it. Each delivery goes in a request's
//! `ack_ids` when it has one, else in its `offsets`; never both. A few
//! rounds may be on the wire at once; they are finished in order.
//!
//! Deliveries reach it through [`Settle`], a handle over a short-lived
//! mutex (never held across `.await`) and a `Notify`: settling is a
//! synchronous call that never blocks. The bookkeeping itself is the
//! [`Ledger`]; this module only adds timing, I/O and the [`Counts`] that
//! flow control and shutdown wait on. It never reads the `Subscribe`
//! stream.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::{Instant, sleep_until};
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
/// Rounds sent and not yet answered, at most.
const MAX_ROUNDS_IN_FLIGHT: usize = 4;
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
    /// The subscription it settles on.
    subscription: String,
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
        let subscription = config.subscription.clone();
        tokio::spawn(run(Arc::clone(&shared), config).instrument(span));
        Arc::new(Self {
            shared,
            subscription,
        })
    }

    /// The subscription it settles on.
    pub(crate) fn subscription(&self) -> &str {
        &self.subscription
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

/// A round sent and not yet answered, with the flushes that wait for it.
struct Sent {
    serial: u64,
    waiters: Vec<Waiter>,
}

/// The task: wait for settlements (or the lease timer), send a round,
/// answer or retry. Up to [`MAX_ROUNDS_IN_FLIGHT`] rounds are on the wire
/// at once, so acks never wait for the answer to the acks before them
/// (with ordering keys, an ack is what lets the key's next message go).
/// Rounds are finished in the order they were taken: a flush is answered
/// only when every round before it is.
async fn run(shared: Arc<Shared>, config: SettleConfig) {
    let period = (config.ack_deadline / 3).max(MIN_EXTENSION_PERIOD);
    let mut timing = Timing {
        next_tick: Instant::now() + period,
        pending_since: None,
        paused_until: None,
    };
    let mut backoff = config.backoff.clone();
    let mut closing_failures = 0;
    let mut in_flight = FuturesOrdered::new();
    let mut serial = 0_u64;
    // Rounds up to this one were taken before a retried round was put
    // back: their flushes wait for a later round, which carries it.
    let mut requeued_before = 0_u64;
    loop {
        let room = in_flight.len() < MAX_ROUNDS_IN_FLIGHT;
        let idle = in_flight.is_empty();
        tokio::select! {
            biased;
            Some((outcome, sent)) = in_flight.next(), if !idle => {
                let Sent { serial: done, mut waiters } = sent;
                if done <= requeued_before {
                    shared.state().waiters.append(&mut waiters);
                }
                match finish_round(&shared, outcome, waiters, &mut closing_failures) {
                    Next::Continue => backoff.reset(),
                    Next::Retry => {
                        requeued_before = serial;
                        timing.paused_until = Some(Instant::now() + backoff.next_delay());
                    }
                    Next::Stop if in_flight.is_empty() => break,
                    Next::Stop => {}
                }
            }
            () = wait_for_work(&shared, &mut timing, config.flush_interval, idle), if room => {
                let now = Instant::now();
                let extend_due = now >= timing.next_tick;
                if extend_due {
                    timing.next_tick = now + period;
                }
                timing.pending_since = None;
                let (round, waiters) = {
                    let mut state = shared.state();
                    let round = state.ledger.take_round(extend_due, now);
                    (round, std::mem::take(&mut state.waiters))
                };
                serial += 1;
                let sent = Sent { serial, waiters };
                let config = &config;
                in_flight.push_back(async move { (send_round(config, round).await, sent) });
            }
        }
    }
    debug!("settlement task stopped");
}

/// When the task next has something to do, kept across its turns.
struct Timing {
    /// When the leases are next extended.
    next_tick: Instant,
    /// When the oldest settlement not yet sent was first seen.
    pending_since: Option<Instant>,
    /// No round is sent before this (a backoff after a transient failure).
    paused_until: Option<Instant>,
}

/// Returns when a round is to be taken: the lease timer is due, or
/// settlements are pending and the flush interval has passed since the
/// first was seen, or something urgent came up (many pending, a flush;
/// shutdown, once no round is in flight). Never before a retry pause ends.
async fn wait_for_work(shared: &Shared, timing: &mut Timing, flush_interval: Duration, idle: bool) {
    if let Some(until) = timing.paused_until {
        sleep_until(until).await;
        timing.paused_until = None;
    }
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (work, urgent) = {
            let state = shared.state();
            let pending = state.ledger.pending();
            let waiting = !state.waiters.is_empty();
            let gone = state.gone && idle;
            (
                pending > 0 || waiting || gone,
                pending >= URGENT_PENDING || waiting || gone,
            )
        };
        if urgent {
            return;
        }
        let mut until = timing.next_tick;
        if work {
            let since = *timing.pending_since.get_or_insert_with(Instant::now);
            until = until.min(since + flush_interval);
        }
        if Instant::now() >= until {
            return;
        }
        tokio::select! {
            () = woken => {}
            () = sleep_until(until) => return,
        }
    }
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
