//! The order service's orders: owned by one writer task, journaled before
//! any change becomes visible, rebuilt from the journal on start.
//!
//! Callers ([`OrderBook`]) send the writer commands over a channel and await
//! its reply. The writer appends to the journal and updates the orders in
//! one step of its own, so a caller that gives up (an HTTP handler dropped
//! when its client hangs up) cannot leave an order on disk that the service
//! does not know, nor keep a new order from the outbox. No networking here:
//! the writer hands each new order to the outbox through [`OutboxFeed`].
//! Every change is idempotent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::events::{Decision, OrderId, OrderPlaced, Outcome};
use crate::journal::{Journal, JournalError};

/// The journal's file name inside the order service's data directory.
pub const JOURNAL_FILE: &str = "orders.jsonl";
/// Commands waiting for the writer.
const COMMAND_BUFFER: usize = 64;
/// New orders the writer may hand over before the outbox takes them.
const FEED_BUFFER: usize = 1024;

/// Where an order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed; the inventory has not decided yet.
    Pending,
    /// The stock is reserved.
    Reserved,
    /// The inventory rejected it.
    Rejected {
        /// Why, for people.
        reason: String,
    },
}

/// One order: `{"id": "...", "sku": "tea-01", "quantity": 2, "status": "pending"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// The article ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Where it stands (with `reason` when rejected).
    #[serde(flatten)]
    pub status: OrderStatus,
}

impl Order {
    /// The event announcing this order.
    pub fn placed_event(&self) -> OrderPlaced {
        OrderPlaced {
            order_id: self.id.clone(),
            sku: self.sku.clone(),
            quantity: self.quantity,
        }
    }

    /// Whether the inventory has decided it.
    pub fn is_final(&self) -> bool {
        self.status != OrderStatus::Pending
    }
}

/// An order to place: its id (the client's idempotency key, or a generated
/// one), the article and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The id the order gets; placing the same id again finds it.
    pub id: OrderId,
    /// The article ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// What [`OrderBook::place`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The order is new: journaled as pending and handed to the outbox.
    New(Order),
    /// An order with this id and the same contents exists (a retry): here
    /// it is as it stands now.
    Existing(Order),
}

impl Placed {
    /// The order, new or existing.
    pub fn order(&self) -> &Order {
        match self {
            Self::New(order) | Self::Existing(order) => order,
        }
    }
}

/// Why the order book did not make a change.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// An order with this id exists with other contents.
    #[error(
        "order {:?} already exists with sku {:?} and quantity {}; a retry must send the same order, a new order needs a new id",
        .existing.id.as_str(), .existing.sku, .existing.quantity
    )]
    Conflict {
        /// The order that has the id.
        existing: Order,
    },
    /// The journal could not store the change: nothing changed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The writer is gone (the service is stopping).
    #[error("the order book has stopped")]
    Stopped,
}

/// What [`OrderBook::settle`] did with a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The order moved from pending to its final status.
    Updated,
    /// The order was already final: a redelivered decision.
    AlreadyFinal,
    /// No such order here (for example, the data directory was wiped).
    UnknownOrder,
}

/// What the outbox must announce: the orders that were pending when the
/// book opened (this service may have stopped before their `order.placed`
/// was stored), then each new order as the writer records it.
#[derive(Debug)]
pub struct OutboxFeed {
    /// Pending orders found in the journal, oldest first.
    pub pending: Vec<OrderPlaced>,
    /// Orders recorded since, in the order recorded.
    pub placed_rx: mpsc::Receiver<OrderPlaced>,
}

/// The orders, in the order placed, with an index by id.
#[derive(Debug, Default)]
struct Orders {
    list: Vec<Order>,
    index: HashMap<OrderId, usize>,
}

impl Orders {
    fn get(&self, id: &OrderId) -> Option<&Order> {
        self.list.get(*self.index.get(id)?)
    }

    /// Inserts a new order or replaces the one with its id.
    fn put(&mut self, order: Order) {
        match self.index.get(&order.id) {
            Some(&position) => self.list[position] = order,
            None => {
                self.index.insert(order.id.clone(), self.list.len());
                self.list.push(order);
            }
        }
    }
}

/// A handle on the orders, shared by the HTTP handlers and the event
/// consumers: changes go through the writer task, reads see what it
/// applied. Cloning is cheap; the writer stops when every clone is gone.
#[derive(Debug, Clone)]
pub struct OrderBook {
    commands_tx: mpsc::Sender<Command>,
    orders: Arc<Mutex<Orders>>,
}

enum Command {
    Place {
        order: NewOrder,
        reply: oneshot::Sender<Result<Placed, BookError>>,
    },
    Settle {
        decision: Decision,
        reply: oneshot::Sender<Result<Settled, BookError>>,
    },
}

impl OrderBook {
    /// Opens the journal `orders.jsonl` in `data_dir`, rebuilds the orders
    /// from it (the last line about an order is its current state) and
    /// starts the writer task. Returns the book and what the outbox must
    /// announce.
    ///
    /// # Errors
    /// When the journal cannot be opened or read.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn open(data_dir: &Path) -> Result<(Self, OutboxFeed), JournalError> {
        let (journal, records) = Journal::open(data_dir.join(JOURNAL_FILE)).await?;
        let mut orders = Orders::default();
        for order in records {
            orders.put(order);
        }
        let pending = (orders.list.iter())
            .filter(|order| !order.is_final())
            .map(Order::placed_event)
            .collect();
        let orders = Arc::new(Mutex::new(orders));
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let (placed_tx, placed_rx) = mpsc::channel(FEED_BUFFER);
        let writer = Writer {
            journal,
            orders: Arc::clone(&orders),
            placed_tx,
        };
        tokio::spawn(writer.run(commands_rx));
        let book = Self {
            commands_tx,
            orders,
        };
        Ok((book, OutboxFeed { pending, placed_rx }))
    }

    /// Places `order` unless its id exists: a new order is journaled as
    /// pending, becomes visible and goes to the outbox, all in the writer,
    /// whether or not the caller waits for the answer. The same id with the
    /// same contents finds the existing order.
    ///
    /// # Errors
    /// [`BookError::Conflict`] when the id belongs to another order,
    /// [`BookError::Journal`] when the journal cannot store it (it does
    /// not exist then), [`BookError::Stopped`] when the writer is gone.
    pub async fn place(&self, order: NewOrder) -> Result<Placed, BookError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Place { order, reply };
        self.commands_tx
            .send(command)
            .await
            .map_err(|_| BookError::Stopped)?;
        answer.await.map_err(|_| BookError::Stopped)?
    }

    /// Moves the decided order to its final status, unless it already has
    /// one.
    ///
    /// # Errors
    /// [`BookError::Journal`] when the journal cannot store the change
    /// (nothing changed then), [`BookError::Stopped`] when the writer is
    /// gone.
    pub async fn settle(&self, decision: Decision) -> Result<Settled, BookError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Settle { decision, reply };
        self.commands_tx
            .send(command)
            .await
            .map_err(|_| BookError::Stopped)?;
        answer.await.map_err(|_| BookError::Stopped)?
    }

    /// The order with this id.
    pub fn get(&self, id: &OrderId) -> Option<Order> {
        self.lock().get(id).cloned()
    }

    /// Every order, in the order placed.
    pub fn list(&self) -> Vec<Order> {
        self.lock().list.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The one task that changes the orders.
struct Writer {
    journal: Journal<Order>,
    orders: Arc<Mutex<Orders>>,
    placed_tx: mpsc::Sender<OrderPlaced>,
}

impl Writer {
    async fn run(mut self, mut commands_rx: mpsc::Receiver<Command>) {
        while let Some(command) = commands_rx.recv().await {
            // A caller that stopped waiting drops its receiver: the change
            // is made all the same, and the reply goes nowhere.
            match command {
                Command::Place { order, reply } => {
                    let _ = reply.send(self.place(order).await);
                }
                Command::Settle { decision, reply } => {
                    let _ = reply.send(self.settle(&decision).await);
                }
            }
        }
        debug!("the order book's writer stopped");
    }

    async fn place(&mut self, new: NewOrder) -> Result<Placed, BookError> {
        if let Some(existing) = self.get(&new.id) {
            let same = existing.sku == new.sku && existing.quantity == new.quantity;
            return if same {
                Ok(Placed::Existing(existing))
            } else {
                Err(BookError::Conflict { existing })
            };
        }
        let order = Order {
            id: new.id,
            sku: new.sku,
            quantity: new.quantity,
            status: OrderStatus::Pending,
        };
        self.journal.append(&order).await?;
        self.lock().put(order.clone());
        // The outbox stops only when the service does; then the order is
        // announced again on the next start, as every pending order is.
        let _ = self.placed_tx.send(order.placed_event()).await;
        Ok(Placed::New(order))
    }

    async fn settle(&mut self, decision: &Decision) -> Result<Settled, BookError> {
        let mut order = match self.get(&decision.order_id) {
            None => return Ok(Settled::UnknownOrder),
            Some(order) if order.is_final() => return Ok(Settled::AlreadyFinal),
            Some(order) => order,
        };
        order.status = match &decision.outcome {
            Outcome::Reserved => OrderStatus::Reserved,
            Outcome::Rejected { reason } => OrderStatus::Rejected {
                reason: reason.clone(),
            },
        };
        self.journal.append(&order).await?;
        self.lock().put(order);
        Ok(Settled::Updated)
    }

    fn get(&self, id: &OrderId) -> Option<Order> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(order: &Order, outcome: Outcome) -> Decision {
        Decision {
            order_id: order.id.clone(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            outcome,
        }
    }

    fn new_order(id: &str, sku: &str, quantity: u32) -> NewOrder {
        NewOrder {
            id: OrderId::from(id),
            sku: sku.into(),
            quantity,
        }
    }

    #[tokio::test]
    async fn settling_twice_keeps_the_first_outcome_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (book, mut feed) = OrderBook::open(dir.path()).await.expect("open");
        let placed = book.place(new_order("o-1", "tea-01", 2)).await;
        let Ok(Placed::New(order)) = placed else {
            panic!("not placed: {placed:?}");
        };
        assert_eq!(feed.placed_rx.recv().await, Some(order.placed_event()));

        let reserved = decision(&order, Outcome::Reserved);
        let settled = book.settle(reserved.clone()).await.expect("settle");
        assert_eq!(settled, Settled::Updated);
        let settled = book.settle(reserved.clone()).await.expect("settle");
        assert_eq!(settled, Settled::AlreadyFinal);
        let unknown = Decision {
            order_id: OrderId::from("o-elsewhere"),
            ..reserved
        };
        let settled = book.settle(unknown).await.expect("settle");
        assert_eq!(settled, Settled::UnknownOrder);
        drop(book);

        let (book, feed) = OrderBook::open(dir.path()).await.expect("reopen");
        let stored = book.get(&order.id).expect("order survives");
        assert_eq!(stored.status, OrderStatus::Reserved);
        assert!(feed.pending.is_empty(), "a final order is not announced");
        assert_eq!(book.list().len(), 1);
    }

    #[tokio::test]
    async fn an_id_places_one_order_even_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (book, _feed) = OrderBook::open(dir.path()).await.expect("open");
        let first = book
            .place(new_order("a", "tea-01", 2))
            .await
            .expect("place");
        assert!(matches!(first, Placed::New(_)), "{first:?}");
        let again = book
            .place(new_order("a", "tea-01", 2))
            .await
            .expect("retry");
        assert_eq!(again, Placed::Existing(first.order().clone()));
        let other = book.place(new_order("a", "tea-01", 3)).await;
        let Err(BookError::Conflict { existing }) = other else {
            panic!("another order under a used id: {other:?}");
        };
        assert_eq!(&existing, first.order());
        drop(book);

        let (book, feed) = OrderBook::open(dir.path()).await.expect("reopen");
        assert_eq!(feed.pending, vec![first.order().placed_event()]);
        let again = book
            .place(new_order("a", "tea-01", 2))
            .await
            .expect("retry");
        assert_eq!(again, Placed::Existing(first.order().clone()));
        let other = book.place(new_order("a", "mug-02", 2)).await;
        assert!(
            matches!(other, Err(BookError::Conflict { .. })),
            "{other:?}"
        );
        assert_eq!(book.list(), vec![first.order().clone()]);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_still_leaves_the_order_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (book, mut feed) = OrderBook::open(dir.path()).await.expect("open");
        // Polled once: the command is with the writer, then the caller
        // goes away, as a dropped HTTP handler does.
        let mut placing = Box::pin(book.place(new_order("gone", "tea-01", 1)));
        assert!(futures::poll!(placing.as_mut()).is_pending());
        drop(placing);
        let announced = feed.placed_rx.recv().await.expect("the outbox gets it");
        assert_eq!(announced.order_id, OrderId::from("gone"));
        assert!(book.get(&announced.order_id).is_some());
    }

    #[test]
    fn order_json_is_flat() {
        let order = Order {
            id: OrderId::from("o-1"),
            sku: "mug-02".into(),
            quantity: 1,
            status: OrderStatus::Rejected {
                reason: "no".into(),
            },
        };
        let json = serde_json::to_value(&order).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"id": "o-1", "sku": "mug-02", "quantity": 1,
                "status": "rejected", "reason": "no"})
        );
    }
}
