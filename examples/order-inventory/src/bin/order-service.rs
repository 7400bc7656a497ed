//! `order-service`: takes orders over HTTP, publishes `order.placed`, and
//! settles each order when `stock.reserved` or `stock.rejected` arrives.
//! `GET /stock/{sku}` asks the inventory with `Call` on `stock.query` and
//! waits at most `--stock-timeout` for its `Reply`.
//!
//! The journal comes first (an outbox): an order exists once it is on
//! disk, and the outbox task publishes every pending order, on start and
//! again after each failed publish, until the broker stored it. The
//! inventory decides each order once by id, so publishing twice is
//! harmless. HTTP handlers only hand orders to the order book's writer and
//! wait, at most `--answer-timeout`, for what it and the outbox report: a
//! handler dropped by its client changes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use order_inventory::events::{
    Decision, ORDER_PLACED, OrderId, STOCK_QUERY, STOCK_REJECTED, STOCK_RESERVED, StockLevel,
    StockQuery,
};
use order_inventory::orders::{BookError, NewOrder, Order, OrderBook, Placed, Settled};
use order_inventory::outbox::{Announced, Outbox};
use order_inventory::service::{self, DEFAULT_BROKER, HttpError};
use serde::{Deserialize, Serialize};
use tidings_client::{Client, Delivery, Subscriber};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// The longest the broker may take to answer a call (a publish, an ack)
/// before it counts as failed: a broker that hangs must not hold an order's
/// announcement for ever, the outbox publishes it again.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest quantity one order may ask for.
const MAX_QUANTITY: i64 = 1000;
/// The longest order id or SKU accepted.
const MAX_NAME_LEN: usize = 64;
/// The longest `--stock-timeout` the broker accepts for a call.
const MAX_STOCK_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// The longest `POST /orders` takes to answer, such as `5s` or
    /// `500ms`: an order recorded but not yet announced on the broker by
    /// then is answered `202 Accepted` (it is announced later).
    #[arg(long, env = "ORDERS_ANSWER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    answer_timeout: Duration,
    /// How long `GET /stock/{sku}` waits for the inventory's answer, such
    /// as `2s` (at most `600s`): without an answer by then it is `504`.
    #[arg(long, env = "ORDERS_STOCK_TIMEOUT", default_value = "2s", value_parser = parse_stock_timeout)]
    stock_timeout: Duration,
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
    let (orders, feed) = OrderBook::open(&args.data_dir).await?;
    let client = Client::builder(args.broker)
        .request_timeout(BROKER_CALL_TIMEOUT)
        .connect()
        .await?;
    let topics = [ORDER_PLACED, STOCK_RESERVED, STOCK_REJECTED, STOCK_QUERY];
    service::ensure_topics(&client, &topics).await?;
    let publisher = client.publisher(ORDER_PLACED);
    let outbox = Outbox::new(publisher.clone(), feed);
    let reserved = subscribe(&client, "order-service.stock-reserved", STOCK_RESERVED).await?;
    let rejected = subscribe(&client, "order-service.stock-rejected", STOCK_REJECTED).await?;
    let listener = service::bind(args.listen).await?;
    let app = App {
        orders: orders.clone(),
        announced: outbox.announced(),
        answer_timeout: args.answer_timeout,
        client: client.clone(),
        stock_timeout: args.stock_timeout,
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
    publisher.close().await?;
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
    let order = decision.order_id.clone();
    let outcome = decision.topic();
    match orders.settle(decision).await? {
        Settled::Updated => info!(%order, outcome, "order settled"),
        Settled::AlreadyFinal => debug!(%order, "ignoring a repeated decision"),
        Settled::UnknownOrder => warn!(%order, "ignoring a decision about an unknown order"),
    }
    delivery.ack();
    Ok(())
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    orders: OrderBook,
    announced: Announced,
    answer_timeout: Duration,
    client: Client,
    stock_timeout: Duration,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/stock/{sku}", get(stock_level))
        .with_state(app)
}

/// Parses `--stock-timeout`: a duration above zero, at most 600 s.
fn parse_stock_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if timeout.is_zero() || timeout > MAX_STOCK_TIMEOUT {
        return Err(format!("{text:?} is not above 0s and at most 600s"));
    }
    Ok(timeout)
}

/// The body of `POST /orders`: `{"id": "...", "sku": "...", "quantity": N}`,
/// the `id` optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    id: Option<String>,
    sku: String,
    quantity: i64,
}

impl PlaceOrder {
    /// The order to place (with a new id when none was sent), or why the
    /// request is not acceptable.
    fn validate(self) -> Result<NewOrder, HttpError> {
        let id = match self.id {
            Some(id) if is_name(&id) => OrderId::from(id.as_str()),
            Some(_) => {
                return Err(HttpError::bad_request(format!(
                    "id must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
                )));
            }
            None => OrderId::generate(),
        };
        if !is_name(&self.sku) {
            return Err(HttpError::bad_request(format!(
                "sku must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
            )));
        }
        match u32::try_from(self.quantity) {
            Ok(quantity) if (1..=MAX_QUANTITY).contains(&self.quantity) => Ok(NewOrder {
                id,
                sku: self.sku,
                quantity,
            }),
            _ => Err(HttpError::bad_request(format!(
                "quantity must be a whole number from 1 to {MAX_QUANTITY}"
            ))),
        }
    }
}

/// Whether `name` is acceptable as an order id or SKU (it goes in URLs).
fn is_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `POST /orders`: places the order (or finds it, for a retry with the same
/// id) and answers within the answer timeout: 201 when the order is new and
/// announced, 200 when it existed and is announced (or final), 202 when it
/// is recorded but not announced yet (the outbox goes on trying), 409 when
/// the id belongs to another order, 503 when it could not be recorded in
/// time (send it again with the same id).
async fn place_order(
    State(app): State<App>,
    body: Bytes,
) -> Result<(StatusCode, Json<Order>), HttpError> {
    let deadline = Instant::now() + app.answer_timeout;
    let request: PlaceOrder = serde_json::from_slice(&body).map_err(|err| {
        HttpError::bad_request(format!(
            "invalid order ({err}); send JSON such as {{\"id\": \"my-order-1\", \"sku\": \"tea-01\", \"quantity\": 2}}"
        ))
    })?;
    let order = request.validate()?;
    let id = order.id.clone();
    // Once handed over, the order book records the order (and the outbox
    // announces it) even when this handler is dropped: every wait below
    // may stop for good without losing anything.
    let placed = match tokio::time::timeout_at(deadline, app.orders.place(order)).await {
        Ok(placed) => placed.map_err(book_error)?,
        Err(_) => {
            warn!(order = %id, "recording an order takes longer than the answer timeout");
            return Err(HttpError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "order {:?} was not recorded within {}; send it again with the same id",
                    id.as_str(),
                    humantime::format_duration(app.answer_timeout)
                ),
            });
        }
    };
    let created = matches!(placed, Placed::New(_));
    if created {
        let order = placed.order();
        info!(order = %id, sku = %order.sku, quantity = order.quantity, "order placed");
    }
    let announced = placed.order().is_final()
        || tokio::time::timeout_at(deadline, app.announced.wait(&id))
            .await
            .unwrap_or(false);
    let status = match (announced, created) {
        (false, _) => StatusCode::ACCEPTED,
        (true, true) => StatusCode::CREATED,
        (true, false) => StatusCode::OK,
    };
    // The order as it stands now: a retry may find it settled.
    let order = app
        .orders
        .get(&id)
        .unwrap_or_else(|| placed.order().clone());
    Ok((status, Json(order)))
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

/// The body of `GET /stock/{sku}`:
/// `{"sku": "tea-01", "available": 98, "in_stock": true}`.
#[derive(Debug, Serialize)]
struct StockAnswer {
    sku: String,
    available: u64,
    in_stock: bool,
}

/// `GET /stock/{sku}`: asks the inventory, through the broker, how many
/// units are left, and waits at most the stock timeout: 200 with the
/// answer, 404 for a SKU the inventory does not hold, 504 when it did not
/// answer in time (it is down or busy), 503 when the broker cannot be
/// reached. The answer is what the inventory held a moment ago: an order
/// placed after it may still be rejected.
async fn stock_level(
    State(app): State<App>,
    Path(sku): Path<String>,
) -> Result<Json<StockAnswer>, HttpError> {
    if !is_name(&sku) {
        return Err(HttpError::bad_request(format!(
            "sku must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
        )));
    }
    let question = StockQuery { sku: sku.clone() }.to_message();
    let called = app.client.call(STOCK_QUERY, question, app.stock_timeout);
    let reply = called
        .await
        .map_err(|err| stock_error(&err, app.stock_timeout))?;
    let level: StockLevel = serde_json::from_slice(&reply.reply.payload).map_err(|err| {
        warn!(%sku, error = %err, "the inventory's answer does not parse");
        HttpError {
            status: StatusCode::BAD_GATEWAY,
            message: "the inventory's answer is not a stock level".to_owned(),
        }
    })?;
    match level.available {
        Some(available) => Ok(Json(StockAnswer {
            sku,
            available,
            in_stock: available > 0,
        })),
        None => Err(HttpError {
            status: StatusCode::NOT_FOUND,
            message: format!("sku {sku:?} is not in the inventory"),
        }),
    }
}

/// The HTTP answer to a failed stock question.
fn stock_error(err: &tidings_client::Error, timeout: Duration) -> HttpError {
    let (status, message) = match err.code() {
        tonic::Code::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the inventory did not answer within {}; it may be down or busy, try again later",
                humantime::format_duration(timeout)
            ),
        ),
        tonic::Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker cannot be reached; try again later".to_owned(),
        ),
        _ => {
            warn!(error = %err, "cannot ask the inventory");
            (
                StatusCode::BAD_GATEWAY,
                format!("cannot ask the inventory: {err}"),
            )
        }
    };
    HttpError { status, message }
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

/// The HTTP answer to an order the order book did not place.
fn book_error(err: BookError) -> HttpError {
    match err {
        BookError::Conflict { .. } => HttpError {
            status: StatusCode::CONFLICT,
            message: err.to_string(),
        },
        BookError::Journal(err) => {
            error!(error = %err, "cannot record an order");
            HttpError::internal("cannot record the order; try again later")
        }
        BookError::Stopped => HttpError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the order service is stopping; try again later".to_owned(),
        },
    }
}
