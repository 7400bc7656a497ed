//! `GET /stock/{sku}` on the order service: a `Call` on `stock.query`,
//! answered by the inventory's `Reply` with the units left; 404 for a SKU
//! the inventory does not hold, 400 for a bad one. With the inventory down
//! the answer is a 504 with a message, once the stock timeout has passed;
//! a restarted inventory gets past the stale question and answers the
//! next one.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use order_inventory::orders::Order;
use support::{PATIENCE, Stack, get_json, http, poll_until};

/// The subscription the inventory answers questions through.
const QUERY_SUBSCRIPTION: &str = "inventory.stock-query";

/// `GET path`: the status and the JSON answer.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, body) = http(addr, "GET", path, b"").await?;
    let body = serde_json::from_slice(&body)
        .with_context(|| format!("GET {path}: not JSON: {}", String::from_utf8_lossy(&body)))?;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_answers_how_many_units_are_left_through_call() -> anyhow::Result<()> {
    let stack = Stack::start("tea-01=3,mug-02=0").await?;
    let inventory = stack.start_inventory().await?;
    // A timeout no loaded machine reaches: this test is about the answer.
    let orders = stack.start_orders_with(&["--stock-timeout", "60s"]).await?;

    let (status, answer) = get(orders.addr, "/stock/tea-01").await?;
    ensure!(
        status == 200
            && answer == serde_json::json!({"sku": "tea-01", "available": 3, "in_stock": true}),
        "{status} {answer}"
    );
    let (status, answer) = get(orders.addr, "/stock/mug-02").await?;
    ensure!(
        status == 200 && answer["available"] == 0 && answer["in_stock"] == false,
        "{status} {answer}"
    );

    // An order takes two: the next answer says so.
    let body = serde_json::json!({"id": "q-1", "sku": "tea-01", "quantity": 2});
    let (status, reply) = http(orders.addr, "POST", "/orders", body.to_string().as_bytes()).await?;
    ensure!(
        status == 201,
        "{status} {}",
        String::from_utf8_lossy(&reply)
    );
    poll_until("order q-1 is settled", async || {
        let order: Order = get_json(orders.addr, "/orders/q-1").await?;
        Ok(Some(()).filter(|()| order.is_final()))
    })
    .await?;
    let (status, answer) = get(orders.addr, "/stock/tea-01").await?;
    ensure!(
        status == 200 && answer["available"] == 1 && answer["in_stock"] == true,
        "after the order: {status} {answer}"
    );

    let (status, answer) = get(orders.addr, "/stock/cup-9").await?;
    let error = answer["error"].as_str().unwrap_or_default();
    ensure!(
        status == 404 && error.contains("not in the inventory"),
        "{status} {answer}"
    );
    let (status, answer) = get(orders.addr, "/stock/tea%2001").await?;
    let error = answer["error"].as_str().unwrap_or_default();
    ensure!(
        status == 400 && error.contains("sku must be"),
        "{status} {answer}"
    );

    ensure!(inventory.terminate().await?.success());
    ensure!(orders.terminate().await?.success());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_question_times_out_with_504_while_the_inventory_is_down() -> anyhow::Result<()> {
    let stock_timeout = Duration::from_secs(1);
    let stack = Stack::start("tea-01=3").await?;
    let inventory = stack.start_inventory().await?;
    let orders = stack.start_orders_with(&["--stock-timeout", "1s"]).await?;
    inventory.kill().await?;

    let started = Instant::now();
    let asked = tokio::time::timeout(PATIENCE, get(orders.addr, "/stock/tea-01")).await;
    let (status, answer) = asked.context("GET /stock did not answer in time")??;
    let waited = started.elapsed();
    let error = answer["error"].as_str().unwrap_or_default();
    ensure!(
        status == 504 && error.contains("did not answer within 1s"),
        "{status} {answer}"
    );
    ensure!(
        waited >= stock_timeout,
        "answered 504 after {waited:?}, before the stock timeout"
    );

    // The question stays on the broker. The restarted inventory receives
    // it after its deadline, skips it, and answers the questions asked now
    // (one asked while it starts may time out too: then ask again).
    let inventory = stack.start_inventory().await?;
    let answer = poll_until("the restarted inventory answers", async || {
        match get(orders.addr, "/stock/tea-01").await? {
            (200, answer) => Ok(Some(answer)),
            (504, _) => Ok(None),
            (status, answer) => bail!("{status} {answer}"),
        }
    })
    .await?;
    ensure!(answer["available"] == 3, "{answer}");
    let client = stack.broker.client().await?;
    poll_until("every question is settled", async || {
        let subscription = client.get_subscription(QUERY_SUBSCRIPTION).await?;
        Ok(Some(()).filter(|()| subscription.backlog == 0))
    })
    .await?;

    ensure!(inventory.terminate().await?.success());
    ensure!(orders.terminate().await?.success());
    stack.stop().await
}
