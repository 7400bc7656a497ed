//! `inventory-service`: consumes `order.placed`, reserves stock or rejects
//! the order, publishes `stock.reserved` or `stock.rejected`, and only then
//! acknowledges the order.
//!
//! Delivery is at-least-once, so each order is decided once, by id: the
//! decision is journaled before it is published, and a redelivered order
//! gets its recorded decision published again (the crash may have come
//! between journal and publish) without touching the stock again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use order_inventory::events::{ORDER_PLACED, OrderPlaced, Outcome, STOCK_REJECTED, STOCK_RESERVED};
use order_inventory::service::{self, DEFAULT_BROKER};
use order_inventory::stock::{Ledger, Levels, StockReport, StockView, parse_levels};
use tidings_client::{Client, Delivery, Publisher};
use tracing::{info, warn};

/// How long an order waits before it is tried again after its decision
/// could not be published.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// The subscription this service consumes `order.placed` through.
const SUBSCRIPTION: &str = "inventory";

/// Reserves stock for placed orders and publishes the outcome.
#[derive(Debug, Parser)]
#[command(name = "inventory-service", version, about)]
struct Args {
    /// URL of the Tidings broker.
    #[arg(long, env = "INVENTORY_BROKER", default_value = DEFAULT_BROKER)]
    broker: String,
    /// Address to serve HTTP (`GET /stock`) on. Port 0 picks a free port;
    /// the address is printed as `listening on <addr>` once ready.
    #[arg(long, env = "INVENTORY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Directory of the inventory journal; created when missing.
    #[arg(long, env = "INVENTORY_DATA_DIR", default_value = "./inventory-data")]
    data_dir: PathBuf,
    /// Initial stock as SKU=UNITS pairs. Used only when the data directory
    /// is new: afterwards the journal holds the stock.
    #[arg(
        long,
        env = "INVENTORY_STOCK",
        default_value = "tea-01=100,mug-02=50",
        value_parser = parse_levels
    )]
    stock: Levels,
    /// What to log (to standard error): `info`, `debug`, `warn`, ...
    #[arg(long, env = "INVENTORY_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = service::init_tracing(&args.log) {
        eprintln!("inventory-service: {err}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("inventory-service: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = service::shutdown_on_signal().context("cannot handle signals")?;
    let mut ledger = Ledger::open(&args.data_dir, args.stock).await?;
    let client = Client::connect(args.broker).await?;
    service::ensure_topics(&client, &[ORDER_PLACED, STOCK_RESERVED, STOCK_REJECTED]).await?;
    let outcomes = Outcomes {
        reserved: client.publisher(STOCK_RESERVED),
        rejected: client.publisher(STOCK_REJECTED),
    };
    let placed = client
        .subscriber(SUBSCRIPTION)
        .topic(ORDER_PLACED)
        .subscribe();
    let placed = placed
        .await
        .with_context(|| format!("cannot subscribe to {ORDER_PLACED} as {SUBSCRIPTION}"))?;
    let listener = service::bind(args.listen).await?;
    let router = Router::new()
        .route("/stock", get(stock))
        .with_state(ledger.view());
    let served = tokio::try_join!(
        async {
            let served = service::serve_http(listener, router, shutdown.clone()).await;
            served.context("HTTP server failed")
        },
        service::consume(placed, &shutdown, async |delivery| {
            decide(&mut ledger, &outcomes, delivery).await
        }),
    );
    shutdown.cancel();
    outcomes.reserved.close().await?;
    outcomes.rejected.close().await?;
    served?;
    info!("stopped");
    Ok(())
}

/// The publishers of the two outcomes.
struct Outcomes {
    reserved: Publisher,
    rejected: Publisher,
}

/// Decides one placed order (or finds its earlier decision), publishes the
/// decision, then acks. Fails only when the journal fails: the service
/// then stops, and the order is delivered again after a restart.
async fn decide(
    ledger: &mut Ledger,
    outcomes: &Outcomes,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let order: OrderPlaced = match serde_json::from_slice(delivery.payload()) {
        Ok(order) => order,
        Err(err) => {
            warn!(offset = delivery.offset(), error = %err, "skipping an event that is not an order");
            delivery.ack();
            return Ok(());
        }
    };
    let (decision, first_time) = ledger.decide(&order).await?;
    let publisher = match decision.outcome {
        Outcome::Reserved => &outcomes.reserved,
        Outcome::Rejected { .. } => &outcomes.rejected,
    };
    let order = &decision.order_id;
    match publisher.publish(decision.to_message()).await {
        Ok(offset) => {
            info!(%order, sku = %decision.sku, quantity = decision.quantity,
                outcome = decision.topic(), first_time, offset, "order decided");
            delivery.ack();
        }
        Err(err) => {
            warn!(%order, error = %err, "cannot publish the decision; the order will come again");
            delivery.nack_after(RETRY_DELAY);
        }
    }
    Ok(())
}

/// `GET /stock`: the initial stock, the stock left and every decision.
async fn stock(State(view): State<StockView>) -> Json<StockReport> {
    Json(view.report())
}
