//! `inventory-service`: consumes `order.placed`, reserves stock or rejects
//! the order, and publishes `stock.reserved` or `stock.rejected` in the
//! same `Commit` that acknowledges the order. It answers `stock.query`
//! calls with the stock left.
//!
//! It keeps no files. Its state lives in its ledger on the broker (see
//! `order_inventory::ledger`), read at start; a decision changes it only
//! once the broker stored the commit. A commit refused with ABORTED (the
//! order was decided by another delivery, or the ledger moved on) changes
//! nothing; the service reads what it missed and goes on.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use order_inventory::events::{
    self, ORDER_PLACED, OrderPlaced, STOCK_QUERY, STOCK_REJECTED, STOCK_RESERVED, StockLevel,
    StockQuery,
};
use order_inventory::ledger::{Handled, Ledger, LedgerError};
use order_inventory::service::{self, DEFAULT_BROKER};
use order_inventory::stock::{Levels, StockReport, StockView, parse_levels};
use tidings_client::{Client, Delivery, Subscriber};
use tracing::{debug, info, warn};

/// The subscription this service consumes `order.placed` through.
const SUBSCRIPTION: &str = "inventory";
/// The subscription this service answers `stock.query` through.
const QUERY_SUBSCRIPTION: &str = "inventory.stock-query";
/// Deliveries held at once per subscription. The service handles one at a
/// time, so a few are enough; the rest stay with the broker, free for
/// another consumer.
const MAX_OUTSTANDING: u32 = 8;

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
    /// Initial stock as SKU=UNITS pairs. Used only when the ledger on the
    /// broker is empty: afterwards the ledger holds the stock.
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
    let client = Client::connect(args.broker).await?;
    let topics = [ORDER_PLACED, STOCK_RESERVED, STOCK_REJECTED, STOCK_QUERY];
    service::ensure_topics(&client, &topics).await?;
    // The state first: no order is decided before the ledger is read.
    let mut ledger = Ledger::open(client.clone(), args.stock)
        .await
        .context("cannot rebuild the stock from the ledger")?;
    let view = ledger.view();
    let placed = subscribe(&client, SUBSCRIPTION, ORDER_PLACED).await?;
    let questions = subscribe(&client, QUERY_SUBSCRIPTION, STOCK_QUERY).await?;
    let listener = service::bind(args.listen).await?;
    let router = Router::new()
        .route("/stock", get(stock))
        .with_state(view.clone());
    tokio::try_join!(
        async {
            let served = service::serve_http(listener, router, shutdown.clone()).await;
            served.context("HTTP server failed")
        },
        service::consume(placed, &shutdown, async |delivery| {
            decide(&mut ledger, delivery).await
        }),
        service::consume(questions, &shutdown, async |delivery| {
            answer(&client, &view, delivery).await;
            anyhow::Ok(())
        }),
    )?;
    info!("stopped");
    Ok(())
}

async fn subscribe(client: &Client, name: &str, topic: &str) -> anyhow::Result<Subscriber> {
    let subscribing = (client.subscriber(name).topic(topic))
        .max_outstanding_messages(MAX_OUTSTANDING)
        .subscribe();
    subscribing
        .await
        .with_context(|| format!("cannot subscribe to {topic} as {name}"))
}

/// Decides one placed order (or finds its earlier decision) through the
/// ledger, which settles the delivery. Fails only when the broker refuses
/// a commit for good (the service stops: an operator must look); a broker
/// that is down or slow just gives the order back.
async fn decide(ledger: &mut Ledger, delivery: Delivery) -> anyhow::Result<()> {
    let order: OrderPlaced = match serde_json::from_slice(delivery.payload()) {
        Ok(order) => order,
        Err(err) => {
            warn!(offset = delivery.offset(), error = %err, "skipping an event that is not an order");
            delivery.ack();
            return Ok(());
        }
    };
    let id = &order.order_id;
    match ledger.decide(&order, delivery).await {
        Ok(Handled::Decided { decision, offset }) => {
            info!(order = %id, sku = %decision.sku, quantity = decision.quantity,
                outcome = decision.topic(), ledger_offset = offset, "order decided");
        }
        Ok(Handled::Repeated(decision)) => {
            info!(order = %id, outcome = decision.topic(), "order decided before; acknowledged again");
        }
        Ok(Handled::Aborted) => {
            info!(order = %id, "commit aborted: the order was decided elsewhere or the ledger moved on; read the ledger again");
        }
        Err(LedgerError::Broker(err)) if is_transient(err.code()) => {
            warn!(order = %id, error = %err, "cannot store the decision now; the order will come again");
        }
        Err(err) => return Err(err).context("cannot store decisions"),
    }
    Ok(())
}

/// Whether a failed call may succeed later without anyone changing
/// anything: the broker is down, restarting, slow or busy.
fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// Answers one stock question with the units left, unless its caller
/// stopped waiting; acknowledges it either way (a question is asked once:
/// one that came too late, or whose answer was lost, is asked again by the
/// caller if it still wants to know).
async fn answer(client: &Client, view: &StockView, delivery: Delivery) {
    if !events::is_awaited(delivery.reply_deadline(), SystemTime::now()) {
        debug!(
            offset = delivery.offset(),
            "skipping a stock question nobody waits for"
        );
        delivery.ack();
        return;
    }
    let query: StockQuery = match serde_json::from_slice(delivery.payload()) {
        Ok(query) => query,
        Err(err) => {
            warn!(offset = delivery.offset(), error = %err, "skipping a stock question that does not parse");
            delivery.ack();
            return;
        }
    };
    let level = StockLevel {
        available: view.available(&query.sku),
        sku: query.sku,
    };
    match client.reply(&delivery, level.to_message()).await {
        Ok(()) => {
            debug!(sku = %level.sku, available = ?level.available, "answered a stock question")
        }
        // The call ended between the check above and the reply.
        Err(err) if err.code() == tonic::Code::NotFound => {
            debug!(sku = %level.sku, "the caller stopped waiting before the answer");
        }
        Err(err) => warn!(sku = %level.sku, error = %err, "cannot answer a stock question"),
    }
    delivery.ack();
}

/// `GET /stock`: the initial stock, the stock left, every decision and how
/// this process's commits went.
async fn stock(State(view): State<StockView>) -> Json<StockReport> {
    Json(view.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_that_is_down_or_slow_is_transient_a_refusal_is_not() {
        assert!(is_transient(tonic::Code::Unavailable));
        assert!(is_transient(tonic::Code::DeadlineExceeded));
        assert!(!is_transient(tonic::Code::NotFound));
        assert!(!is_transient(tonic::Code::InvalidArgument));
    }
}
