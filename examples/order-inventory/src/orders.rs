//! The order service's orders: held in memory, journaled before any change
//! becomes visible, rebuilt from the journal on start.
//!
//! No networking here: the binary publishes and consumes events, this
//! module only records what happened. Every change is idempotent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::events::{Decision, OrderId, OrderPlaced, Outcome};
use crate::journal::{Journal, JournalError};

/// The journal's file name inside the order service's data directory.
pub const JOURNAL_FILE: &str = "orders.jsonl";

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

/// The orders, shared by the HTTP handlers and the event consumers.
/// Cloning is cheap; clones share the orders.
#[derive(Debug, Clone)]
pub struct OrderBook {
    orders: Arc<Mutex<BTreeMap<OrderId, Order>>>,
    journal: Journal<Order>,
}

impl OrderBook {
    /// Opens the journal `orders.jsonl` in `data_dir` and rebuilds the
    /// orders from it: the last line about an order is its current state.
    ///
    /// # Errors
    /// When the journal cannot be opened or read.
    pub async fn open(data_dir: &Path) -> Result<Self, JournalError> {
        let (journal, records) = Journal::open(data_dir.join(JOURNAL_FILE)).await?;
        let orders = records
            .into_iter()
            .map(|order: Order| (order.id.clone(), order))
            .collect();
        Ok(Self {
            orders: Arc::new(Mutex::new(orders)),
            journal,
        })
    }

    /// Records a new pending order and returns it.
    ///
    /// # Errors
    /// When the journal cannot store it; the order then does not exist.
    pub async fn place(&self, sku: String, quantity: u32) -> Result<Order, JournalError> {
        let order = Order {
            id: OrderId::generate(),
            sku,
            quantity,
            status: OrderStatus::Pending,
        };
        self.journal.append(&order).await?;
        self.lock().insert(order.id.clone(), order.clone());
        Ok(order)
    }

    /// Moves the decided order to its final status, unless it already has
    /// one.
    ///
    /// # Errors
    /// When the journal cannot store the change; nothing changed then.
    pub async fn settle(&self, decision: &Decision) -> Result<Settled, JournalError> {
        let mut order = match self.get(&decision.order_id) {
            None => return Ok(Settled::UnknownOrder),
            Some(order) if order.status != OrderStatus::Pending => {
                return Ok(Settled::AlreadyFinal);
            }
            Some(order) => order,
        };
        order.status = match &decision.outcome {
            Outcome::Reserved => OrderStatus::Reserved,
            Outcome::Rejected { reason } => OrderStatus::Rejected {
                reason: reason.clone(),
            },
        };
        self.journal.append(&order).await?;
        self.lock().insert(order.id.clone(), order);
        Ok(Settled::Updated)
    }

    /// The order with this id.
    pub fn get(&self, id: &OrderId) -> Option<Order> {
        self.lock().get(id).cloned()
    }

    /// Every order, oldest first.
    pub fn list(&self) -> Vec<Order> {
        self.lock().values().cloned().collect()
    }

    /// The orders still waiting for a decision, oldest first.
    pub fn pending(&self) -> Vec<Order> {
        self.lock()
            .values()
            .filter(|order| order.status == OrderStatus::Pending)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<OrderId, Order>> {
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

    #[tokio::test]
    async fn settling_twice_keeps_the_first_outcome_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = OrderBook::open(dir.path()).await.expect("open");
        let order = book.place("tea-01".into(), 2).await.expect("place");
        assert_eq!(book.pending(), vec![order.clone()]);

        let reserved = decision(&order, Outcome::Reserved);
        assert_eq!(
            book.settle(&reserved).await.expect("settle"),
            Settled::Updated
        );
        assert_eq!(
            book.settle(&reserved).await.expect("settle"),
            Settled::AlreadyFinal
        );
        let other = OrderId::from("o-elsewhere");
        let unknown = Decision {
            order_id: other,
            ..reserved.clone()
        };
        assert_eq!(
            book.settle(&unknown).await.expect("settle"),
            Settled::UnknownOrder
        );
        drop(book);

        let book = OrderBook::open(dir.path()).await.expect("reopen");
        let stored = book.get(&order.id).expect("order survives");
        assert_eq!(stored.status, OrderStatus::Reserved);
        assert!(book.pending().is_empty());
        assert_eq!(book.list().len(), 1);
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
