//! The notifier with the broker, and no other service: the tests publish
//! the `stock.reserved` events themselves. Each reservation is notified
//! once though the broker pushes it again (after a Seek, as a second event
//! for the order, after the notifier was killed); a push without the token
//! is refused and retried until the notifier, restarted, puts its token
//! (and its new address) back on the subscription.

mod support;

use std::net::SocketAddr;

use anyhow::{Context as _, ensure};
use order_inventory::events::{Decision, OrderId, Outcome, STOCK_RESERVED};
use order_inventory::notifications::{Notification, NotificationReport, SUBSCRIPTION};
use support::{
    NOTIFIER_TOKEN, PUSH_PATH, Stack, http_with_headers, notifications, poll_until, push_backlog,
    wait_for_notifier, with_stack,
};
use tidings_client::{Client, PushConfig, StartPosition, SubscriptionUpdate};

/// No inventory runs here; the stack wants a stock all the same.
const STOCK: &str = "tea-01=10";

/// The reservation of order `r-<i>`.
fn reservation(i: usize) -> Decision {
    Decision {
        order_id: OrderId::from(format!("r-{i}").as_str()),
        sku: "tea-01".into(),
        quantity: 1 + (i % 3) as u32,
        outcome: Outcome::Reserved,
    }
}

/// Publishes `decisions` on `stock.reserved`, as the inventory does.
async fn publish(client: &Client, decisions: &[Decision]) -> anyhow::Result<()> {
    let messages = decisions.iter().map(|d| d.to_message().into()).collect();
    client.publish_batch(STOCK_RESERVED, messages).await?;
    Ok(())
}

/// Pushes the notifier took since it started: one notification or one
/// repeat each (the notifications made before a restart count too).
fn handled(report: &NotificationReport) -> usize {
    report.notifications.len() + report.repeats_ignored as usize
}

/// Waits until the notifier at `addr` took `count` pushes since it
/// started and has nothing left to push.
async fn wait_for_pushes(
    addr: SocketAddr,
    client: &Client,
    count: usize,
) -> anyhow::Result<NotificationReport> {
    let what = format!("the notifier took {count} pushes");
    wait_for_notifier(addr, client, &what, |report| handled(report) >= count).await
}

/// `notified` holds exactly one notification per decision, each telling
/// what was reserved.
fn ensure_once_each(notified: &[Notification], decisions: &[Decision]) -> anyhow::Result<()> {
    let mut ids: Vec<_> = notified.iter().map(|n| &n.order_id).collect();
    ids.sort();
    let mut wanted: Vec<_> = decisions.iter().map(|d| &d.order_id).collect();
    wanted.sort();
    ensure!(ids == wanted, "notified {ids:?}, reserved {wanted:?}");
    for decision in decisions {
        let notification = (notified.iter())
            .find(|n| n.order_id == decision.order_id)
            .context("a reservation without its notification")?;
        ensure!(
            (notification.sku.as_str(), notification.quantity)
                == (decision.sku.as_str(), decision.quantity),
            "{notification:?} does not tell {decision:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_pushed_again_is_notified_once() -> anyhow::Result<()> {
    with_stack(STOCK, async |stack| pushed_again(stack).await).await
}

async fn pushed_again(stack: &Stack) -> anyhow::Result<()> {
    let client = stack.broker.client().await?;
    let mut notifier = stack.start_notifier().await?;
    let mut reserved: Vec<Decision> = (1..=5).map(reservation).collect();
    publish(&client, &reserved).await?;
    let first = wait_for_pushes(notifier.addr, &client, 5).await?;
    ensure_once_each(&first.notifications, &reserved)?;
    ensure!(first.repeats_ignored == 0, "{first:?}");

    // The broker pushes every event again.
    client.seek(SUBSCRIPTION, StartPosition::Earliest).await?;
    let again = wait_for_pushes(notifier.addr, &client, 10).await?;
    ensure!(
        again.notifications == first.notifications,
        "a push made a second notification: {again:?}"
    );

    // A second event for an order already notified, at another offset.
    publish(&client, &reserved[2..3]).await?;
    let copy = wait_for_pushes(notifier.addr, &client, 11).await?;
    ensure!(
        copy.notifications == first.notifications,
        "a second event made a second notification: {copy:?}"
    );

    // Killed and restarted, the notifier still knows whom it told.
    notifier.kill().await?;
    notifier = stack.start_notifier().await?;
    let restarted = notifications(notifier.addr).await?;
    ensure!(
        restarted.notifications == first.notifications,
        "the restarted notifier lost notifications: {restarted:?}"
    );
    client.seek(SUBSCRIPTION, StartPosition::Earliest).await?;
    let after = wait_for_pushes(notifier.addr, &client, 11).await?;
    ensure!(
        after.notifications == first.notifications,
        "a push after the restart made a second notification: {after:?}"
    );

    // And it notifies what is new.
    reserved.push(reservation(6));
    publish(&client, &reserved[5..]).await?;
    let more = wait_for_pushes(notifier.addr, &client, 12).await?;
    ensure_once_each(&more.notifications, &reserved)?;
    ensure!(notifier.terminate().await?.success(), "notifier failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_the_token_is_refused_and_retried_until_the_token_is_right()
-> anyhow::Result<()> {
    with_stack(STOCK, async |stack| wrong_token(stack).await).await
}

/// The push configuration of the notifier's subscription, checked to push
/// to the notifier at `addr` with its token.
async fn push_config(client: &Client, addr: SocketAddr) -> anyhow::Result<PushConfig> {
    let subscription = client.get_subscription(SUBSCRIPTION).await?;
    let push = subscription
        .push_config
        .context("not a push subscription")?;
    ensure!(
        push.endpoint == format!("http://{addr}{PUSH_PATH}"),
        "{push:?}"
    );
    let authorization = push.headers.get("authorization").map(String::as_str);
    let bearer = format!("Bearer {NOTIFIER_TOKEN}");
    ensure!(authorization == Some(bearer.as_str()), "{push:?}");
    Ok(push)
}

async fn wrong_token(stack: &Stack) -> anyhow::Result<()> {
    let client = stack.broker.client().await?;
    let mut notifier = stack.start_notifier().await?;
    let wrong = [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", NOTIFIER_TOKEN)],
    ];
    for headers in &wrong {
        let answer = http_with_headers(notifier.addr, "POST", PUSH_PATH, headers, b"{}").await?;
        ensure!(answer.0 == 401, "{headers:?}: {answer:?}");
    }
    let report = notifications(notifier.addr).await?;
    ensure!(report.unauthorized == 3, "{report:?}");

    // Someone gives the subscription another token: the notifier refuses
    // each push of the reservation, and the broker tries it again.
    let push = push_config(&client, notifier.addr).await?;
    let update = SubscriptionUpdate::default()
        .push_config(Some(push.header("authorization", "Bearer wrong")));
    client.update_subscription(SUBSCRIPTION, update).await?;
    let reserved = [reservation(1)];
    publish(&client, &reserved).await?;
    let refused = poll_until("3 pushes refused", async || {
        let report = notifications(notifier.addr).await?;
        Ok(Some(report).filter(|report| report.unauthorized >= 6))
    })
    .await?;
    ensure!(refused.notifications.is_empty(), "{refused:?}");
    ensure!(push_backlog(&client).await? == 1, "the reservation waits");

    // Restarted (on another port), the notifier puts its address and its
    // token back, and the next try gets through.
    ensure!(notifier.terminate().await?.success(), "notifier failed");
    notifier = stack.start_notifier().await?;
    push_config(&client, notifier.addr).await?;
    let report = wait_for_notifier(notifier.addr, &client, "the notification", |report| {
        !report.notifications.is_empty()
    })
    .await?;
    ensure_once_each(&report.notifications, &reserved)?;
    let attempt = report.notifications[0].delivery_attempt;
    ensure!(
        attempt >= 4,
        "the refused pushes count: pushed {attempt} times"
    );
    ensure!(notifier.terminate().await?.success(), "notifier failed");
    Ok(())
}
