//! The example's promise, end to end: while clients keep placing orders,
//! `kill -9` each of the four processes in turn — the inventory, the
//! order service (while clients retry their orders under the same ids),
//! the notifier, the broker — and restart it; every order still ends
//! reserved or rejected, none is reserved twice, the stock adds up, no id
//! makes two orders, the broker holds exactly one `stock.*` event per
//! order, and every reserved order is notified once.
//!
//! Every kill waits for an event, never for a time: a number of decisions
//! the inventory reports, orders answered while a process is down, clients
//! that saw the order service gone.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use order_inventory::events::{Decision, INVENTORY_LEDGER, OrderId, Outcome};
use order_inventory::ledger::Entry;
use order_inventory::notifications::NotificationReport;
use order_inventory::orders::{self, Order, OrderStatus};
use order_inventory::stock::{self, StockReport};
use support::{
    Broker, Service, Stack, decision_events, get_json, http, list_orders, poll_until, read_topic,
    wait_for_notifier, with_stack,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// tea-01 never runs out; mug-02 and pot-03 do.
const STOCK: &str = "tea-01=100000,mug-02=40,pot-03=10";
const SKUS: [&str; 3] = ["tea-01", "mug-02", "pot-03"];
/// Clients placing orders at once, each one order at a time.
const CLIENTS: usize = 8;
/// Each kill comes once the inventory decided this many more orders.
const DECISIONS_BEFORE_KILL: usize = 15;
/// While the inventory or the broker is down, the clients place this many
/// orders before it is started again.
const ORDERS_WHILE_DOWN: usize = 15;
/// The order service's `--answer-timeout`.
const ANSWER_TIMEOUT: &str = "1s";
/// A client gives up on an answer after this long and sends the order
/// again, under the same id.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client waits this long before it sends an order again.
const CLIENT_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Order `i`: its id, SKU (in turn) and 1 to 3 units.
fn order_of(i: usize) -> (String, &'static str, u32) {
    let quantity = 1 + (i / 3) % 3;
    (format!("c-{i}"), SKUS[i % 3], quantity as u32)
}

/// Clients that place orders `c-0`, `c-1`, ... until stopped, each order
/// until it is answered 200, 201 or 202: an order whose attempt failed
/// (no connection, no answer in time, a 5xx) is sent again, unchanged.
struct Load {
    /// Where the order service is now; a restart moves it.
    orders_addr: Arc<Mutex<SocketAddr>>,
    /// Orders answered so far.
    answered_rx: watch::Receiver<usize>,
    /// Attempts that failed so far.
    failures: Arc<AtomicUsize>,
    stop: CancellationToken,
    clients: JoinSet<anyhow::Result<Vec<Answered>>>,
}

/// An order a client got an answer for.
struct Answered {
    index: usize,
    status: u16,
    attempts: usize,
}

impl Load {
    fn start(orders_addr: SocketAddr) -> Self {
        let orders_addr = Arc::new(Mutex::new(orders_addr));
        let (answered_tx, answered_rx) = watch::channel(0);
        let answered_tx = Arc::new(answered_tx);
        let failures = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            let client = Client {
                orders_addr: Arc::clone(&orders_addr),
                answered_tx: Arc::clone(&answered_tx),
                failures: Arc::clone(&failures),
                next: Arc::clone(&next),
                stop: stop.clone(),
            };
            clients.spawn(client.run());
        }
        Self {
            orders_addr,
            answered_rx,
            failures,
            stop,
            clients,
        }
    }

    fn answered(&self) -> usize {
        *self.answered_rx.borrow()
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    fn move_to(&self, addr: SocketAddr) {
        *self
            .orders_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Waits until `count` orders are answered.
    async fn wait_answered(&mut self, count: usize) -> anyhow::Result<()> {
        let waiting = self.answered_rx.wait_for(|&answered| answered >= count);
        tokio::time::timeout(support::PATIENCE, waiting)
            .await
            .with_context(|| format!("{count} orders were not answered in time"))?
            .context("every client stopped")?;
        Ok(())
    }

    /// Stops the clients once each has its order answered; returns every
    /// answered order, by index.
    async fn finish(self) -> anyhow::Result<BTreeMap<usize, Answered>> {
        self.stop.cancel();
        let mut answered = BTreeMap::new();
        for answers in self.clients.join_all().await {
            for answer in answers? {
                answered.insert(answer.index, answer);
            }
        }
        Ok(answered)
    }
}

/// One client of [`Load`].
struct Client {
    orders_addr: Arc<Mutex<SocketAddr>>,
    answered_tx: Arc<watch::Sender<usize>>,
    failures: Arc<AtomicUsize>,
    next: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Client {
    async fn run(self) -> anyhow::Result<Vec<Answered>> {
        let mut answered = Vec::new();
        while !self.stop.is_cancelled() {
            let index = self.next.fetch_add(1, Ordering::SeqCst);
            answered.push(self.place(index).await?);
            self.answered_tx.send_modify(|count| *count += 1);
        }
        Ok(answered)
    }

    async fn place(&self, index: usize) -> anyhow::Result<Answered> {
        let (id, sku, quantity) = order_of(index);
        let body = serde_json::json!({ "id": id, "sku": sku, "quantity": quantity });
        let body = body.to_string().into_bytes();
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let addr = *self
                .orders_addr
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let sent = tokio::time::timeout(CLIENT_TIMEOUT, http(addr, "POST", "/orders", &body));
            match sent.await {
                Ok(Ok((status @ 200..=202, reply))) => {
                    let order: Order = serde_json::from_slice(&reply)?;
                    ensure!(
                        (order.id.as_str(), order.sku.as_str(), order.quantity)
                            == (id.as_str(), sku, quantity),
                        "order {id} answered as {order:?}"
                    );
                    return Ok(Answered {
                        index,
                        status,
                        attempts,
                    });
                }
                Ok(Ok((status, reply))) if status < 500 => {
                    bail!("order {id}: {status} {}", String::from_utf8_lossy(&reply))
                }
                // No connection, no answer in time, or a 5xx: try again.
                _ => {
                    self.failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            ensure!(
                started.elapsed() < support::PATIENCE,
                "order {id} was not answered in {attempts} attempts"
            );
            tokio::time::sleep(CLIENT_RETRY_DELAY).await;
        }
    }
}

/// Decisions the inventory reports.
async fn decisions(inventory: &Service) -> anyhow::Result<usize> {
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    Ok(report.decisions.len())
}

/// Waits until the inventory reports `more` decisions than now; returns
/// how many it reports then.
async fn wait_for_more_decisions(inventory: &Service, more: usize) -> anyhow::Result<usize> {
    let goal = decisions(inventory).await? + more;
    poll_until("the inventory decided more orders", async || {
        let decided = decisions(inventory).await?;
        Ok(Some(decided).filter(|&decided| decided >= goal))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_ends_final_once_when_each_process_is_killed_in_turn() -> anyhow::Result<()> {
    with_stack(STOCK, kill_each_process_in_turn).await
}

async fn kill_each_process_in_turn(stack: &mut Stack) -> anyhow::Result<()> {
    let started = Instant::now();
    let answer_timeout = ["--answer-timeout", ANSWER_TIMEOUT];
    let mut inventory = stack.start_inventory().await?;
    let mut orders = stack.start_orders_with(&answer_timeout).await?;
    let mut notifier = stack.start_notifier().await?;
    let mut load = Load::start(orders.addr);

    // The inventory: the orders placed while it is down wait in the broker.
    let decided = wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    inventory.kill().await?;
    let stored = decision_events(&stack.broker).await?.len();
    println!("killed the inventory after {decided} decisions seen, {stored} stored");
    load.wait_answered(load.answered() + ORDERS_WHILE_DOWN)
        .await?;
    inventory = stack.start_inventory().await?;

    // The order service, while the clients' orders are in flight: each
    // client sends its order again, under the same id, until the
    // restarted service answers it.
    let decided = wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    orders.kill().await?;
    let failures = load.failures();
    println!("killed the order service after {decided} decisions");
    poll_until("every client saw the order service gone", async || {
        Ok(Some(()).filter(|()| load.failures() >= failures + CLIENTS))
    })
    .await?;
    orders = stack.start_orders_with(&answer_timeout).await?;
    load.move_to(orders.addr);

    // The notifier, while reservations are pushed to it: those made while
    // it is down are pushed again once it is back (on another port, which
    // it gives its push subscription).
    let decided = wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    notifier.kill().await?;
    println!("killed the notifier after {decided} decisions");
    wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    notifier = stack.start_notifier().await?;

    // The broker, restarted on its port and data: orders placed meanwhile
    // are answered 202 and announced once it is back.
    let decided = wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    stack.broker.kill().await?;
    println!("killed the broker after {decided} decisions");
    load.wait_answered(load.answered() + ORDERS_WHILE_DOWN)
        .await?;
    stack.broker.restart().await?;

    // Everything works again; then the clients stop.
    wait_for_more_decisions(&inventory, DECISIONS_BEFORE_KILL).await?;
    let answered = load.finish().await?;
    let settled = poll_until("every order is final", async || {
        let list = list_orders(orders.addr).await?;
        let pending = list.iter().filter(|order| !order.is_final()).count();
        Ok(Some(list).filter(|list| list.len() >= answered.len() && pending == 0))
    })
    .await?;
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    let reserved = (settled.iter())
        .filter(|order| order.status == OrderStatus::Reserved)
        .count();
    let client = stack.broker.client().await?;
    let notified = wait_for_notifier(
        notifier.addr,
        &client,
        "every reservation is notified and nothing is left to push",
        |notified| notified.notifications.len() >= reserved,
    )
    .await?;
    report_answers(&answered, started);
    report_pushes(&notified);

    check_one_order_per_id(&settled, &answered, &stack.orders_dir())?;
    check_one_decision_event_per_order(&stack.broker, &report, &settled).await?;
    check_ledger_holds_the_reported_decisions(&stack.broker, &report).await?;
    check_orders_agree_with_decisions(&settled, &report)?;
    check_stock_adds_up(&settled, &report)?;
    check_each_reservation_notified_once(&settled, &notified)?;

    ensure!(
        inventory.terminate().await?.success(),
        "inventory failed on SIGTERM"
    );
    ensure!(
        orders.terminate().await?.success(),
        "orders failed on SIGTERM"
    );
    ensure!(
        notifier.terminate().await?.success(),
        "notifier failed on SIGTERM"
    );
    Ok(())
}

fn report_pushes(notified: &NotificationReport) {
    let retried = (notified.notifications.iter())
        .filter(|n| n.delivery_attempt > 1)
        .count();
    println!(
        "{} notifications, {retried} of them pushed more than once; {} repeats ignored since the notifier's restart",
        notified.notifications.len(),
        notified.repeats_ignored
    );
}

fn report_answers(answered: &BTreeMap<usize, Answered>, started: Instant) {
    let mut statuses = BTreeMap::<u16, usize>::new();
    for answer in answered.values() {
        *statuses.entry(answer.status).or_default() += 1;
    }
    let retried = answered.values().filter(|a| a.attempts > 1).count();
    println!(
        "{} orders in {:.1?}: answers {statuses:?}, {retried} sent more than once",
        answered.len(),
        started.elapsed()
    );
}

/// The order service holds exactly the orders the clients placed, each
/// once, as sent: an order sent again under its id (after a failed
/// attempt, a kill, a timeout) made no second order. Its journal shows it
/// too: one pending record per id.
fn check_one_order_per_id(
    orders: &[Order],
    answered: &BTreeMap<usize, Answered>,
    orders_dir: &Path,
) -> anyhow::Result<()> {
    let mut ids: Vec<_> = orders.iter().map(|order| order.id.clone()).collect();
    ids.sort();
    let mut placed: Vec<_> = (answered.keys())
        .map(|&i| OrderId::from(order_of(i).0.as_str()))
        .collect();
    placed.sort();
    ensure!(
        ids == placed,
        "the order service lists {} orders for the {} placed",
        ids.len(),
        placed.len()
    );
    for order in orders {
        let index: usize = (order.id.as_str().strip_prefix("c-"))
            .and_then(|i| i.parse().ok())
            .context("an order the clients did not place")?;
        let (_, sku, quantity) = order_of(index);
        ensure!(
            (order.sku.as_str(), order.quantity) == (sku, quantity),
            "order {order:?} is not what was sent"
        );
    }
    let journal = std::fs::read_to_string(orders_dir.join(orders::JOURNAL_FILE))?;
    let mut placements = HashMap::<OrderId, usize>::new();
    for line in journal.lines() {
        let order: Order = serde_json::from_str(line)?;
        if order.status == OrderStatus::Pending {
            *placements.entry(order.id).or_default() += 1;
        }
    }
    let twice: Vec<_> = placements.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(twice.is_empty(), "ids placed more than once: {twice:?}");
    ensure!(
        placements.len() == orders.len(),
        "{} orders journaled",
        placements.len()
    );
    Ok(())
}

/// Each order has a decision, and the order's status is it. (The report
/// cannot show an order decided twice: the inventory keeps the first
/// decision it reads. The broker's topics show it; see
/// [`check_one_decision_event_per_order`].)
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

/// The notifier told each reserved order once, and no other: the pushes
/// it missed while it was down came again, and those it got twice made
/// no second notification. Each tells what the order reserved.
fn check_each_reservation_notified_once(
    orders: &[Order],
    notified: &NotificationReport,
) -> anyhow::Result<()> {
    let reserved: HashMap<&OrderId, &Order> = (orders.iter())
        .filter(|order| order.status == OrderStatus::Reserved)
        .map(|order| (&order.id, order))
        .collect();
    let mut told = HashMap::<&OrderId, usize>::new();
    for notification in &notified.notifications {
        *told.entry(&notification.order_id).or_default() += 1;
        let order = (reserved.get(&notification.order_id))
            .with_context(|| format!("{notification:?} is not about a reserved order"))?;
        ensure!(
            (order.sku.as_str(), order.quantity)
                == (notification.sku.as_str(), notification.quantity),
            "{notification:?} does not tell {order:?}"
        );
    }
    let twice: Vec<_> = told.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(
        twice.is_empty(),
        "orders notified more than once: {twice:?}"
    );
    ensure!(
        told.len() == reserved.len(),
        "{} of {} reserved orders notified",
        told.len(),
        reserved.len()
    );
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

/// The broker holds exactly one `stock.*` event per order, on the topic of
/// its outcome, and it is the decision the inventory reports: no order was
/// decided twice, not even across the kills.
async fn check_one_decision_event_per_order(
    broker: &Broker,
    report: &StockReport,
    orders: &[Order],
) -> anyhow::Result<()> {
    let events = decision_events(broker).await?;
    let mut seen = HashMap::<&OrderId, usize>::new();
    for (topic, decision) in &events {
        *seen.entry(&decision.order_id).or_default() += 1;
        ensure!(*topic == decision.topic(), "{decision:?} is on {topic}");
    }
    let mut twice: Vec<_> = (seen.iter())
        .filter(|(_, count)| **count > 1)
        .map(|(order, count)| format!("{order} ({count})"))
        .collect();
    twice.sort();
    ensure!(
        twice.is_empty(),
        "{} orders have more than one decision event, such as {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    ensure!(
        seen.len() == orders.len(),
        "decision events for {} orders, {} orders placed",
        seen.len(),
        orders.len()
    );
    let reported: HashMap<&OrderId, &Decision> =
        report.decisions.iter().map(|d| (&d.order_id, d)).collect();
    for (_, decision) in &events {
        ensure!(
            reported.get(&decision.order_id) == Some(&decision),
            "the event {decision:?} is not what the inventory reports"
        );
    }
    Ok(())
}

/// The inventory's ledger on the broker starts with the initial stock and
/// holds the decisions the inventory reports, in the same order, each
/// order once: the state the restarted inventory rebuilt is the ledger.
async fn check_ledger_holds_the_reported_decisions(
    broker: &Broker,
    report: &StockReport,
) -> anyhow::Result<()> {
    let client = broker.client().await?;
    let mut entries = Vec::new();
    for message in read_topic(&client, INVENTORY_LEDGER).await? {
        let entry: Entry = serde_json::from_slice(&message.payload)
            .with_context(|| format!("ledger entry at offset {}", message.offset))?;
        entries.push(entry);
    }
    let mut entries = entries.into_iter();
    ensure!(
        matches!(entries.next(), Some(Entry::Initial { stock }) if stock == report.initial),
        "the ledger does not start with the initial stock"
    );
    let decided: Vec<Decision> = entries
        .map(|entry| match entry {
            Entry::Decided(decision) => Ok(decision),
            other => Err(anyhow::anyhow!("a ledger entry past the start: {other:?}")),
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        decided == report.decisions,
        "the ledger holds {} decisions, the inventory reports {}",
        decided.len(),
        report.decisions.len()
    );
    Ok(())
}
