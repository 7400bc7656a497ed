//! The inventory's memory, kept on the broker instead of a local journal.
//!
//! The topic [`INVENTORY_LEDGER`] (kept for ever) holds the initial stock,
//! then every decision in the order taken; the inventory rebuilds its
//! [`Stock`] by reading it from the beginning with `ReadTopic`. Each
//! decision is stored by one `Commit` that, in one atomic, durable write:
//!
//! - publishes the decision event on `stock.reserved` or `stock.rejected`;
//! - appends the decision to the ledger;
//! - acknowledges the order's delivery on `order.placed`;
//! - acknowledges the ledger entry read last, on the subscription
//!   [`FENCE`].
//!
//! The last acknowledgement is the fence. Every entry is acknowledged once,
//! by the commit that appends the next one, so of two commits made from the
//! same view of the ledger the broker stores one and answers the other
//! ABORTED. A decision taken on a view that misses a decision (a second
//! inventory running; a commit of a killed process that the broker stored
//! only after its successor read the ledger) is never stored.
//!
//! The state changes only when the broker has stored a commit or when
//! entries are read from the ledger. Nothing here consumes orders, serves
//! HTTP or answers questions.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tidings_client::{Client, Delivery, StartPosition, SubscriptionConfig};
use tracing::{info, warn};

use crate::events::{Decision, INVENTORY_LEDGER, OrderPlaced, json_message};
use crate::service;
use crate::stock::{self, Levels, Stock, StockView};

/// The subscription on the ledger whose acknowledgements fence commits.
/// Nobody consumes it; only the entry read last is unacknowledged.
pub const FENCE: &str = "inventory.fence";
/// The message id of the initial stock entry: inventories starting on an
/// empty ledger at the same moment store it once.
const INITIAL_ID: &str = "inventory.initial-stock";
/// Entries asked for per `ReadTopic` call.
const READ_PAGE: u32 = 1000;

/// One entry of the ledger: `{"kind": "initial", "stock": {...}}` first,
/// then `{"kind": "decided", "order_id": ..., "outcome": ...}` per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// The first entry: the stock the inventory started with.
    Initial {
        /// Units per SKU.
        stock: Levels,
    },
    /// A decision about one order.
    Decided(Decision),
}

/// Why the ledger cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Broker(#[from] tidings_client::Error),
    /// A message in the ledger is not an entry.
    #[error(
        "{INVENTORY_LEDGER} holds something other than a ledger entry at offset {offset}; only the inventory may publish there"
    )]
    Corrupt {
        /// Where.
        offset: u64,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The ledger lost its first entry (its retention was changed).
    #[error(
        "{INVENTORY_LEDGER} does not start with the initial stock; the ledger must keep every entry (retention: unlimited)"
    )]
    NoStart,
}

/// What became of an order handed to [`Ledger::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Decided now: the broker stored the commit, with the ledger entry at
    /// `offset`.
    Decided {
        /// The decision, as published.
        decision: Decision,
        /// The ledger entry's offset.
        offset: u64,
    },
    /// Decided before (a repeated delivery, or the order announced twice):
    /// acknowledged, nothing published.
    Repeated(Decision),
    /// The broker answered ABORTED: nothing was stored and the state did not
    /// change. Another commit acknowledged the order or moved the ledger on
    /// first. The ledger is read again, and the delivery given back: if the
    /// order still needs a decision it comes again.
    Aborted,
}

/// The one writer of the inventory's state: it reads the ledger and
/// commits decisions. Its methods take `&mut self`, so decisions never race
/// within a process; the fence makes them safe across processes.
#[derive(Debug)]
pub struct Ledger {
    client: Client,
    stock: Arc<Mutex<Stock>>,
    /// The offset of the entry read last: the next commit acknowledges it.
    head: u64,
    /// Whether entries past `head` may exist unread: after a commit that
    /// failed, whose outcome may be unknown.
    stale: bool,
}

impl Ledger {
    /// Creates the ledger topic and the fence subscription when missing,
    /// and rebuilds the stock from the ledger. An empty ledger is started
    /// with `initial`; otherwise `initial` is ignored (with a warning when
    /// it differs from the stock the ledger started with).
    ///
    /// # Errors
    /// When the broker cannot be used, or the ledger holds something else
    /// than entries or lost its start.
    pub async fn open(client: Client, initial: Levels) -> Result<Self, LedgerError> {
        service::ensure_topics(&client, &[INVENTORY_LEDGER]).await?;
        create_fence(&client).await?;
        let mut entries = read_from(&client, 0).await?;
        if entries.is_empty() {
            let start = Entry::Initial {
                stock: initial.clone(),
            };
            let start = json_message(&start).with_id(INITIAL_ID);
            client
                .publish_batch(INVENTORY_LEDGER, vec![start.into()])
                .await?;
            entries = read_from(&client, 0).await?;
        }
        let mut entries = entries.into_iter();
        let Some((head, Entry::Initial { stock: started })) = entries.next() else {
            return Err(LedgerError::NoStart);
        };
        if started != initial {
            warn!(ledger = ?started, given = ?initial, "ignoring --stock: the ledger keeps the stock it started with; use a new broker data directory to start over");
        }
        let mut ledger = Self {
            client,
            stock: Arc::new(Mutex::new(Stock::new(started))),
            head,
            stale: false,
        };
        let decisions = ledger.apply(entries);
        info!(
            decisions,
            head = ledger.head,
            "rebuilt the stock from the ledger"
        );
        Ok(ledger)
    }

    /// A read-only handle on the state.
    pub fn view(&self) -> StockView {
        StockView::new(Arc::clone(&self.stock))
    }

    /// Decides `order`, delivered as `delivery`, unless it was decided
    /// before: the decision is published, appended to the ledger, and the
    /// delivery acknowledged, in one commit; the state takes the decision
    /// once the broker stored it.
    ///
    /// # Errors
    /// When the commit failed otherwise than ABORTED, or the ledger could
    /// not be read first. Nothing changed; the delivery is given back, and
    /// the ledger is read before the next decision (the commit may have
    /// been stored even so, when only its answer was lost).
    pub async fn decide(
        &mut self,
        order: &OrderPlaced,
        delivery: Delivery,
    ) -> Result<Handled, LedgerError> {
        if self.stale {
            self.catch_up().await?;
        }
        let known = stock::lock(&self.stock).decision(&order.order_id).cloned();
        if let Some(known) = known {
            delivery.ack();
            return Ok(Handled::Repeated(known));
        }
        // `&mut self` makes this the only writer here: the stock cannot
        // change between this decision and the commit.
        let decision = stock::lock(&self.stock).decide(order);
        match self.commit(&decision, delivery).await {
            Ok(offset) => {
                self.head = offset;
                let mut stock = stock::lock(&self.stock);
                stock.count_commit(true);
                stock.apply(decision.clone());
                Ok(Handled::Decided { decision, offset })
            }
            Err(err) if err.is_aborted() => {
                stock::lock(&self.stock).count_commit(false);
                // Learn now what won, so that reads are current; should
                // the read fail, the next decision reads first.
                if let Err(err) = self.catch_up().await {
                    warn!(error = %err, "cannot read the ledger after an aborted commit");
                }
                Ok(Handled::Aborted)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Sends the one commit that stores `decision` (see the module's
    /// documentation); returns the offset of its ledger entry. After a
    /// failure the state is marked stale: the commit may have been stored
    /// though its answer was lost.
    async fn commit(
        &mut self,
        decision: &Decision,
        delivery: Delivery,
    ) -> tidings_client::Result<u64> {
        let entry = json_message(&Entry::Decided(decision.clone()));
        let committed = (self.client.commit())
            .publish(decision.topic(), [decision.to_message()])
            .publish(INVENTORY_LEDGER, [entry])
            .ack(FENCE, [self.head])
            .ack_delivery(delivery)
            .send()
            .await;
        let published = committed.inspect_err(|_| self.stale = true)?;
        // The fence kept every other commit out, so the entry follows
        // `head` directly. Should the broker not say where it went (it
        // always does), `head` stays behind: the next commit is ABORTED,
        // and the ledger read again.
        let entry = published.get(1).and_then(|entry| entry.first());
        Ok(entry.map_or(self.head, |entry| entry.offset))
    }

    /// Reads the entries past the one read last (stored by another process,
    /// or by a commit whose answer was lost) and applies them; returns how
    /// many decisions were new.
    ///
    /// # Errors
    /// When the ledger cannot be read; the state stays as it was.
    pub async fn catch_up(&mut self) -> Result<usize, LedgerError> {
        let entries = read_from(&self.client, self.head + 1).await?;
        let applied = self.apply(entries);
        self.stale = false;
        Ok(applied)
    }

    /// Applies entries read from the ledger, moving `head` to the last;
    /// returns how many decisions were new.
    fn apply(&mut self, entries: impl IntoIterator<Item = (u64, Entry)>) -> usize {
        let mut stock = stock::lock(&self.stock);
        let mut applied = 0;
        for (offset, entry) in entries {
            self.head = offset;
            match entry {
                Entry::Decided(decision) => {
                    let order = decision.order_id.clone();
                    if stock.apply(decision) {
                        applied += 1;
                    } else {
                        warn!(%order, offset, "ignoring a second decision about an order in the ledger");
                    }
                }
                Entry::Initial { .. } => {
                    warn!(offset, "ignoring an initial stock past the ledger's start");
                }
            }
        }
        applied
    }
}

/// Creates the fence subscription when missing. It starts at the ledger's
/// beginning: every entry is unacknowledged until a commit acknowledges it.
async fn create_fence(client: &Client) -> tidings_client::Result<()> {
    let config = SubscriptionConfig::new(FENCE, INVENTORY_LEDGER).start(StartPosition::Earliest);
    match client.create_subscription(config).await {
        Ok(_) => {
            info!(subscription = FENCE, "created subscription");
            Ok(())
        }
        Err(err) if err.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Every ledger entry from `offset` to the ledger's end, with its offset.
async fn read_from(client: &Client, mut offset: u64) -> Result<Vec<(u64, Entry)>, LedgerError> {
    let mut entries = Vec::new();
    loop {
        let read = client
            .read_topic(INVENTORY_LEDGER, offset, READ_PAGE)
            .await?;
        for message in &read.messages {
            let entry = serde_json::from_slice(&message.payload).map_err(|source| {
                LedgerError::Corrupt {
                    offset: message.offset,
                    source,
                }
            })?;
            entries.push((message.offset, entry));
        }
        if read.is_at_end() || read.messages.is_empty() {
            return Ok(entries);
        }
        offset = read.next_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderId, Outcome};

    #[test]
    fn entries_are_tagged_json() {
        let initial = Entry::Initial {
            stock: Levels::from([("tea-01".to_owned(), 3)]),
        };
        let json = serde_json::to_value(&initial).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"kind": "initial", "stock": {"tea-01": 3}})
        );
        let decided = Entry::Decided(Decision {
            order_id: OrderId::from("o-1"),
            sku: "tea-01".into(),
            quantity: 2,
            outcome: Outcome::Reserved,
        });
        let json = serde_json::to_value(&decided).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"kind": "decided", "order_id": "o-1", "sku": "tea-01",
                "quantity": 2, "outcome": "reserved"})
        );
        let back: Entry = serde_json::from_value(json).expect("parses");
        assert_eq!(back, decided);
    }
}
