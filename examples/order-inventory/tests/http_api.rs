//! The order service's HTTP API: bad input gets a 400 that says what to
//! send, unknown orders a 404, and a good order goes from pending to its
//! final status through the inventory.

mod support;

use anyhow::ensure;
use order_inventory::orders::{Order, OrderStatus};
use order_inventory::stock::StockReport;
use support::{Stack, get_json, http, poll_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_validated_and_settled_by_the_inventory() -> anyhow::Result<()> {
    let stack = Stack::start("tea-01=3").await?;
    let inventory = stack.start_inventory().await?;
    let orders = stack.start_orders().await?;

    for (body, complaint) in [
        (r#"{"sku": "tea-01"}"#, "missing field `quantity`"),
        (r#"{"sku": "tea-01", "quantity": 0}"#, "quantity must be"),
        (r#"{"sku": "tea 01", "quantity": 1}"#, "sku must be"),
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
        let body = format!(r#"{{"sku": "tea-01", "quantity": {quantity}}}"#);
        let (status, reply) = http(orders.addr, "POST", "/orders", body.as_bytes()).await?;
        ensure!(
            status == 201,
            "{status} {}",
            String::from_utf8_lossy(&reply)
        );
        placed.push(serde_json::from_slice::<Order>(&reply)?);
    }
    let mut settled = Vec::new();
    for order in &placed {
        let path = format!("/orders/{}", order.id);
        settled.push(
            poll_until("the order is settled", async || {
                let order: Order = get_json(orders.addr, &path).await?;
                Ok(Some(order).filter(|order| order.status != OrderStatus::Pending))
            })
            .await?,
        );
    }
    let outcomes: Vec<_> = settled.iter().map(|order| &order.status).collect();
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
