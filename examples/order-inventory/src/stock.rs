//! The inventory's state: stock levels and the one decision taken per
//! order, and how a new order is decided against them.
//!
//! Plain data and arithmetic: no I/O, no broker. The state is rebuilt from
//! the ledger on the broker and changed only by [`crate::ledger::Ledger`]
//! once the broker has stored a decision; everyone else reads it through a
//! [`StockView`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::events::{Decision, OrderId, OrderPlaced, Outcome};

/// Units in stock per SKU.
pub type Levels = BTreeMap<String, u64>;

/// What the inventory holds: `GET /stock` returns it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReport {
    /// The stock the ledger started with.
    pub initial: Levels,
    /// The stock left.
    pub stock: Levels,
    /// Every decision, in the order the ledger holds them; one per order.
    pub decisions: Vec<Decision>,
    /// How this process's commits went since it started (the rest of the
    /// report comes from the ledger and is the same in every process).
    #[serde(default)]
    pub commits: Commits,
}

/// How many of a process's commits the broker stored, and how many it
/// refused with ABORTED.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commits {
    /// Stored: each one decided an order.
    pub stored: u64,
    /// Refused: the order was decided by another commit, or the ledger
    /// moved on since this process last read it.
    pub aborted: u64,
}

/// The stock and the decisions, with an index by order.
#[derive(Debug, Default)]
pub struct Stock {
    report: StockReport,
    /// Where each order's decision sits in `report.decisions`.
    index: HashMap<OrderId, usize>,
}

impl Stock {
    /// The stock before any decision.
    pub fn new(initial: Levels) -> Self {
        let report = StockReport {
            stock: initial.clone(),
            initial,
            ..StockReport::default()
        };
        Self {
            report,
            index: HashMap::new(),
        }
    }

    /// The decision taken about `order_id`, if any.
    pub fn decision(&self, order_id: &OrderId) -> Option<&Decision> {
        let position = *self.index.get(order_id)?;
        self.report.decisions.get(position)
    }

    /// Decides `order` against the stock left; changes nothing.
    pub fn decide(&self, order: &OrderPlaced) -> Decision {
        decide(&self.report.stock, order)
    }

    /// Takes `decision` into account: a reservation takes its units. A
    /// second decision about an order already decided changes nothing and
    /// returns `false`.
    pub fn apply(&mut self, decision: Decision) -> bool {
        if self.index.contains_key(&decision.order_id) {
            return false;
        }
        if decision.outcome == Outcome::Reserved {
            let left = self.report.stock.entry(decision.sku.clone()).or_default();
            *left = left.saturating_sub(u64::from(decision.quantity));
        }
        let position = self.report.decisions.len();
        self.index.insert(decision.order_id.clone(), position);
        self.report.decisions.push(decision);
        true
    }

    /// Counts a commit of this process: stored or refused.
    pub fn count_commit(&mut self, stored: bool) {
        let commits = &mut self.report.commits;
        if stored {
            commits.stored += 1;
        } else {
            commits.aborted += 1;
        }
    }

    /// The units of `sku` left; `None` for a SKU the inventory never held.
    pub fn available(&self, sku: &str) -> Option<u64> {
        self.report.stock.get(sku).copied()
    }

    /// A copy of everything, for `GET /stock`.
    pub fn report(&self) -> StockReport {
        self.report.clone()
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

/// A read-only handle on the inventory's state, for the HTTP handlers and
/// the stock questions. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct StockView {
    stock: Arc<Mutex<Stock>>,
}

impl StockView {
    /// A view of `stock`.
    pub fn new(stock: Arc<Mutex<Stock>>) -> Self {
        Self { stock }
    }

    /// A copy of the current stock and decisions.
    pub fn report(&self) -> StockReport {
        lock(&self.stock).report()
    }

    /// The units of `sku` left; `None` for a SKU the inventory never held.
    pub fn available(&self, sku: &str) -> Option<u64> {
        lock(&self.stock).available(sku)
    }
}

/// Locks the state; a panic elsewhere leaves it consistent (every change
/// is one call of [`Stock::apply`]), so a poisoned lock is taken anyway.
pub fn lock(stock: &Mutex<Stock>) -> MutexGuard<'_, Stock> {
    stock.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn orders_are_reserved_while_the_stock_lasts() {
        let mut stock = Stock::new(parse_levels("tea-01=3").expect("parses"));
        let first = stock.decide(&order("a", "tea-01", 2));
        assert_eq!(first.outcome, Outcome::Reserved);
        assert!(stock.apply(first.clone()));
        assert_eq!(stock.available("tea-01"), Some(1));

        let short = stock.decide(&order("b", "tea-01", 2));
        assert_eq!(
            short.outcome,
            Outcome::Rejected {
                reason: "insufficient stock: 2 wanted, 1 left".into()
            }
        );
        let unknown = stock.decide(&order("c", "cup-9", 1));
        assert!(matches!(unknown.outcome, Outcome::Rejected { .. }));
        assert_eq!(stock.available("cup-9"), None);
        assert_eq!(stock.decision(&OrderId::from("a")), Some(&first));
        assert_eq!(stock.decision(&OrderId::from("b")), None, "not applied");
    }

    #[test]
    fn a_second_decision_about_an_order_changes_nothing() {
        let mut stock = Stock::new(parse_levels("tea-01=10").expect("parses"));
        let reserved = stock.decide(&order("a", "tea-01", 4));
        assert!(stock.apply(reserved.clone()));
        // The same order decided again (as a second delivery would, from
        // a state that missed the first decision) takes no more stock.
        assert!(!stock.apply(reserved));
        let report = stock.report();
        assert_eq!(report.stock.get("tea-01"), Some(&6));
        assert_eq!(report.decisions.len(), 1);
    }

    #[test]
    fn commits_are_counted_apart_from_the_state() {
        let mut stock = Stock::new(Levels::new());
        stock.count_commit(true);
        stock.count_commit(false);
        stock.count_commit(true);
        assert_eq!(
            stock.report().commits,
            Commits {
                stored: 2,
                aborted: 1
            }
        );
    }
}
