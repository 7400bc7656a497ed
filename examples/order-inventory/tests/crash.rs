//! The example's promise, end to end: `kill -9` the inventory service in
//! the middle of a stream of orders, restart it, and every order is decided
//! exactly once, with stock that adds up.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

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
/// The inventory is killed once it decided this many orders. The test
/// checks that orders of the first wave were left undecided: the kill
/// follows the poll that sees this many within about 20 ms, and the other
/// 110 decisions of the wave take 20 times that (about 4 ms each here).
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
    // What the killed inventory had decided: its journal, which nothing
    // writes to now. Orders of the first wave must be left undecided, or
    // the kill came after the inventory's work rather than in the middle.
    let journaled_at_kill = journaled_decisions(&stack.inventory_dir())?.len();
    ensure!(
        (KILL_AFTER..FIRST_WAVE).contains(&journaled_at_kill),
        "the kill did not come in the middle of the first wave: \
         {journaled_at_kill} of its {FIRST_WAVE} orders were decided"
    );
    let mut placed = first_wave.await??;
    // The rest arrive while it is down: they wait in the broker.
    placed.extend(place_orders(orders.addr, FIRST_WAVE..ORDERS).await?);
    let waiting = pending(&list_orders(orders.addr).await?);

    let inventory = stack.start_inventory().await?;
    let settled = poll_until("every order is settled", async || {
        let list = list_orders(orders.addr).await?;
        Ok(Some(list).filter(|list| list.len() == ORDERS && pending(list) == 0))
    })
    .await?;
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    println!(
        "killed after {decided_at_kill} decisions seen ({journaled_at_kill} journaled), \
         {waiting} orders pending; now {:?}",
        report.stock
    );

    let mut ids: Vec<_> = settled.iter().map(|order| order.id.clone()).collect();
    ids.sort();
    placed.sort();
    assert_eq!(
        ids, placed,
        "the order service lists exactly the orders placed"
    );
    check_journal_holds_one_decision_per_order(&stack.inventory_dir(), &report)?;
    check_orders_agree_with_decisions(&settled, &report)?;
    check_stock_adds_up(&settled, &report)?;

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

/// Each order has a decision, and the order's status is it. (The report
/// cannot show an order decided twice: the inventory keeps the first
/// decision it replays. The journal shows it; see
/// [`check_journal_holds_one_decision_per_order`].)
fn check_orders_agree_with_decisions(orders: &[Order], report: &StockReport) -> anyhow::Result<()> {
    let decisions: HashMap<&OrderId, &Decision> =
        report.decisions.iter().map(|d| (&d.order_id, d)).collect();
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

/// The decisions in the inventory journal at `dir`, in the order taken.
/// Every decision the inventory took is there, also one taken a second
/// time for the same order, which its state (and so `GET /stock`) hides.
/// A last line without its newline, torn by a kill, is left out, as the
/// inventory itself leaves it out.
fn journaled_decisions(dir: &Path) -> anyhow::Result<Vec<Decision>> {
    let journal = std::fs::read_to_string(dir.join(stock::JOURNAL_FILE))?;
    let mut decisions = Vec::new();
    let whole_lines = journal.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    for line in whole_lines {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["kind"] == "decided" {
            decisions.push(serde_json::from_value(record)?);
        }
    }
    Ok(decisions)
}

/// The inventory journal records each order exactly once, and holds the
/// decisions the inventory reports: no order was decided twice, not even
/// across the kill.
fn check_journal_holds_one_decision_per_order(
    dir: &Path,
    report: &StockReport,
) -> anyhow::Result<()> {
    let journaled = journaled_decisions(dir)?;
    let mut seen = HashMap::<&OrderId, usize>::new();
    for decision in &journaled {
        *seen.entry(&decision.order_id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(twice.is_empty(), "orders decided more than once: {twice:?}");
    ensure!(seen.len() == ORDERS, "{} orders in the journal", seen.len());
    ensure!(
        journaled == report.decisions,
        "the journal and the inventory's report differ"
    );
    Ok(())
}
