//! The order service's HTTP API: bad input gets a 400 that says what to
//! send, unknown orders a 404, a good order goes from pending to its final
//! status through the inventory; an order id makes retries safe; and the
//! answer comes in time, and the order is settled, whatever the broker or
//! the client does.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use order_inventory::orders::{self, Order, OrderStatus};
use order_inventory::stock::StockReport;
use support::{Stack, get_json, http, list_orders, poll_until};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// `POST /orders` with `body`; the status and the JSON answer.
async fn post(
    addr: SocketAddr,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, reply) = http(addr, "POST", "/orders", body.to_string().as_bytes()).await?;
    let reply = serde_json::from_slice(&reply)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&reply)))?;
    Ok((status, reply))
}

/// Waits until the order `id` is reserved or rejected.
async fn settled(orders: SocketAddr, id: &str) -> anyhow::Result<Order> {
    let path = format!("/orders/{id}");
    poll_until(&format!("order {id} is settled"), async || {
        let order: Order = get_json(orders, &path).await?;
        Ok(Some(order).filter(Order::is_final))
    })
    .await
}

/// How many times the order service's journal records `id` as placed.
fn placements(stack: &Stack, id: &str) -> anyhow::Result<usize> {
    let journal = std::fs::read_to_string(stack.orders_dir().join(orders::JOURNAL_FILE))?;
    let mut count = 0;
    for line in journal.lines() {
        let order: Order = serde_json::from_str(line)?;
        count += usize::from(order.id.as_str() == id && order.status == OrderStatus::Pending);
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_validated_and_settled_by_the_inventory() -> anyhow::Result<()> {
    let stack = Stack::start("tea-01=3").await?;
    let inventory = stack.start_inventory().await?;
    let orders = stack.start_orders().await?;

    for (body, complaint) in [
        (r#"{"sku": "tea-01"}"#, "missing field `quantity`"),
        (r#"{"sku": "tea-01", "quantity": 0}"#, "quantity must be"),
        (r#"{"sku": "tea 01", "quantity": 1}"#, "sku must be"),
        (
            r#"{"id": "a/b", "sku": "tea-01", "quantity": 1}"#,
            "id must be",
        ),
        (
            r#"{"id": "", "sku": "tea-01", "quantity": 1}"#,
            "id must be",
        ),
        ("not json", "send JSON such as"),
    ] {
        let (status, reply) = http(orders.addr, "POST", "/orders", body.as_bytes()).await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply)?;
        let error = reply["error"].as_str().unwrap_or_default();
        ensure!(
            status == 400 && error.contains(complaint),
            "{body}: {status} {reply}"
        );
    }
    let (status, _) = http(orders.addr, "GET", "/orders/o-nope", b"").await?;
    ensure!(status == 404, "unknown order: {status}");

    let mut placed = Vec::new();
    for quantity in [2, 2] {
        let body = serde_json::json!({"sku": "tea-01", "quantity": quantity});
        let (status, reply) = post(orders.addr, &body).await?;
        ensure!(status == 201, "{status} {reply}");
        placed.push(serde_json::from_value::<Order>(reply)?);
    }
    let mut outcomes = Vec::new();
    for order in &placed {
        outcomes.push(settled(orders.addr, order.id.as_str()).await?.status);
    }
    // The first order came first, took 2 of the 3 units; the second found 1.
    ensure!(
        matches!(
            outcomes[..],
            [OrderStatus::Reserved, OrderStatus::Rejected { .. }]
        ),
        "{outcomes:?}"
    );
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    ensure!(
        report.stock.get("tea-01") == Some(&1),
        "stock left: {:?}",
        report.stock
    );

    ensure!(inventory.terminate().await?.success());
    ensure!(orders.terminate().await?.success());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_sent_again_under_its_id_is_one_order_even_across_a_kill() -> anyhow::Result<()> {
    let stack = Stack::start("tea-01=10").await?;
    let inventory = stack.start_inventory().await?;
    let mut orders = stack.start_orders().await?;
    let order = serde_json::json!({"id": "my-order-1", "sku": "tea-01", "quantity": 2});
    let changed = serde_json::json!({"id": "my-order-1", "sku": "tea-01", "quantity": 3});

    let (status, reply) = post(orders.addr, &order).await?;
    ensure!(
        status == 201 && reply["id"] == "my-order-1",
        "{status} {reply}"
    );
    // A retry (the client missed the answer) finds the same order.
    let (status, reply) = post(orders.addr, &order).await?;
    ensure!(
        status == 200 && reply["id"] == "my-order-1" && reply["quantity"] == 2,
        "a retry: {status} {reply}"
    );
    // Another order under the same id is refused, and says why.
    let (status, reply) = post(orders.addr, &changed).await?;
    let error = reply["error"].as_str().unwrap_or_default();
    ensure!(
        status == 409 && error.contains("already exists") && error.contains("quantity 2"),
        "another order under a used id: {status} {reply}"
    );
    settled(orders.addr, "my-order-1").await?;

    // The journal keeps the id across a kill -9 of the order service.
    orders.kill().await?;
    orders = stack.start_orders().await?;
    let (status, reply) = post(orders.addr, &order).await?;
    ensure!(
        status == 200 && reply["id"] == "my-order-1" && reply["status"] == "reserved",
        "a retry after a restart: {status} {reply}"
    );
    let (status, reply) = post(orders.addr, &changed).await?;
    ensure!(
        status == 409,
        "another order after a restart: {status} {reply}"
    );

    let list = list_orders(orders.addr).await?;
    ensure!(list.len() == 1, "{} orders", list.len());
    ensure!(
        placements(&stack, "my-order-1")? == 1,
        "placed more than once"
    );
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    ensure!(
        report.decisions.len() == 1 && report.stock.get("tea-01") == Some(&8),
        "the inventory saw {} orders; stock {:?}",
        report.decisions.len(),
        report.stock
    );

    ensure!(inventory.terminate().await?.success());
    ensure!(orders.terminate().await?.success());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_while_the_broker_hangs_is_answered_in_time_and_settled_later()
-> anyhow::Result<()> {
    let answer_timeout = Duration::from_secs(2);
    let stack = Stack::start("tea-01=10").await?;
    let inventory = stack.start_inventory().await?;
    let orders = stack.start_orders_with(&["--answer-timeout", "2s"]).await?;
    // One order through, so that every connection to the broker is open.
    let (status, reply) = post(
        orders.addr,
        &serde_json::json!({"sku": "tea-01", "quantity": 1}),
    )
    .await?;
    ensure!(status == 201, "{status} {reply}");

    stack.broker.pause().await?;
    // Answered 202 (recorded, not announced yet) within the answer timeout,
    // with five times that as margin on a loaded machine.
    let order = serde_json::json!({"id": "while-hung", "sku": "tea-01", "quantity": 2});
    let started = Instant::now();
    let answered = tokio::time::timeout(5 * answer_timeout, post(orders.addr, &order)).await;
    let (status, reply) = answered.context("POST /orders did not answer in time")??;
    ensure!(
        status == 202 && reply["status"] == "pending",
        "{status} {reply} after {:?}",
        started.elapsed()
    );
    // A client that gives up before the answer (as `curl -m 1` does): its
    // order is recorded all the same, and announced once it can be.
    let order = serde_json::json!({"id": "given-up", "sku": "tea-01", "quantity": 3});
    let gave_up = tokio::time::timeout(answer_timeout / 2, post(orders.addr, &order)).await;
    ensure!(
        gave_up.is_err(),
        "answered before the broker was back: {gave_up:?}"
    );
    poll_until("the given-up order is recorded", async || {
        let (status, _) = http(orders.addr, "GET", "/orders/given-up", b"").await?;
        Ok(Some(()).filter(|()| status == 200))
    })
    .await?;

    // The broker comes back; the order service was never restarted.
    stack.broker.resume().await?;
    for id in ["while-hung", "given-up"] {
        let order = settled(orders.addr, id).await?;
        ensure!(order.status == OrderStatus::Reserved, "{order:?}");
    }
    let report: StockReport = get_json(inventory.addr, "/stock").await?;
    ensure!(report.stock.get("tea-01") == Some(&4), "{:?}", report.stock);

    ensure!(inventory.terminate().await?.success());
    ensure!(orders.terminate().await?.success());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_whose_clients_hang_up_are_listed_exactly_as_journaled() -> anyhow::Result<()> {
    let stack = Stack::start("tea-01=10").await?;
    let orders = stack.start_orders().await?;
    // Clients that send an order and hang up at once or after a moment,
    // some of them while the order is being journaled.
    let mut hang_ups = tokio::task::JoinSet::new();
    for i in 0..50_u64 {
        let addr = orders.addr;
        hang_ups.spawn(async move {
            let body =
                serde_json::json!({"id": format!("hang-up-{i}"), "sku": "tea-01", "quantity": 1});
            let body = body.to_string();
            let mut stream = TcpStream::connect(addr).await?;
            let head = format!(
                "POST /orders HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            let mut reply = [0; 1];
            let patience = Duration::from_micros(100 * (i % 25));
            let _ = tokio::time::timeout(
                patience,
                tokio::io::AsyncReadExt::read(&mut stream, &mut reply),
            )
            .await;
            anyhow::Ok(())
        });
    }
    for hung_up in hang_ups.join_all().await {
        hung_up?;
    }
    // The order book's writer takes orders one after another: once this
    // one is answered, it is done with every order handed to it before.
    // A hung-up request may still reach it later, so the journal is read
    // before and after the listing: every order journaled before it must
    // be listed (once the writer has put it in the book, which follows its
    // journal line), and every order listed must be journaled by then.
    let last = serde_json::json!({"id": "last", "sku": "tea-01", "quantity": 1});
    let (status, reply) = post(orders.addr, &last).await?;
    ensure!(matches!(status, 201 | 202), "{status} {reply}");

    let journaled = |stack: &Stack| -> anyhow::Result<BTreeSet<String>> {
        let journal = std::fs::read_to_string(stack.orders_dir().join(orders::JOURNAL_FILE))?;
        journal
            .lines()
            .map(|line| Ok(serde_json::from_str::<Order>(line)?.id.to_string()))
            .collect()
    };
    let before = journaled(&stack)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let list = list_orders(orders.addr).await?;
        let listed: BTreeSet<_> = list.iter().map(|o| o.id.to_string()).collect();
        if listed.is_superset(&before) || tokio::time::Instant::now() >= deadline {
            break listed;
        }
        tokio::task::yield_now().await;
    };
    let after = journaled(&stack)?;
    println!("{} of 50 orders recorded", listed.len() - 1);
    ensure!(
        before.is_subset(&listed) && listed.is_subset(&after),
        "journaled but not listed: {:?}; listed but not journaled: {:?}",
        before.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&after).collect::<Vec<_>>()
    );

    ensure!(orders.terminate().await?.success());
    stack.stop().await
}
