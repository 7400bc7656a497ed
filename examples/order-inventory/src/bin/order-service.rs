//! `order-service`: takes orders over HTTP, publishes `order.placed`, and
//! settles each order when `stock.reserved` or `stock.rejected` arrives.
//!
//! The journal comes first (an outbox): an order exists once it is on
//! disk, and an order whose `order.placed` may not have reached the broker
//! is published again, on start and after a failed publish. The inventory
//! decides each order once by id, so publishing twice is harmless.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use order_inventory::events::{
    Decision, ORDER_PLACED, OrderId, OrderPlaced, STOCK_REJECTED, STOCK_RESERVED,
};
use order_inventory::orders::{Order, OrderBook, Settled};
use order_inventory::service::{self, DEFAULT_BROKER};
use serde::{Deserialize, Serialize};
use tidings_client::{Client, Delivery, Publisher, Subscriber};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often orders whose publish failed are published again.
const REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// The largest quantity one order may ask for.
const MAX_QUANTITY: i64 = 1000;
/// The longest SKU accepted.
const MAX_SKU_LEN: usize = 64;

/// Takes orders over HTTP and settles them from inventory events.
#[derive(Debug, Parser)]
#[command(name = "order-service", version, about)]
struct Args {
    /// URL of the Tidings broker.
    #[arg(long, env = "ORDERS_BROKER", default_value = DEFAULT_BROKER)]
    broker: String,
    /// Address to serve HTTP on. Port 0 picks a free port; the address is
    /// printed as `listening on <addr>` once the service is ready.
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the order journal; created when missing.
    #[arg(long, env = "ORDERS_DATA_DIR", default_value = "./order-data")]
    data_dir: PathBuf,
    /// What to log (to standard error): `info`, `debug`, `warn`, ...
    #[arg(long, env = "ORDERS_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = service::init_tracing(&args.log) {
        eprintln!("order-service: {err}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("order-service: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = service::shutdown_on_signal().context("cannot handle signals")?;
    let orders = OrderBook::open(&args.data_dir).await?;
    let client = Client::connect(args.broker).await?;
    service::ensure_topics(&client, &[ORDER_PLACED, STOCK_RESERVED, STOCK_REJECTED]).await?;
    let outbox = Outbox::new(client.publisher(ORDER_PLACED), &orders);
    let reserved = subscribe(&client, "order-service.stock-reserved", STOCK_RESERVED).await?;
    let rejected = subscribe(&client, "order-service.stock-rejected", STOCK_REJECTED).await?;
    let listener = service::bind(args.listen).await?;
    let app = App {
        orders: orders.clone(),
        outbox: outbox.clone(),
    };
    let served = tokio::try_join!(
        async {
            let served = service::serve_http(listener, router(app), shutdown.clone()).await;
            served.context("HTTP server failed")
        },
        service::consume(reserved, &shutdown, async |delivery| {
            settle(&orders, delivery).await
        }),
        service::consume(rejected, &shutdown, async |delivery| {
            settle(&orders, delivery).await
        }),
        async {
            outbox.run(&shutdown).await;
            Ok(())
        },
    );
    shutdown.cancel();
    outbox.publisher.close().await?;
    served?;
    info!("stopped");
    Ok(())
}

async fn subscribe(client: &Client, name: &str, topic: &str) -> anyhow::Result<Subscriber> {
    let subscribing = client.subscriber(name).topic(topic).subscribe();
    subscribing
        .await
        .with_context(|| format!("cannot subscribe to {topic} as {name}"))
}

/// Moves the order named by a `stock.*` event to its final status.
/// Fails only when the journal fails: the service then stops.
async fn settle(orders: &OrderBook, delivery: Delivery) -> anyhow::Result<()> {
    let decision: Decision = match serde_json::from_slice(delivery.payload()) {
        Ok(decision) => decision,
        Err(err) => {
            warn!(offset = delivery.offset(), error = %err, "skipping an event that is not a decision");
            delivery.ack();
            return Ok(());
        }
    };
    let settled = orders.settle(&decision).await?;
    let order = &decision.order_id;
    match settled {
        Settled::Updated => info!(%order, outcome = decision.topic(), "order settled"),
        Settled::AlreadyFinal => debug!(%order, "ignoring a repeated decision"),
        Settled::UnknownOrder => warn!(%order, "ignoring a decision about an unknown order"),
    }
    delivery.ack();
    Ok(())
}

/// Publishes `order.placed` and keeps the events whose publish failed, to
/// publish them again.
#[derive(Clone)]
struct Outbox {
    publisher: Publisher,
    retry: Arc<Mutex<BTreeMap<OrderId, OrderPlaced>>>,
}

impl Outbox {
    /// An outbox that first publishes every pending order again: this
    /// service may have stopped before their events were stored.
    fn new(publisher: Publisher, orders: &OrderBook) -> Self {
        let pending = orders
            .pending()
            .into_iter()
            .map(|order| order.placed_event());
        let retry = pending.map(|event| (event.order_id.clone(), event));
        Self {
            publisher,
            retry: Arc::new(Mutex::new(retry.collect())),
        }
    }

    /// Publishes `event`; when that fails, keeps it for [`Outbox::run`].
    async fn publish(&self, event: OrderPlaced) {
        let order = event.order_id.clone();
        match self.publisher.publish(event.to_message()).await {
            Ok(offset) => debug!(%order, offset, "published order.placed"),
            Err(err) => {
                warn!(%order, error = %err, "cannot publish order.placed yet; will retry");
                let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
                retry.insert(order, event);
            }
        }
    }

    /// Publishes the kept events again, now and then every
    /// [`REPUBLISH_INTERVAL`], until `shutdown`.
    async fn run(&self, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(REPUBLISH_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due =
                std::mem::take(&mut *self.retry.lock().unwrap_or_else(PoisonError::into_inner));
            if !due.is_empty() {
                info!(orders = due.len(), "publishing order.placed again");
            }
            futures::future::join_all(due.into_values().map(|event| self.publish(event))).await;
        }
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    orders: OrderBook,
    outbox: Outbox,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .with_state(app)
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    sku: String,
    quantity: i64,
}

impl PlaceOrder {
    /// The SKU and quantity, or why they are not acceptable.
    fn validate(self) -> Result<(String, u32), HttpError> {
        let sku_ok = (1..=MAX_SKU_LEN).contains(&self.sku.len())
            && (self.sku.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !sku_ok {
            return Err(HttpError::bad_request(format!(
                "sku must be 1 to {MAX_SKU_LEN} ASCII letters, digits, '-', '_' or '.'"
            )));
        }
        match u32::try_from(self.quantity) {
            Ok(quantity) if (1..=MAX_QUANTITY).contains(&self.quantity) => Ok((self.sku, quantity)),
            _ => Err(HttpError::bad_request(format!(
                "quantity must be a whole number from 1 to {MAX_QUANTITY}"
            ))),
        }
    }
}

/// `POST /orders`: records the order, publishes `order.placed`, answers
/// 201 with the pending order.
async fn place_order(
    State(app): State<App>,
    body: Bytes,
) -> Result<(StatusCode, Json<Order>), HttpError> {
    let request: PlaceOrder = serde_json::from_slice(&body).map_err(|err| {
        HttpError::bad_request(format!(
            "invalid order ({err}); send JSON such as {{\"sku\": \"tea-01\", \"quantity\": 2}}"
        ))
    })?;
    let (sku, quantity) = request.validate()?;
    let order = app.orders.place(sku, quantity).await.map_err(|err| {
        error!(error = %err, "cannot record an order");
        HttpError::internal("cannot record the order; try again later")
    })?;
    info!(order = %order.id, sku = %order.sku, quantity, "order placed");
    app.outbox.publish(order.placed_event()).await;
    Ok((StatusCode::CREATED, Json(order)))
}

/// `GET /orders/{id}`: the order, or 404.
async fn get_order(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Order>, HttpError> {
    let order = app.orders.get(&OrderId::from(id.as_str()));
    order.map(Json).ok_or_else(|| HttpError {
        status: StatusCode::NOT_FOUND,
        message: format!("order {id:?} not found"),
    })
}

/// The body of `GET /orders`.
#[derive(Debug, Serialize)]
struct OrderList {
    orders: Vec<Order>,
}

/// `GET /orders`: every order, oldest first.
async fn list_orders(State(app): State<App>) -> Json<OrderList> {
    Json(OrderList {
        orders: app.orders.list(),
    })
}

/// An HTTP error answered as `{"error": "..."}`.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn internal(message: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}
