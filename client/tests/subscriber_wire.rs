//! The `Subscriber` against a stand-in broker that plays scripted
//! `Subscribe` streams and records every call it gets: what goes on the
//! wire. Settlements name a delivery by its ack_id, or by its offset when
//! the broker gave none; leases are extended on a timer; a stream that
//! ends early with OK is reopened without the topic, so a deleted
//! subscription ends the subscriber with NOT_FOUND instead of being
//! created again.
//!
//! Rejects go in `Reject` calls, one per error text, end the lease, and
//! are retried and answered like acks; a nack's error goes in its request.
//!
//! Settlements that the broker refuses, or does not answer in time, are
//! reported by `flush`, `close`, `shutdown` and the awaitable acks; a
//! lease past `max_lease_extension` is let go; `shutdown` ends the stream
//! only once held deliveries are settled; `max_outstanding_bytes` is sent
//! and held to.
//!
//! The stand-in (`stand_in/`) lets a test choose what today's broker
//! cannot show: ack_ids, a stream that ends with OK, refused and slow
//! acks. The subscriber against the real broker is tested in
//! `tests/tests/client_subscriber.rs`.

mod stand_in;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{FutureExt as _, StreamExt as _};
use stand_in::{
    Call, Named, Opened, acks_refused, end_on_cue, end_with_ok, message, serve, settlements,
    stand_in, stand_in_with, stay_open,
};
use tidings_client::v1::{ReceivedMessage, SubscribeRequest};
use tidings_client::{Client, Delivery, Error, MAX_ERROR_BYTES, Subscriber};
use tokio::sync::{Notify, mpsc};
use tonic::{Code, Status};

/// How long a test waits for an event before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// An ack deadline no test outlives: no automatic extension is sent.
const LONG_DEADLINE: u32 = 600;

/// Awaits `future` under [`EVENT_TIMEOUT`].
async fn within<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(EVENT_TIMEOUT, future)
        .await
        .map_err(|_| anyhow::anyhow!("nothing happened within {EVENT_TIMEOUT:?}"))
}

/// The next delivery, under [`EVENT_TIMEOUT`].
async fn next(subscriber: &mut Subscriber) -> anyhow::Result<Delivery> {
    match within(subscriber.next()).await? {
        Some(delivery) => Ok(delivery?),
        None => anyhow::bail!("the subscriber's stream ended"),
    }
}

/// Every call received so far.
fn drain(calls_rx: &mut mpsc::UnboundedReceiver<Call>) -> Vec<Call> {
    std::iter::from_fn(|| calls_rx.try_recv().ok()).collect()
}

/// Receives calls until one satisfies `wanted`; returns them all, that one
/// last.
async fn wait_for_call(
    calls_rx: &mut mpsc::UnboundedReceiver<Call>,
    wanted: impl Fn(&Call) -> bool,
) -> anyhow::Result<Vec<Call>> {
    let mut calls = Vec::new();
    within(async {
        while let Some(call) = calls_rx.recv().await {
            let done = wanted(&call);
            calls.push(call);
            if done {
                return Ok(());
            }
        }
        anyhow::bail!("the stand-in stopped")
    })
    .await
    .with_context(|| format!("waiting for a call; got {calls:?}"))??;
    Ok(calls)
}

/// Delivers offsets 0, 1 and 2 named `ack_ids`, acks the first, nacks the
/// second and extends the third; returns the calls made until the
/// subscriber closed.
async fn ack_nack_extend(ack_ids: [&'static str; 3]) -> anyhow::Result<Vec<Call>> {
    let messages: Vec<ReceivedMessage> = (0..3).map(|i| message(i, ack_ids[i as usize])).collect();
    let (client, mut calls_rx) =
        stand_in(LONG_DEADLINE, move |_, _| stay_open(messages.clone())).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    let third = next(&mut subscriber).await?;
    for (delivery, (offset, ack_id)) in [&first, &second, &third]
        .into_iter()
        .zip((0..).zip(ack_ids))
    {
        assert_eq!((delivery.offset(), delivery.ack_id()), (offset, ack_id));
    }
    first.ack();
    second.nack();
    third.extend();
    // close() waits until every queued settlement was answered.
    within(subscriber.close()).await??;
    drop(third);
    Ok(drain(&mut calls_rx))
}

#[tokio::test(flavor = "multi_thread")]
async fn settlements_carry_the_ack_ids_and_no_offsets() -> anyhow::Result<()> {
    let calls = ack_nack_extend(["ack-a", "ack-b", "ack-c"]).await?;
    assert_eq!(
        settlements(&calls),
        [
            Named::new("ack", &[], &["ack-a"]),
            Named::new("nack", &[], &["ack-b"]),
            Named::new("extend", &[], &["ack-c"]),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ack_ids_settlements_carry_offsets() -> anyhow::Result<()> {
    let calls = ack_nack_extend(["", "", ""]).await?;
    assert_eq!(
        settlements(&calls),
        [
            Named::new("ack", &[0], &[]),
            Named::new("nack", &[1], &[]),
            Named::new("extend", &[2], &[]),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn held_deliveries_are_extended_on_a_timer_under_their_ack_id() -> anyhow::Result<()> {
    // A 1 s deadline: an extension every third of a second. Only that they
    // come is checked, not when: a slow machine sends fewer, later.
    let (client, mut calls_rx) = stand_in(1, |_, _| stay_open(vec![message(0, "held")])).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let held = next(&mut subscriber).await?;
    for _ in 0..3 {
        let calls = wait_for_call(&mut calls_rx, |c| c.names("extend", "held")).await?;
        let Some(Call::Extend(extension)) = calls.last() else {
            unreachable!("wait_for_call ends on an extension");
        };
        assert_eq!(extension.ack_deadline_seconds, 1);
        assert!(extension.offsets.is_empty(), "{extension:?}");
    }
    held.ack();
    within(subscriber.close()).await??;
    Ok(())
}

/// After a reconnect the stale delivery of an offset and the fresh one are
/// both held: the fresh lease is extended under the fresh ack_id, the
/// stale delivery neither nacks nor extends, and its ack goes out under
/// its own ack_id.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_and_a_fresh_delivery_of_one_offset_each_use_their_own_ack_id() -> anyhow::Result<()>
{
    let cue = Arc::new(Notify::new());
    let break_cue = Arc::clone(&cue);
    let script = move |_: &SubscribeRequest, n| match n {
        1 => end_on_cue(
            vec![message(5, "old-5"), message(6, "old-6")],
            &break_cue,
            Err(Status::unavailable("restarting")),
        ),
        _ => stay_open(vec![message(5, "new-5"), message(6, "new-6")]),
    };
    // A 1 s deadline: the fresh leases are extended every third of a second.
    let (client, mut calls_rx) = stand_in(1, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    let stale_5 = next(&mut subscriber).await?;
    let stale_6 = next(&mut subscriber).await?;
    cue.notify_one();
    let fresh_5 = next(&mut subscriber).await?;
    let fresh_6 = next(&mut subscriber).await?;
    assert_eq!(
        [stale_5.ack_id(), fresh_5.ack_id()],
        ["old-5", "new-5"],
        "the same offset, two deliveries"
    );

    // Rounds go one at a time: from the first one that extends a fresh
    // lease on, every call was made after the reconnect.
    let before = wait_for_call(&mut calls_rx, |c| c.names("extend", "new-5")).await?;
    let opened = before
        .iter()
        .filter(|c| matches!(c, Call::Subscribe(r) if r.subscription == "s"))
        .count();
    assert_eq!(opened, 2, "opened, then reopened once");
    let mut after = before.last().cloned().into_iter().collect::<Vec<_>>();
    stale_5.extend();
    stale_5.nack();
    stale_6.ack();
    after.extend(wait_for_call(&mut calls_rx, |c| c.names("ack", "old-6")).await?);
    after.extend(wait_for_call(&mut calls_rx, |c| c.names("extend", "new-6")).await?);
    fresh_5.ack();
    fresh_6.ack();
    within(subscriber.close()).await??;
    after.extend(drain(&mut calls_rx));

    let named = settlements(&after);
    for call in &named {
        assert!(call.offsets.is_empty(), "{call:?}");
        assert!(!call.ack_ids.iter().any(|id| id == "old-5"), "{call:?}");
        if call.kind == "extend" {
            assert!(!call.ack_ids.iter().any(|id| id == "old-6"), "{call:?}");
        }
    }
    let mut acked: Vec<&str> = named
        .iter()
        .filter(|call| call.kind == "ack")
        .flat_map(|call| call.ack_ids.iter().map(String::as_str))
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, ["new-5", "new-6", "old-6"]);
    Ok(())
}

/// The script of a subscription deleted under its first stream (on `cue`)
/// by a broker that then ends the stream with OK instead of NOT_FOUND:
/// reopening without a topic is NOT_FOUND, while a `Subscribe` carrying
/// the topic would create the subscription again and replay the topic.
fn deleted_under_the_first_stream(
    cue: Arc<Notify>,
) -> impl Fn(&SubscribeRequest, u32) -> Opened + Send + Sync + 'static {
    move |request, n| {
        let topic = vec![message(0, "a0"), message(1, "a1")];
        if n == 1 {
            end_on_cue(topic, &cue, Ok(()))
        } else if request.topic.is_empty() {
            Err(Status::not_found("subscription \"s\" does not exist"))
        } else {
            stay_open(topic)
        }
    }
}

/// Reads a subscription deleted under its first stream; checks it ends
/// with NOT_FOUND, once, and was created by the first `Subscribe` only.
async fn read_a_deleted_subscription(max_messages: Option<u32>) -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let script = deleted_under_the_first_stream(Arc::clone(&cue));
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut builder = client
        .subscriber("s")
        .topic("t")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    if let Some(max) = max_messages {
        builder = builder.max_messages(max);
    }
    let mut subscriber = builder.subscribe().await?;
    for offset in 0..2 {
        let delivery = next(&mut subscriber).await?;
        assert_eq!(delivery.offset(), offset);
        delivery.ack();
    }
    cue.notify_one();
    let err = match within(subscriber.next()).await? {
        Some(Err(err)) => err,
        other => anyhow::bail!("expected NOT_FOUND, got {other:?}"),
    };
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    within(subscriber.close()).await??;

    let creating: Vec<SubscribeRequest> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(request) if !request.topic.is_empty() => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(creating.len(), 1, "only the first open names the topic");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_subscription_ends_with_not_found_and_is_not_created_again() -> anyhow::Result<()>
{
    read_a_deleted_subscription(None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_max_messages_a_deleted_subscription_ends_with_not_found_too() -> anyhow::Result<()> {
    read_a_deleted_subscription(Some(10)).await
}

/// A stream that ends with OK before `max_messages` were delivered (a
/// proxy cut it, or a broker lost its final status) is not the end: the
/// subscriber reopens it, without the topic, for the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ended_early_with_ok_is_reopened_for_the_rest() -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let first_cue = Arc::clone(&cue);
    let script = move |request: &SubscribeRequest, n| match (n, request.max_messages) {
        (1, 2) => end_on_cue(vec![message(0, "a0")], &first_cue, Ok(())),
        (_, 1) => end_with_ok(vec![message(1, "a1")]),
        _ => Err(Status::invalid_argument(format!("unexpected {request:?}"))),
    };
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .max_messages(2)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    assert_eq!(first.offset(), 0);
    first.ack();
    cue.notify_one();
    let second = next(&mut subscriber).await?;
    assert_eq!(second.offset(), 1);
    second.ack();
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    within(subscriber.close()).await??;

    let opens: Vec<(String, u32)> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(r) => Some((r.topic, r.max_messages)),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [("t".to_owned(), 2), (String::new(), 1)]);
    Ok(())
}

/// `max_messages` counts what the application got: deliveries still
/// buffered when a stream breaks go back with it, so the reopened stream
/// asks for them again.
#[tokio::test(flavor = "multi_thread")]
async fn max_messages_counts_what_was_handed_out_across_a_break() -> anyhow::Result<()> {
    let cue = Arc::new(Notify::new());
    let break_cue = Arc::clone(&cue);
    let script = move |request: &SubscribeRequest, n| match (n, request.max_messages) {
        (1, 3) => end_on_cue(
            vec![message(0, "a0"), message(1, "a1")],
            &break_cue,
            Err(Status::unavailable("restarting")),
        ),
        (_, 2) => stay_open(vec![message(1, "b1"), message(2, "b2")]),
        _ => Err(Status::invalid_argument(format!("unexpected {request:?}"))),
    };
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_messages(3)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe()
        .await?;
    // Offset 1 arrives too, and waits in the buffer while the stream
    // breaks: the reopening shows the break was seen.
    let is_subscribe = |c: &Call| matches!(c, Call::Subscribe(_));
    wait_for_call(&mut calls_rx, is_subscribe).await?;
    let first = next(&mut subscriber).await?;
    cue.notify_one();
    let calls = wait_for_call(&mut calls_rx, is_subscribe).await?;
    let Some(Call::Subscribe(reopened)) = calls.last() else {
        unreachable!("wait_for_call ends on a Subscribe");
    };
    assert_eq!(reopened.max_messages, 2, "the two not handed out");
    let mut got = vec![(first.offset(), first.ack_id().to_owned())];
    for _ in 0..2 {
        let delivery = next(&mut subscriber).await?;
        got.push((delivery.offset(), delivery.ack_id().to_owned()));
        delivery.ack();
    }
    let expected = [(0, "a0"), (1, "b1"), (2, "b2")].map(|(o, id)| (o, id.to_owned()));
    assert_eq!(got, expected);
    assert!(within(subscriber.next()).await?.is_none(), "then the end");
    first.ack();
    within(subscriber.close()).await??;
    Ok(())
}

/// Asserts that nothing is delivered for `window` (a lower bound: a
/// loaded machine only makes it likelier to hold).
async fn nothing_within(subscriber: &mut Subscriber, window: Duration) {
    if let Ok(item) = tokio::time::timeout(window, subscriber.next()).await {
        panic!("expected no delivery within {window:?}, got {item:?}");
    }
}

/// The counts of an [`Error::Unsettled`]: (refused, given up).
fn unsettled(err: &Error) -> anyhow::Result<(u64, u64)> {
    match err {
        Error::Unsettled {
            refused, given_up, ..
        } => Ok((*refused, *given_up)),
        other => bail!("expected Error::Unsettled, got {other:?}"),
    }
}

/// How many `Ack` calls `calls` holds.
fn ack_calls(calls: &[Call]) -> usize {
    calls.iter().filter(|c| matches!(c, Call::Ack(_))).count()
}

/// Defect: acks refused before `close()` were taken by the subscriber's
/// own internal flush, and `close()` returned `Ok`.
#[tokio::test(flavor = "multi_thread")]
async fn close_reports_acks_the_broker_refused() -> anyhow::Result<()> {
    let refusal = Status::failed_precondition("acks are not accepted here");
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0"), message(1, "a1")]);
    let (client, mut calls_rx) =
        stand_in_with(LONG_DEADLINE, script, acks_refused(refusal)).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    next(&mut subscriber).await?.ack();
    next(&mut subscriber).await?.ack();
    // Refused before close began: close must still report it.
    wait_for_call(&mut calls_rx, |c| c.names("ack", "a1")).await?;

    let err = within(subscriber.close())
        .await?
        .expect_err("close reports the refused acks");
    assert_eq!(unsettled(&err)?, (2, 0), "{err}");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.to_string()
            .starts_with("2 acks, rejects or nacks were not stored"),
        "{err}"
    );
    let cause = std::error::Error::source(&err).context("the refusal is the source")?;
    assert!(
        cause.to_string().contains("acks are not accepted here"),
        "{cause}"
    );
    Ok(())
}

/// Defect: with a request timeout shorter than the broker takes to
/// answer, an ack was retried, given up at close, and `close()` returned
/// `Ok`. Timeouts are transient (retried), and giving up is reported.
#[tokio::test(flavor = "multi_thread")]
async fn close_reports_an_ack_given_up_after_timeouts() -> anyhow::Result<()> {
    let slow = Box::new(|_| (Duration::from_secs(3), Ok(())));
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "slow")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, slow).await?;
    let client = Client::builder(url)
        .request_timeout(Duration::from_millis(500))
        .connect()
        .await?;
    let mut subscriber = client
        .subscriber("s")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .subscribe()
        .await?;
    next(&mut subscriber).await?.ack();

    let err = within(subscriber.close())
        .await?
        .expect_err("close reports the ack it gave up");
    assert_eq!(unsettled(&err)?, (0, 1), "{err}");
    let cause = std::error::Error::source(&err).context("the cause is the source")?;
    assert!(cause.to_string().starts_with("given up after"), "{cause}");
    let calls = drain(&mut calls_rx);
    assert!(ack_calls(&calls) >= 2, "a timeout is retried: {calls:?}");
    Ok(())
}

/// Acks do not wait for the answer to the acks before them (with
/// ordering keys, an ack is what lets its key's next message go), while a
/// flush still waits for every one.
#[tokio::test(flavor = "multi_thread")]
async fn acks_go_while_earlier_acks_are_unanswered_and_a_flush_waits_for_all() -> anyhow::Result<()>
{
    let first_held = Box::new(|n| match n {
        1 => (EVENT_TIMEOUT * 3, Ok(())),
        _ => (Duration::ZERO, Ok(())),
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0"), message(1, "a1")]);
    let (client, mut calls_rx) = stand_in_with(LONG_DEADLINE, script, first_held).await?;
    let mut subscriber = client.subscriber("s").topic("t").subscribe().await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    first.ack();
    wait_for_call(&mut calls_rx, |call| call.names("ack", "a0")).await?;
    second.ack();
    wait_for_call(&mut calls_rx, |call| call.names("ack", "a1")).await?;
    let flushed = tokio::time::timeout(Duration::from_millis(500), subscriber.flush()).await;
    assert!(
        flushed.is_err(),
        "the flush answered while the first ack was unanswered: {flushed:?}"
    );
    Ok(())
}

/// An ack round that fails while a later one succeeds: a flush that
/// came with the later round still waits for the failed ack's retry.
///
/// Ordered by events, not by time. The stand-in numbers `Ack` calls after
/// it records them, so a1's ack is sent only once a0's is counted as the
/// first (else a1's could take the failing turn); and the first answer is
/// held until a1's ack is on the wire, so a1's round (which carries the
/// flush: a long flush interval sends nothing until a flush asks) is
/// always taken while a0's is unanswered.
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_waits_for_the_retry_of_an_earlier_round_that_failed() -> anyhow::Result<()> {
    let first_counted = Arc::new(Notify::new());
    let (second_sent_tx, second_sent_rx) = std::sync::mpsc::channel::<()>();
    let second_sent_rx = Mutex::new(second_sent_rx);
    let counted = Arc::clone(&first_counted);
    let acks = Box::new(move |n| match n {
        1 => {
            counted.notify_one();
            // The script answers synchronously: wait off the runtime's
            // workers (the test runs on several).
            tokio::task::block_in_place(|| {
                let second_sent_rx = second_sent_rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let _ = second_sent_rx.recv_timeout(EVENT_TIMEOUT);
            });
            (Duration::ZERO, Err(Status::unavailable("restarting")))
        }
        2 => {
            let _ = second_sent_tx.send(());
            (Duration::ZERO, Ok(()))
        }
        _ => (Duration::ZERO, Ok(())),
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0"), message(1, "a1")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, acks).await?;
    // The retry waits out the backoff: long enough that a flush which
    // did not wait for it would return before a0 is sent again.
    let retry_pause = Duration::from_millis(200);
    let mut subscriber = Client::connect(url)
        .await?
        .subscriber("s")
        .ack_flush_interval(EVENT_TIMEOUT * 3)
        .reconnect_backoff(retry_pause, retry_pause)
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;

    first.ack();
    let first_flush = subscriber.flush();
    tokio::pin!(first_flush);
    assert!(
        first_flush.as_mut().now_or_never().is_none(),
        "the flush answered before a0's ack was sent"
    );
    wait_for_call(&mut calls_rx, |call| call.names("ack", "a0")).await?;
    within(first_counted.notified()).await?;

    second.ack();
    within(subscriber.flush()).await??;
    let calls = drain(&mut calls_rx);
    assert_eq!(
        settlements(&calls),
        [
            Named::new("ack", &[], &["a1"]),
            Named::new("ack", &[], &["a0"]),
        ],
        "a1 alone while a0 was unanswered, then a0's retry, before the flush returned"
    );
    within(first_flush).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_reports_refused_acks_once() -> anyhow::Result<()> {
    let refusal = Status::not_found("subscription \"s\" does not exist");
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0")]);
    let (client, _calls_rx) = stand_in_with(LONG_DEADLINE, script, acks_refused(refusal)).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    next(&mut subscriber).await?.ack();
    let err = within(subscriber.flush())
        .await?
        .expect_err("flush reports the refusal");
    assert_eq!((unsettled(&err)?, err.code()), ((1, 0), Code::NotFound));
    within(subscriber.flush()).await??;
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_with_response_resolves_with_what_the_broker_answered() -> anyhow::Result<()> {
    let acks = Box::new(|n| match n {
        1 => (Duration::ZERO, Ok(())),
        _ => (Duration::ZERO, Err(Status::invalid_argument("bad ack_id"))),
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0"), message(1, "a1")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, acks).await?;
    let mut subscriber = Client::connect(url)
        .await?
        .subscriber("s")
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;

    within(first.ack_with_response()).await??;
    // Resolved only once the broker answered: it has the call by now.
    let calls = drain(&mut calls_rx);
    assert!(calls.iter().any(|c| c.names("ack", "a0")), "{calls:?}");

    let err = within(second.ack_with_response())
        .await?
        .expect_err("the refusal comes back");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // Already told to the one who awaited it: not reported again.
    within(subscriber.flush()).await??;
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_until_the_ack_is_stored() -> anyhow::Result<()> {
    let acks = Box::new(|n| {
        let answer = match n {
            1 => Err(Status::unavailable("restarting")),
            2 => Err(Status::deadline_exceeded("too slow")),
            3 => Err(Status::resource_exhausted("busy")),
            _ => Ok(()),
        };
        (Duration::ZERO, answer)
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "a0"), message(1, "a1")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, acks).await?;
    let mut subscriber = Client::connect(url)
        .await?
        .subscriber("s")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    within(first.ack_with_response()).await??;
    let calls = drain(&mut calls_rx);
    assert_eq!(
        ack_calls(&calls),
        4,
        "three failures, then stored: {calls:?}"
    );

    // The same for a nack.
    within(second.nack_with_response()).await??;
    within(subscriber.close()).await??;
    let calls = drain(&mut calls_rx);
    assert!(calls.iter().any(|c| c.names("nack", "a1")), "{calls:?}");
    Ok(())
}

/// Defect 5: past `max_lease_extension` the subscriber lets the lease go;
/// the broker may have delivered the message again under a new ack_id,
/// so the old delivery neither extends nor nacks it. Its ack still goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_past_max_lease_extension_is_neither_extended_nor_nacked() -> anyhow::Result<()> {
    // A 1 s deadline: automatic extensions every third of a second.
    let script = |_: &SubscribeRequest, _| {
        stay_open(vec![
            message(0, "stale"),
            message(1, "stale-acked"),
            message(2, "fence"),
        ])
    };
    let (client, mut calls_rx) = stand_in(1, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_lease_extension(Duration::ZERO)
        .subscribe()
        .await?;
    let stale = next(&mut subscriber).await?;
    let stale_acked = next(&mut subscriber).await?;
    let fence = next(&mut subscriber).await?;
    stale.extend();
    // Moot: the broker has it back already, so it resolves at once.
    within(stale.nack_with_response()).await??;
    stale_acked.ack();
    fence.ack();
    let mut calls = wait_for_call(&mut calls_rx, |c| c.names("ack", "fence")).await?;
    within(subscriber.close()).await??;
    calls.extend(drain(&mut calls_rx));

    let named = settlements(&calls);
    for call in &named {
        if call.kind != "ack" {
            assert!(call.ack_ids.is_empty(), "{call:?} of a lease let go");
        }
    }
    assert!(
        named
            .iter()
            .any(|c| c.kind == "ack" && c.ack_ids.iter().any(|id| id == "stale-acked")),
        "{named:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_outstanding_bytes_is_sent_and_held_to() -> anyhow::Result<()> {
    // A stand-in that ignores the limit: three of 1000 bytes at once.
    let big = |offset: u64| ReceivedMessage {
        payload: vec![b'x'; 1000].into(),
        ..message(offset, &format!("b{offset}"))
    };
    let script = move |_: &SubscribeRequest, _| stay_open(vec![big(0), big(1), big(2)]);
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_outstanding_bytes(2500)
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;
    nothing_within(&mut subscriber, Duration::from_millis(300)).await;
    first.ack();
    let third = next(&mut subscriber).await?;
    assert_eq!((second.offset(), third.offset()), (1, 2));

    let asked: Vec<u64> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(request) => Some(request.max_outstanding_bytes),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [2500]);
    second.ack();
    third.ack();
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_the_broker_is_asked_for_at_most_100_mib() -> anyhow::Result<()> {
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, |_, _| stay_open(Vec::new())).await?;
    let subscriber = client.subscriber("s").subscribe().await?;
    within(subscriber.close()).await??;
    let asked: Vec<u64> = drain(&mut calls_rx)
        .into_iter()
        .filter_map(|call| match call {
            Call::Subscribe(request) => Some(request.max_outstanding_bytes),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [tidings_client::DEFAULT_MAX_OUTSTANDING_BYTES]);
    assert_eq!(tidings_client::DEFAULT_MAX_OUTSTANDING_BYTES, 100 << 20);
    Ok(())
}

/// `shutdown` keeps the stream open (unread) while a handler holds a
/// delivery, sends its ack, and only then ends the stream; the message
/// received but never handed out goes back with the stream, not by a nack.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_the_stream_only_after_held_deliveries_are_settled() -> anyhow::Result<()> {
    let script =
        |_: &SubscribeRequest, _| stay_open(vec![message(0, "held"), message(1, "buffered")]);
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let held = next(&mut subscriber).await?;
    let shutdown = tokio::spawn(subscriber.shutdown(EVENT_TIMEOUT));

    // While the delivery is held, the stream stays open (a lower bound:
    // an early end would come within milliseconds).
    let mut calls = Vec::new();
    let ended_early = tokio::time::timeout(Duration::from_millis(300), async {
        while let Some(call) = calls_rx.recv().await {
            let ended = matches!(call, Call::StreamEnded(_));
            calls.push(call);
            if ended {
                return;
            }
        }
    })
    .await;
    assert!(
        ended_early.is_err(),
        "the stream ended while held: {calls:?}"
    );

    held.ack();
    let report = within(shutdown).await???;
    assert_eq!(report.unsettled, 0);
    calls.extend(wait_for_call(&mut calls_rx, |c| matches!(c, Call::StreamEnded(_))).await?);
    let acked = calls.iter().position(|c| c.names("ack", "held"));
    let ended = calls.iter().position(|c| matches!(c, Call::StreamEnded(_)));
    assert!(
        matches!((acked, ended), (Some(a), Some(e)) if a < e),
        "acked, then ended: {calls:?}"
    );
    let named = settlements(&calls);
    assert_eq!(named, [Named::new("ack", &[], &["held"])]);
    Ok(())
}

/// The `Reject` and `Nack` calls among `calls`: (kind, error, ack_ids),
/// sorted.
fn with_errors(calls: &[Call]) -> Vec<(&'static str, String, Vec<String>)> {
    let mut found: Vec<_> = calls
        .iter()
        .filter_map(|call| match call {
            Call::Reject(r) => Some(("reject", r.error.clone(), r.ack_ids.clone())),
            Call::Nack(r) => Some(("nack", r.error.clone(), r.ack_ids.clone())),
            _ => None,
        })
        .collect();
    found.sort();
    found
}

/// How many `Reject` calls `calls` holds.
fn reject_calls(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Reject(_)))
        .count()
}

/// A rejected delivery goes in a `Reject` call by its ack_id, with its
/// error, and its lease, extended while held, is not extended afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_reject_sends_the_ack_id_and_error_and_ends_the_lease() -> anyhow::Result<()> {
    // A 1 s deadline: extensions every third of a second.
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "r0"), message(1, "held")]);
    let (client, mut calls_rx) = stand_in(1, script).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    let rejected = next(&mut subscriber).await?;
    let held = next(&mut subscriber).await?;
    wait_for_call(&mut calls_rx, |c| c.names("extend", "r0")).await?;

    rejected.reject("unparsable order");
    let calls = wait_for_call(&mut calls_rx, |c| c.names("reject", "r0")).await?;
    let Some(Call::Reject(request)) = calls.last() else {
        unreachable!("wait_for_call ends on a reject");
    };
    assert_eq!(request.subscription, "s");
    assert_eq!(request.error, "unparsable order");
    assert_eq!(request.ack_ids, ["r0"]);
    assert!(request.offsets.is_empty(), "{request:?}");

    // Two more rounds of extensions: the held lease, never the rejected.
    let mut after = Vec::new();
    for _ in 0..2 {
        after.extend(wait_for_call(&mut calls_rx, |c| c.names("extend", "held")).await?);
    }
    assert!(
        !after.iter().any(|c| c.names("extend", "r0")),
        "extended after its reject: {after:?}"
    );
    held.ack();
    within(subscriber.close()).await??;
    Ok(())
}

/// Rejects are batched per error text: one `Reject` call per text, each
/// with the ack_ids rejected with it.
#[tokio::test(flavor = "multi_thread")]
async fn rejects_are_batched_per_error_text() -> anyhow::Result<()> {
    let script = |_: &SubscribeRequest, _| {
        stay_open(vec![message(0, "x0"), message(1, "x1"), message(2, "x2")])
    };
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    // Nothing is sent before close: all three go in the same round.
    let mut subscriber = client
        .subscriber("s")
        .ack_flush_interval(EVENT_TIMEOUT * 2)
        .subscribe()
        .await?;
    next(&mut subscriber).await?.reject("bad json");
    next(&mut subscriber).await?.reject("unknown customer");
    next(&mut subscriber).await?.reject("bad json");
    within(subscriber.close()).await??;
    let calls = drain(&mut calls_rx);
    let ids = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        with_errors(&calls),
        [
            ("reject", "bad json".to_owned(), ids(&["x0", "x2"])),
            ("reject", "unknown customer".to_owned(), ids(&["x1"])),
        ]
    );
    Ok(())
}

/// Rejects are idempotent: a transient failure is retried until stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_reject_is_retried_on_unavailable() -> anyhow::Result<()> {
    let answers = Box::new(|n| match n {
        1 => (Duration::ZERO, Err(Status::unavailable("restarting"))),
        _ => (Duration::ZERO, Ok(())),
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "r0")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, answers).await?;
    let mut subscriber = Client::connect(url)
        .await?
        .subscriber("s")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .subscribe()
        .await?;
    within(next(&mut subscriber).await?.reject_with_response("poison")).await??;
    let calls = drain(&mut calls_rx);
    assert_eq!(
        reject_calls(&calls),
        2,
        "refused once, then stored: {calls:?}"
    );
    let sent = with_errors(&calls);
    let same = ("reject", "poison".to_owned(), vec!["r0".to_owned()]);
    assert_eq!(sent, [same.clone(), same], "the retry is the same request");
    within(subscriber.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_with_response_resolves_with_what_the_broker_answered() -> anyhow::Result<()> {
    let answers = Box::new(|n| match n {
        1 => (Duration::ZERO, Ok(())),
        _ => (
            Duration::ZERO,
            Err(Status::not_found("no such subscription")),
        ),
    });
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "r0"), message(1, "r1")]);
    let (url, mut calls_rx) = serve(LONG_DEADLINE, script, answers).await?;
    let mut subscriber = Client::connect(url)
        .await?
        .subscriber("s")
        .subscribe()
        .await?;
    let first = next(&mut subscriber).await?;
    let second = next(&mut subscriber).await?;

    within(first.reject_with_response("first")).await??;
    // Resolved only once the broker answered: it has the call by now.
    let calls = drain(&mut calls_rx);
    assert!(calls.iter().any(|c| c.names("reject", "r0")), "{calls:?}");

    let err = within(second.reject_with_response("second"))
        .await?
        .expect_err("the refusal comes back");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.to_string().contains("no such subscription"), "{err}");
    // Already told to the one who awaited it: not reported again.
    within(subscriber.flush()).await??;
    within(subscriber.close()).await??;
    Ok(())
}

/// A refused fire-and-forget reject is reported by `close`, like an ack.
#[tokio::test(flavor = "multi_thread")]
async fn close_reports_a_reject_the_broker_refused() -> anyhow::Result<()> {
    let refusal = Status::failed_precondition("rejects are not accepted here");
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "r0")]);
    let (client, _calls_rx) = stand_in_with(LONG_DEADLINE, script, acks_refused(refusal)).await?;
    let mut subscriber = client.subscriber("s").subscribe().await?;
    next(&mut subscriber).await?.reject("poison");
    let err = within(subscriber.close())
        .await?
        .expect_err("close reports the refused reject");
    assert_eq!(unsettled(&err)?, (1, 0), "{err}");
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

/// Past `max_lease_extension` a nack is moot, but a reject still goes:
/// the broker ignores a stale ack_id, and may still hold this lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_reject_of_a_lease_let_go_is_still_sent() -> anyhow::Result<()> {
    let script = |_: &SubscribeRequest, _| stay_open(vec![message(0, "late")]);
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .max_lease_extension(Duration::ZERO)
        .subscribe()
        .await?;
    within(
        next(&mut subscriber)
            .await?
            .reject_with_response("too late"),
    )
    .await??;
    within(subscriber.close()).await??;
    let calls = drain(&mut calls_rx);
    assert_eq!(
        settlements(&calls),
        [Named::new("reject", &[], &["late"])],
        "{calls:?}"
    );
    Ok(())
}

/// `nack_with_error` puts its error in the `Nack` request; nacks are
/// grouped by (delay, error), and an error over the limit is cut to it on
/// a character boundary rather than refused.
#[tokio::test(flavor = "multi_thread")]
async fn nack_with_error_puts_the_error_in_the_request() -> anyhow::Result<()> {
    let script =
        |_: &SubscribeRequest, _| stay_open((0..4).map(|i| message(i, &format!("n{i}"))).collect());
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, script).await?;
    let mut subscriber = client
        .subscriber("s")
        .ack_flush_interval(EVENT_TIMEOUT * 2)
        .subscribe()
        .await?;
    // Two-byte characters: 1200 bytes, cut to 1024 (512 of them).
    let long = "é".repeat(600);
    next(&mut subscriber).await?.nack_with_error("timeout");
    next(&mut subscriber).await?.nack();
    next(&mut subscriber).await?.nack_with_error("timeout");
    next(&mut subscriber).await?.nack_with_error(long);
    within(subscriber.close()).await??;
    let calls = drain(&mut calls_rx);
    let ids = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
    let cut = "é".repeat(MAX_ERROR_BYTES / 2);
    assert_eq!(cut.len(), MAX_ERROR_BYTES);
    assert_eq!(
        with_errors(&calls),
        [
            ("nack", String::new(), ids(&["n1"])),
            ("nack", "timeout".to_owned(), ids(&["n0", "n2"])),
            ("nack", cut, ids(&["n3"])),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_silent_past_the_idle_timeout_is_taken_for_dead_and_reopened() -> anyhow::Result<()>
{
    // The first stream brings one message, then nothing at all; the
    // second brings the next.
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, |_, n| {
        stay_open(vec![message(u64::from(n) - 1, &format!("a{n}"))])
    })
    .await?;
    let idle = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .stream_idle_timeout(idle)
        .subscribe()
        .await?;
    assert_eq!(next(&mut subscriber).await?.offset(), 0);
    let reopened = next(&mut subscriber).await?;
    assert_eq!(reopened.offset(), 1);
    assert!(started.elapsed() >= idle, "not before the idle timeout");
    let calls = drain(&mut calls_rx);
    assert!(
        calls.iter().any(|c| matches!(c, Call::StreamEnded(1))),
        "the silent stream was ended: {calls:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_a_quiet_stream_alive_and_deliver_nothing() -> anyhow::Result<()> {
    // Empty frames every 50 ms for two seconds, then a message: the stream
    // is quiet four times longer than the idle timeout, but never silent
    // for a tenth of it.
    let (client, mut calls_rx) = stand_in(LONG_DEADLINE, |_, _| {
        let beats = futures::stream::iter(0..40).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stand_in::frame(Vec::new())
        });
        let message = futures::stream::iter([stand_in::frame(vec![message(0, "a0")])]);
        Ok(beats
            .chain(message)
            .chain(futures::stream::pending())
            .boxed())
    })
    .await?;
    let mut subscriber = client
        .subscriber("s")
        .topic("t")
        .stream_idle_timeout(Duration::from_millis(500))
        .subscribe()
        .await?;
    assert_eq!(next(&mut subscriber).await?.offset(), 0);
    let subscribes = drain(&mut calls_rx)
        .iter()
        .filter(|c| matches!(c, Call::Subscribe(_)))
        .count();
    assert_eq!(subscribes, 1, "the stream was never taken for dead");
    Ok(())
}
