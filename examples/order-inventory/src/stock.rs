//! The inventory's ledger: stock levels and the one decision taken per
//! order, journaled before they take effect and rebuilt from the journal on
//! start.
//!
//! There is one writer, the [`Ledger`] (its methods take `&mut self`, so
//! decisions never race), and any number of readers ([`StockView`]). No
//! networking here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::events::{Decision, OrderId, OrderPlaced, Outcome};
use crate::journal::{Journal, JournalError};

/// The journal's file name inside the inventory's data directory.
pub const JOURNAL_FILE: &str = "inventory.jsonl";

/// Units in stock per SKU.
pub type Levels = BTreeMap<String, u64>;

/// One line of the inventory journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    /// The first line: the stock the ledger started with.
    Initial {
        /// Units per SKU.
        stock: Levels,
    },
    /// A decision about one order.
    Decided(Decision),
}

/// What the inventory holds: `GET /stock` returns it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReport {
    /// The stock the ledger started with.
    pub initial: Levels,
    /// The stock left.
    pub stock: Levels,
    /// Every decision, in the order taken; one per order.
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Default)]
struct State {
    report: StockReport,
    /// Where each order's decision sits in `report.decisions`.
    index: HashMap<OrderId, usize>,
}

impl State {
    fn decision(&self, order_id: &OrderId) -> Option<&Decision> {
        let position = *self.index.get(order_id)?;
        self.report.decisions.get(position)
    }

    fn apply(&mut self, decision: Decision) {
        if self.index.contains_key(&decision.order_id) {
            return;
        }
        if decision.outcome == Outcome::Reserved {
            let left = self.report.stock.entry(decision.sku.clone()).or_default();
            *left = left.saturating_sub(u64::from(decision.quantity));
        }
        let position = self.report.decisions.len();
        self.index.insert(decision.order_id.clone(), position);
        self.report.decisions.push(decision);
    }
}

/// Decides `order` against the stock `left`: reserve when enough is left,
/// otherwise reject with a reason.
pub fn decide(left: &Levels, order: &OrderPlaced) -> Decision {
    let wanted = u64::from(order.quantity);
    let outcome = match left.get(&order.sku) {
        None => Outcome::Rejected {
            reason: format!("unknown sku {:?}", order.sku),
        },
        Some(&units) if units < wanted => Outcome::Rejected {
            reason: format!("insufficient stock: {wanted} wanted, {units} left"),
        },
        Some(_) => Outcome::Reserved,
    };
    Decision {
        order_id: order.order_id.clone(),
        sku: order.sku.clone(),
        quantity: order.quantity,
        outcome,
    }
}

/// The writer of the inventory's state.
#[derive(Debug)]
pub struct Ledger {
    journal: Journal<Record>,
    state: Arc<Mutex<State>>,
}

/// A read-only handle on the inventory's state. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct StockView {
    state: Arc<Mutex<State>>,
}

impl StockView {
    /// A copy of the current stock and decisions.
    pub fn report(&self) -> StockReport {
        lock(&self.state).report.clone()
    }
}

impl Ledger {
    /// Opens the journal `inventory.jsonl` in `data_dir` and replays it. A
    /// new journal starts with `initial`; an existing one keeps the stock
    /// it started with, and `initial` is ignored (with a warning when it
    /// differs).
    ///
    /// # Errors
    /// When the journal cannot be opened, read or started.
    pub async fn open(data_dir: &Path, initial: Levels) -> Result<Self, JournalError> {
        let (journal, records) = Journal::open(data_dir.join(JOURNAL_FILE)).await?;
        let mut state = State::default();
        let mut records = records.into_iter();
        match records.next() {
            Some(Record::Initial { stock }) => {
                if stock != initial {
                    warn!(journaled = ?stock, given = ?initial, "ignoring --stock: the journal keeps the stock it started with; use a new --data-dir to start over");
                }
                state.report.initial = stock;
            }
            Some(Record::Decided(_)) => warn!("the journal lacks its initial stock"),
            None => {
                journal
                    .append(&Record::Initial {
                        stock: initial.clone(),
                    })
                    .await?;
                state.report.initial = initial;
            }
        }
        state.report.stock = state.report.initial.clone();
        for record in records {
            if let Record::Decided(decision) = record {
                state.apply(decision);
            }
        }
        Ok(Self {
            journal,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// A read-only handle on the state.
    pub fn view(&self) -> StockView {
        StockView {
            state: Arc::clone(&self.state),
        }
    }

    /// The decision about `order`: the recorded one when the order was
    /// decided before (returned with `false`: stock untouched), otherwise a
    /// new one, journaled and then applied (returned with `true`).
    ///
    /// # Errors
    /// When the journal cannot store a new decision; nothing changed then.
    pub async fn decide(&mut self, order: &OrderPlaced) -> Result<(Decision, bool), JournalError> {
        let decision = {
            let state = lock(&self.state);
            if let Some(known) = state.decision(&order.order_id) {
                return Ok((known.clone(), false));
            }
            decide(&state.report.stock, order)
        };
        // `&mut self` makes this the only writer: the stock cannot change
        // between the decision above and applying it below.
        self.journal
            .append(&Record::Decided(decision.clone()))
            .await?;
        lock(&self.state).apply(decision.clone());
        Ok((decision, true))
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parses stock levels such as `tea-01=100,mug-02=50`.
///
/// # Errors
/// A message naming the part that is not `SKU=UNITS`.
pub fn parse_levels(text: &str) -> Result<Levels, String> {
    let mut levels = Levels::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let parsed = part
            .split_once('=')
            .and_then(|(sku, units)| Some((sku.trim(), units.trim().parse::<u64>().ok()?)))
            .filter(|(sku, _)| !sku.is_empty());
        let Some((sku, units)) = parsed else {
            return Err(format!(
                "{part:?} is not SKU=UNITS, as in tea-01=100,mug-02=50"
            ));
        };
        levels.insert(sku.to_owned(), units);
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, sku: &str, quantity: u32) -> OrderPlaced {
        OrderPlaced {
            order_id: OrderId::from(id),
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn levels_parse() {
        let levels = parse_levels("tea-01=100, mug-02=5").expect("parses");
        assert_eq!(levels.get("tea-01"), Some(&100));
        assert_eq!(levels.get("mug-02"), Some(&5));
        assert!(parse_levels("tea-01").is_err());
        assert!(parse_levels("=3").is_err());
        assert!(parse_levels("tea-01=-1").is_err());
    }

    #[tokio::test]
    async fn an_order_is_decided_once_even_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let initial = parse_levels("tea-01=3").expect("parses");
        let mut ledger = Ledger::open(dir.path(), initial.clone())
            .await
            .expect("open");

        let (first, new) = ledger
            .decide(&order("a", "tea-01", 2))
            .await
            .expect("decide");
        assert!(new);
        assert_eq!(first.outcome, Outcome::Reserved);
        let (again, new) = ledger
            .decide(&order("a", "tea-01", 2))
            .await
            .expect("decide");
        assert!(!new, "a redelivery must not decide again");
        assert_eq!(again, first);
        let (short, _) = ledger
            .decide(&order("b", "tea-01", 2))
            .await
            .expect("decide");
        assert!(matches!(short.outcome, Outcome::Rejected { .. }));
        let (unknown, _) = ledger
            .decide(&order("c", "cup-9", 1))
            .await
            .expect("decide");
        assert!(matches!(unknown.outcome, Outcome::Rejected { .. }));
        assert_eq!(ledger.view().report().stock.get("tea-01"), Some(&1));
        drop(ledger);

        // Restarted with other flags: the journal wins.
        let other = parse_levels("tea-01=50").expect("parses");
        let mut ledger = Ledger::open(dir.path(), other).await.expect("reopen");
        let report = ledger.view().report();
        assert_eq!(report.initial, initial);
        assert_eq!(report.stock.get("tea-01"), Some(&1));
        assert_eq!(report.decisions.len(), 3);
        let (again, new) = ledger
            .decide(&order("a", "tea-01", 2))
            .await
            .expect("decide");
        assert!(!new);
        assert_eq!(again, first);
        assert_eq!(ledger.view().report().stock.get("tea-01"), Some(&1));
    }
}
