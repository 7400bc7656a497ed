//! The settlement task of a [`Subscriber`](crate::Subscriber): it sends
//! acks, nacks and lease extensions in batched `Ack`, `Nack` and
//! `ModifyAckDeadline` calls, extends every outstanding lease on a timer,
//! retries on `UNAVAILABLE` so that nothing is lost across a reconnect, and
//! answers flushes. Each delivery goes in a request's `ack_ids` when it
//! has one, else in its `offsets`; never both.
//!
//! Deliveries reach it through [`Settle`], a handle over a short-lived
//! mutex (never held across `.await`) and a `Notify`: settling is a
//! synchronous call that never blocks. The bookkeeping itself is the
//! [`Ledger`]; this module only adds timing and I/O. It never reads the
//! `Subscribe` stream.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tidings::v1::{AckRequest, ModifyAckDeadlineRequest, NackRequest};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{Instrument as _, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result, is_retryable};
use crate::lease::{Ledger, Round, Settlement, Target};
use crate::types::deadline_seconds;

/// Most deliveries named in one settlement request.
const MAX_TARGETS_PER_REQUEST: usize = 2500;
/// Most bytes of ack_ids and offsets in one settlement request, well under
/// the 4 MiB a gRPC server accepts by default: ack_ids are opaque and of
/// any length.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Pending settlements that trigger a send before the flush interval ends.
const URGENT_PENDING: usize = 1000;
/// Attempts at sending settlements once the subscriber is closing, before
/// giving up on an unreachable broker.
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

/// State shared by the handle and the task.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    ledger: Ledger,
    waiters: Vec<oneshot::Sender<Result<()>>>,
    first_error: Option<Error>,
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
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
        let mut state = self.shared.state();
        let live = state.ledger.is_live(epoch);
        state.handed_out += u64::from(live);
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

    /// Queues a settlement of delivery `serial` of `offset`; it is sent
    /// within the flush interval, naming the delivery by `target`.
    pub(crate) fn settle(&self, offset: u64, serial: u64, target: &Target, settlement: Settlement) {
        self.shared
            .state()
            .ledger
            .settle(offset, serial, target, settlement);
        self.shared.wake.notify_one();
    }

    /// From now on, give up on an unreachable broker after a few attempts.
    pub(crate) fn set_closing(&self) {
        self.shared.state().closing = true;
    }

    /// Waits until every settlement queued so far is sent.
    ///
    /// # Errors
    /// The first settlement the broker refused since the last flush, or
    /// `UNAVAILABLE` when closing and the broker cannot be reached.
    pub(crate) async fn flush(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.shared.state().waiters.push(reply);
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
    let mut failures = 0;
    loop {
        wait_for_work(&shared, next_tick, config.flush_interval).await;
        let now = Instant::now();
        let extend_due = now >= next_tick;
        if extend_due {
            next_tick = now + period;
        }
        let (round, waiters) = {
            let mut state = shared.state();
            let round = state
                .ledger
                .take_round(extend_due, now, config.max_lease_extension);
            (round, std::mem::take(&mut state.waiters))
        };
        let outcome = send_round(&config, round).await;
        match finish_round(&shared, outcome, waiters, &mut failures) {
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
    retry_acks: Vec<Target>,
    retry_nacks: Vec<(Duration, Vec<Target>)>,
    /// Why the retried settlements failed.
    unavailable: Option<Error>,
    /// The first settlement the broker refused.
    refused: Option<Error>,
}

/// Sends every settlement of `round`, in requests of bounded size.
async fn send_round(config: &SettleConfig, round: Round) -> Outcome {
    let mut outcome = Outcome::default();
    for chunk in requests(&round.acks) {
        if let Err(status) = ack(config, Names::of(chunk)).await
            && outcome.note("acks", status, config)
        {
            outcome.retry_acks.extend_from_slice(chunk);
        }
    }
    for (delay, targets) in &round.nacks {
        for chunk in requests(targets) {
            if let Err(status) = nack(config, Names::of(chunk), *delay).await
                && outcome.note("nacks", status, config)
            {
                outcome.retry_nacks.push((*delay, chunk.to_vec()));
            }
        }
    }
    for chunk in requests(&round.extends) {
        if let Err(status) = extend(config, Names::of(chunk)).await {
            // Not retried: the next tick extends the leases again.
            let _ = outcome.note("lease extensions", status, config);
        }
    }
    outcome
}

impl Outcome {
    /// Records a failed request; returns whether it should be retried.
    fn note(&mut self, what: &str, status: tonic::Status, config: &SettleConfig) -> bool {
        if is_retryable(&status) {
            debug!(code = ?status.code(), message = status.message(), "{what} not sent; will retry");
            self.unavailable.get_or_insert(Error::Status(status));
            return true;
        }
        warn!(
            subscription = %config.subscription,
            code = ?status.code(),
            message = status.message(),
            "the broker refused {what}"
        );
        self.refused.get_or_insert(Error::Status(status));
        false
    }
}

/// Requeues what must be retried (or gives up when closing), answers the
/// waiters of a complete round, and says what to do next.
fn finish_round(
    shared: &Shared,
    outcome: Outcome,
    waiters: Vec<oneshot::Sender<Result<()>>>,
    failures: &mut u32,
) -> Next {
    let mut state = shared.state();
    if let Some(refused) = outcome.refused {
        state.first_error.get_or_insert(refused);
    }
    if let Some(unavailable) = outcome.unavailable {
        *failures += 1;
        let give_up = (state.closing || state.gone) && *failures >= CLOSING_ATTEMPTS;
        if !give_up {
            state
                .ledger
                .requeue(outcome.retry_acks, outcome.retry_nacks);
            state.waiters.extend(waiters);
            drop(state);
            shared.wake.notify_one();
            return Next::Retry;
        }
        warn!(
            acks = outcome.retry_acks.len(),
            "the broker stayed unreachable while closing; acknowledgements were not sent"
        );
        state.first_error.get_or_insert(unavailable);
    }
    *failures = 0;
    if !waiters.is_empty() {
        let error = state.first_error.take();
        for waiter in waiters {
            let _ = waiter.send(error.as_ref().map_or(Ok(()), |e| Err(e.duplicate())));
        }
    }
    if state.gone && state.ledger.pending() == 0 && state.waiters.is_empty() {
        Next::Stop
    } else {
        Next::Continue
    }
}

/// Splits `targets` into the runs that go in one request each: at most
/// [`MAX_TARGETS_PER_REQUEST`] of them and about [`MAX_REQUEST_BYTES`]
/// (an ack_id longer than that still goes, alone).
fn requests(targets: &[Target]) -> impl Iterator<Item = &[Target]> {
    let mut rest = targets;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        for target in rest.iter().take(MAX_TARGETS_PER_REQUEST) {
            bytes += wire_bytes(target);
            if len > 0 && bytes > MAX_REQUEST_BYTES {
                break;
            }
            len += 1;
        }
        let (run, after) = rest.split_at(len);
        rest = after;
        Some(run)
    })
}

/// About the bytes `target` takes in a request: its tag, length and text,
/// or a varint.
fn wire_bytes(target: &Target) -> usize {
    match target {
        Target::AckId(ack_id) => ack_id.len() + 4,
        Target::Offset(_) => 10,
    }
}

/// The deliveries of one request, as the request's two fields.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    offsets: Vec<u64>,
    ack_ids: Vec<String>,
}

impl Names {
    fn of(targets: &[Target]) -> Self {
        let mut names = Self::default();
        for target in targets {
            match target {
                Target::AckId(ack_id) => names.ack_ids.push(String::from(&**ack_id)),
                Target::Offset(offset) => names.offsets.push(*offset),
            }
        }
        names
    }
}

async fn ack(config: &SettleConfig, names: Names) -> Result<(), tonic::Status> {
    let request = config.client.request(AckRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        ack_ids: names.ack_ids,
    });
    config.client.subscriber_service().ack(request).await?;
    Ok(())
}

async fn nack(config: &SettleConfig, names: Names, delay: Duration) -> Result<(), tonic::Status> {
    let delay = (!delay.is_zero())
        .then(|| prost_types::Duration::try_from(delay).ok())
        .flatten();
    let request = config.client.request(NackRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        delay,
        ack_ids: names.ack_ids,
    });
    config.client.subscriber_service().nack(request).await?;
    Ok(())
}

async fn extend(config: &SettleConfig, names: Names) -> Result<(), tonic::Status> {
    let request = config.client.request(ModifyAckDeadlineRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        ack_deadline_seconds: deadline_seconds(config.ack_deadline),
        ack_ids: names.ack_ids,
    });
    config
        .client
        .subscriber_service()
        .modify_ack_deadline(request)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ack_id: &str) -> Target {
        Target::AckId(ack_id.into())
    }

    #[test]
    fn a_request_names_each_delivery_once_by_ack_id_or_offset() {
        let names = Names::of(&[id("a"), Target::Offset(4), id("b")]);
        assert_eq!(names.ack_ids, ["a", "b"]);
        assert_eq!(names.offsets, [4]);
    }

    #[test]
    fn requests_are_capped_by_count() {
        let targets: Vec<Target> = (0..MAX_TARGETS_PER_REQUEST as u64 * 2 + 1)
            .map(Target::Offset)
            .collect();
        let sizes: Vec<usize> = requests(&targets).map(<[Target]>::len).collect();
        assert_eq!(sizes, [MAX_TARGETS_PER_REQUEST, MAX_TARGETS_PER_REQUEST, 1]);
        assert_eq!(requests(&[]).count(), 0);
    }

    #[test]
    fn requests_are_capped_by_bytes() {
        let long = id(&"x".repeat(MAX_REQUEST_BYTES / 3));
        let huge = id(&"y".repeat(MAX_REQUEST_BYTES * 2));
        let targets = [long.clone(), long.clone(), long.clone(), huge, long];
        let sizes: Vec<usize> = requests(&targets).map(<[Target]>::len).collect();
        assert_eq!(sizes, [2, 1, 1, 1], "an oversized ack_id goes alone");
    }
}
