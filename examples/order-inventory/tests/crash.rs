//! The example's promise, end to end: `kill -9` the inventory service in
//! the middle of a stream of orders, restart it, and every order is decided
//! exactly once, with stock that adds up.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;

use anyhow::{Context as _, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use order_inventory::events::{Decision, OrderId, Outcome};
use order_inventory::orders::{Order, OrderStatus};
use order_inventory::stock::{self, StockReport};
use serde::Deserialize;
use support::{Stack, get_json, http, poll_until};

const STOCK: &str = "tea-01=200,mug-02=60,pot-03=5";
const SKUS: [&str; 3] = ["tea-01", "mug-02", "pot-03"];
/// Orders in all: 0..FIRST_WAVE while the inventory runs (it is killed
/// during this wave), the rest while it is down.
const ORDERS: usize = 200;
const FIRST_WAVE: usize = 120;
/// The inventory is killed once it decided this many orders.
const KILL_AFTER: usize = 10;
/// Orders sent at once.
const CONCURRENCY: usize = 16;

#[derive(Deserialize)]
struct OrderList {
    orders: Vec<Order>,
}

/// Order `i`: SKUs in turn, 1 to 3 units. Demand is about 133 units per SKU,
/// so tea-01 is always reserved while mug-02 and pot-03 run out.
fn order_body(i: usize) -> Vec<u8> {
    let body = serde_json::json!({ "sku": SKUS[i % 3], "quantity": 1 + (i / 3) % 3 });
    body.to_string().into_bytes()
}

async fn place_orders(orders: SocketAddr, range: Range<usize>) -> anyhow::Result<Vec<OrderId>> {
    futures::stream::iter(range)
        .map(|i| async move {
            let (status, body) = http(orders, "POST", "/orders", &order_body(i)).await?;
            ensure!(
                status == 201,
                "order {i}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            let order: Order = serde_json::from_slice(&body)?;
            ensure!(
                order.status == OrderStatus::Pending,
                "order {i} is not pending: {order:?}"
            );
            Ok(order.id)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

async fn list_orders(orders: SocketAddr) -> anyhow::Result<Vec<Order>> {
    let list: OrderList = get_json(orders, "/orders").await?;
    Ok(list.orders)
}

fn pending(orders: &[Order]) -> usize {
    let pending = orders.iter().filter(|o| o.status == OrderStatus::Pending);
    pending.count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_or_reserved_twice_when_inventory_is_killed() -> anyhow::Result<()> {
    let stack = Stack::start(STOCK).await?;
    let inventory = stack.start_inventory().await?;
    let orders = stack.start_orders().await?;

    // Kill -9 the inventory while the first wave streams in.
    let first_wave = tokio::spawn(place_orders(orders.addr, 0..FIRST_WAVE));
    let decided_at_kill = poll_until("the inventory decided a few orders", async || {
        let report: StockReport = get_json(inventory.addr, "/stock").await?;
        Ok(Some(report.decisions.len()).filter(|&decided| decided >= KILL_AFTER))
    })
    .await?;
    inventory.kill().await?;
    let mut placed = first_wave.await??;
    // The rest arrive while it is down: they wait in the broker.
    placed.extend(place_orders(orders.addr, FIRST_WAVE..ORDERS).await?);
    let waiting = pending(&list_orders(orders.addr).await?);
    ensure!(
        waiting > 0 && decided_at_kill < ORDERS,
        "the kill came after the last decision"
    );

    let inventory = stack.start_inventory().await?;
    let settled = poll_until("every order is settled", async || {
        let list = list_orders(orders.addr).await?;
        Ok(Some(list).filter(|list| list.len() == ORDERS && pending(list) == 0))
    })
    .await?;
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    println!(
        "killed after {decided_at_kill} decisions, {waiting} orders pending; now {:?}",
        report.stock
    );

    let mut ids: Vec<_> = settled.iter().map(|order| order.id.clone()).collect();
    ids.sort();
    placed.sort();
    assert_eq!(
        ids, placed,
        "the order service lists exactly the orders placed"
    );
    check_each_order_decided_once(&settled, &report)?;
    check_stock_adds_up(&settled, &report)?;
    check_journal_holds_one_decision_per_order(&stack.inventory_dir())?;

    ensure!(
        inventory.terminate().await?.success(),
        "inventory failed on SIGTERM"
    );
    ensure!(
        orders.terminate().await?.success(),
        "orders failed on SIGTERM"
    );
    stack.stop().await
}

/// Each order has exactly one decision, and the order's status is it.
fn check_each_order_decided_once(orders: &[Order], report: &StockReport) -> anyhow::Result<()> {
    let decisions: HashMap<&OrderId, &Decision> =
        report.decisions.iter().map(|d| (&d.order_id, d)).collect();
    ensure!(
        decisions.len() == report.decisions.len(),
        "an order was decided twice"
    );
    ensure!(
        decisions.len() == orders.len(),
        "{} decisions for {} orders",
        decisions.len(),
        orders.len()
    );
    for order in orders {
        let decision = decisions
            .get(&order.id)
            .context("an order has no decision")?;
        ensure!((decision.sku.as_str(), decision.quantity) == (order.sku.as_str(), order.quantity));
        let agree = match (&order.status, &decision.outcome) {
            (OrderStatus::Reserved, Outcome::Reserved) => true,
            (OrderStatus::Rejected { reason }, Outcome::Rejected { reason: why }) => reason == why,
            _ => false,
        };
        ensure!(
            agree,
            "order {:?} disagrees with decision {decision:?}",
            order
        );
    }
    Ok(())
}

/// Per SKU: what was reserved plus what is left is the initial stock, as
/// seen by both services; the scarce SKUs ran out and rejected orders.
fn check_stock_adds_up(orders: &[Order], report: &StockReport) -> anyhow::Result<()> {
    let initial = stock::parse_levels(STOCK).map_err(anyhow::Error::msg)?;
    ensure!(
        report.initial == initial,
        "initial stock {:?}",
        report.initial
    );
    let mut reserved = BTreeMap::<&str, u64>::new();
    let mut rejected = BTreeMap::<&str, usize>::new();
    for order in orders {
        match order.status {
            OrderStatus::Reserved => {
                *reserved.entry(&order.sku).or_default() += u64::from(order.quantity)
            }
            _ => *rejected.entry(&order.sku).or_default() += 1,
        }
    }
    for sku in SKUS {
        let left = report.stock.get(sku).copied().unwrap_or_default();
        let taken = reserved.get(sku).copied().unwrap_or_default();
        ensure!(
            taken + left == initial[sku],
            "{sku}: {taken} reserved + {left} left != {}",
            initial[sku]
        );
    }
    ensure!(
        !rejected.contains_key("tea-01"),
        "tea-01 had stock for every order"
    );
    ensure!(
        rejected.contains_key("mug-02") && rejected.contains_key("pot-03"),
        "no order was rejected"
    );
    ensure!(reserved.contains_key("pot-03"), "pot-03 reserved nothing");
    Ok(())
}

/// The inventory journal itself records each order once: a replay did not
/// hide a second decision.
fn check_journal_holds_one_decision_per_order(dir: &std::path::Path) -> anyhow::Result<()> {
    let journal = std::fs::read_to_string(dir.join(stock::JOURNAL_FILE))?;
    let mut seen = HashMap::<String, usize>::new();
    for line in journal.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["kind"] == "decided" {
            let id = record["order_id"]
                .as_str()
                .context("a decision without order_id")?;
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    ensure!(seen.len() == ORDERS, "{} orders in the journal", seen.len());
    ensure!(
        seen.values().all(|&count| count == 1),
        "an order was journaled twice"
    );
    Ok(())
}
