//! Push subscriptions: the broker POSTs each message to the subscription's
//! endpoint itself.
//!
//! One pusher task per push subscription takes messages with the engine's
//! [`pull`](crate::broker::Engine::pull) — leases of the ack deadline, as a
//! consumer's — and POSTs each one, at most `max_outstanding` at a time. A
//! 2xx answer acks the message; anything else, a failed connection or no
//! answer within the ack deadline nacks it, with the error kept for the
//! dead-letter copy. Without a retry policy a nack waits 1 s doubling to
//! 60 s; with one, the policy decides. So an endpoint that is down holds at
//! most `max_outstanding` messages in the broker's memory, however long it
//! stays down, and everything else stays in storage.
//!
//! The pushers follow [`Engine::watch_push`](crate::broker::Engine::watch_push):
//! one starts for each push subscription (at start, and when one is made),
//! follows its changes and stops when it goes. Pulling instead of holding a
//! stream means a pusher that changes (a new endpoint, say) keeps what it
//! holds, and one that stops lets its POSTs in flight finish and be
//! settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tidings::v1;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::json::JsonCodec;
use crate::ServeError;
use crate::broker::{
    BrokerError, BrokerResult, Delivery, MAX_PULL_MESSAGES, PullSpec, PushTarget, PushTargets,
    SharedEngine,
};
use crate::grpc::{MAX_ERROR_BYTES, error_chain};
use crate::names::SubscriptionName;

/// How long one pull of a pusher waits for messages before it asks again.
const PULL_WAIT: Duration = Duration::from_secs(30);
/// The wait before the first retry of a message when the subscription has
/// no retry policy; it doubles with each failure.
const DEFAULT_MINIMUM_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between retries without a retry policy.
const DEFAULT_MAXIMUM_BACKOFF: Duration = Duration::from_secs(60);
/// The wait after a pull that failed for another reason than the
/// subscription going away (storage trouble, say).
const PULL_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// What every pusher shares.
struct Shared {
    engine: SharedEngine,
    http: reqwest::Client,
    json: JsonCodec,
}

/// The pusher of one subscription, as its manager sees it.
struct Pusher {
    incarnation: u64,
    target: watch::Sender<PushTarget>,
    stop: CancellationToken,
}

/// Runs the pushers of every push subscription until `stop` is cancelled,
/// then lets POSTs in flight finish (and be settled) for at most `drain`.
///
/// # Errors
/// [`ServeError::Http`] when the HTTP client cannot be built (no usable
/// root certificates, say).
pub async fn run(
    engine: SharedEngine,
    stop: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| ServeError::Http(Box::new(err)))?;
    let json = JsonCodec::new().map_err(|err| ServeError::Http(Box::new(err)))?;
    let shared = Arc::new(Shared {
        engine: Arc::clone(&engine),
        http,
        json,
    });
    let mut targets = engine.watch_push();
    let tasks = TaskTracker::new();
    let mut pushers: HashMap<SubscriptionName, Pusher> = HashMap::new();
    loop {
        let current = targets.borrow_and_update().clone();
        follow(&shared, &tasks, &mut pushers, &current);
        tokio::select! {
            changed = targets.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    for pusher in pushers.values() {
        pusher.stop.cancel();
    }
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(
            timeout = ?drain,
            "pushes still in flight after the shutdown timeout; their messages will be pushed again"
        );
    }
    Ok(())
}

/// Starts, changes and stops pushers so that there is one for each of
/// `targets`.
fn follow(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    pushers: &mut HashMap<SubscriptionName, Pusher>,
    targets: &PushTargets,
) {
    pushers.retain(|name, pusher| {
        let kept = targets
            .0
            .get(name)
            .is_some_and(|t| t.incarnation == pusher.incarnation);
        if !kept {
            pusher.stop.cancel();
        }
        kept
    });
    for (name, target) in targets.0.iter() {
        if let Some(pusher) = pushers.get(name) {
            pusher.target.send_if_modified(|current| {
                let changed = current != target;
                if changed {
                    *current = target.clone();
                }
                changed
            });
            continue;
        }
        let (target_tx, target_rx) = watch::channel(target.clone());
        let stop = CancellationToken::new();
        let span = info_span!("push", subscription = %name);
        info!(parent: &span, endpoint = %target.config.endpoint, "pushing");
        tasks.spawn(
            push_loop(Arc::clone(shared), name.clone(), target_rx, stop.clone()).instrument(span),
        );
        pushers.insert(
            name.clone(),
            Pusher {
                incarnation: target.incarnation,
                target: target_tx,
                stop,
            },
        );
    }
}

/// Pulls and pushes one subscription's messages until `stop`, then waits
/// for the POSTs in flight.
async fn push_loop(
    shared: Arc<Shared>,
    name: SubscriptionName,
    mut target: watch::Receiver<PushTarget>,
    stop: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut pulling: Option<BoxFuture<'static, BrokerResult<Vec<Delivery>>>> = None;
    let mut paused_until: Option<Instant> = None;
    loop {
        let current = target.borrow().clone();
        let window = usize::try_from(current.config.max_outstanding).unwrap_or(usize::MAX);
        let room = window.saturating_sub(in_flight.len());
        // Pull again once a quarter of the window is free, or nothing is in
        // flight: fewer, larger pulls.
        if pulling.is_none()
            && paused_until.is_none()
            && room > 0
            && (in_flight.is_empty() || room >= window.div_ceil(4))
        {
            let engine = Arc::clone(&shared.engine);
            let spec = PullSpec {
                subscription: name.clone(),
                max_messages: room.min(MAX_PULL_MESSAGES),
                wait: PULL_WAIT,
                pusher: true,
            };
            pulling = Some(async move { engine.pull(spec).await }.boxed());
        }
        tokio::select! {
            () = stop.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            changed = target.changed() => if changed.is_err() { break },
            () = sleep_until_some(paused_until) => paused_until = None,
            pulled = poll_some(&mut pulling) => {
                pulling = None;
                match pulled {
                    Ok(deliveries) => {
                        for delivery in deliveries {
                            in_flight.push(push_one(
                                Arc::clone(&shared),
                                name.clone(),
                                current.clone(),
                                delivery,
                            ));
                        }
                    }
                    Err(
                        BrokerError::ShuttingDown
                        | BrokerError::SubscriptionNotFound(_)
                        | BrokerError::SubscriptionDeleted(_)
                        | BrokerError::TopicDeleted(_),
                    ) => break,
                    Err(err) => {
                        warn!(error = %err, "cannot take messages to push; trying again in a second");
                        paused_until = Some(Instant::now() + PULL_FAILURE_PAUSE);
                    }
                }
            }
        }
    }
    // A pull dropped here may have leased messages it had not handed over
    // yet: they are due again at once, counted as a failed delivery.
    drop(pulling);
    while in_flight.next().await.is_some() {}
    debug!("pusher stopped");
}

/// POSTs one message and settles it by the answer.
async fn push_one(
    shared: Arc<Shared>,
    name: SubscriptionName,
    target: PushTarget,
    delivery: Delivery,
) {
    let attempt = delivery.attempt;
    let ack_id = delivery.ack_id.clone();
    let offset = delivery.message.offset;
    let body = v1::PushedMessage {
        subscription: name.to_string(),
        message: Some(v1::ReceivedMessage::from(delivery)),
    };
    let settled = match post(&shared, &target, &body).await {
        Ok(()) => shared.engine.ack(&name, &[], &[ack_id]).await,
        Err(error) => {
            debug!(offset, attempt, %error, "push failed");
            let delay = if target.has_retry_policy {
                Duration::ZERO
            } else {
                default_backoff(attempt)
            };
            let error = truncate(error, MAX_ERROR_BYTES);
            shared
                .engine
                .nack(&name, &[], &[ack_id], delay, &error)
                .await
        }
    };
    if let Err(err) = settled {
        // The lease runs out and the message comes again.
        debug!(offset, error = %err, "the outcome of a push was not stored");
    }
}

/// One POST; `Err` says why it did not succeed, for a person to read.
async fn post(
    shared: &Shared,
    target: &PushTarget,
    body: &v1::PushedMessage,
) -> Result<(), String> {
    let json = shared
        .json
        .encode("tidings.v1.PushedMessage", body)
        .map_err(|err| err.to_string())?;
    let response = shared
        .http
        .post(&target.config.endpoint)
        .headers(headers(target))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .timeout(target.ack_deadline)
        .body(json)
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the push endpoint answered {}", response.status())),
        Err(err) if err.is_timeout() => Err(format!(
            "the push endpoint did not answer within the ack deadline ({}s)",
            target.ack_deadline.as_secs()
        )),
        Err(err) => Err(format!(
            "cannot reach the push endpoint: {}",
            error_chain(&err)
        )),
    }
}

/// The configured headers; the broker checked them when they were set.
fn headers(target: &PushTarget) -> HeaderMap {
    target
        .config
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            Some((name, HeaderValue::from_str(value).ok()?))
        })
        .collect()
}

/// The wait before the next POST after the `attempt`-th failed: 1 s
/// doubling up to 60 s.
fn default_backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (DEFAULT_MINIMUM_BACKOFF * (1 << doublings)).min(DEFAULT_MAXIMUM_BACKOFF)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

async fn poll_some<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_without_a_policy_doubles_from_a_second_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|a| default_backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(default_backoff(u32::MAX), DEFAULT_MAXIMUM_BACKOFF);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h");
        assert_eq!(truncate("abc".to_owned(), 10), "abc");
    }
}
