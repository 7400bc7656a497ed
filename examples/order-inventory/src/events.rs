//! The topics the services use, what each keeps, and the JSON events and
//! questions published on them.
//!
//! Plain data: this module does no I/O. Every event is keyed by its order
//! id when published.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tidings_client::{Message, Retention, TopicConfig};

/// Topic of [`OrderPlaced`] events, published by the order service.
pub const ORDER_PLACED: &str = "order.placed";
/// Topic of [`Decision`]s whose outcome is [`Outcome::Reserved`].
pub const STOCK_RESERVED: &str = "stock.reserved";
/// Topic of [`Decision`]s whose outcome is [`Outcome::Rejected`].
pub const STOCK_REJECTED: &str = "stock.rejected";
/// Topic of [`StockQuery`] requests, asked with `Call` by the order service
/// and answered with `Reply` by the inventory.
pub const STOCK_QUERY: &str = "stock.query";
/// The inventory's own memory: its initial stock, then every decision in
/// the order taken (see [`crate::ledger`]). Nobody else publishes here.
pub const INVENTORY_LEDGER: &str = "inventory.ledger";
/// How long a [`STOCK_QUERY`] request is kept at most: a question is
/// worth nothing once its caller stopped waiting, which is seconds.
const STOCK_QUERY_MAX_AGE: Duration = Duration::from_secs(3600);

/// How `topic` is created when it is missing, so that whichever service
/// starts first creates it the same way:
/// - [`INVENTORY_LEDGER`] is kept for ever: it is the inventory's state;
/// - the decisions ([`STOCK_RESERVED`], [`STOCK_REJECTED`]) are kept for
///   ever too: they are the record of what the inventory promised, which
///   a consumer added later (or an audit) reads from the beginning;
/// - [`STOCK_QUERY`] keeps a question an hour at most, and drops it once
///   every subscription acknowledged it;
/// - any other topic gets the broker's default retention.
pub fn topic_config(topic: &str) -> TopicConfig {
    let config = TopicConfig::new(topic);
    match topic {
        INVENTORY_LEDGER | STOCK_RESERVED | STOCK_REJECTED => {
            config.retention(Retention::unlimited())
        }
        STOCK_QUERY => config.retention(
            Retention::unlimited()
                .max_age(STOCK_QUERY_MAX_AGE)
                .discard_acked(true),
        ),
        _ => config,
    }
}

/// Identifies one order, for example `o-1764259200123-9f3a1c2e`. New ids
/// start with the creation time in milliseconds, so they sort by age.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    /// A fresh, unique id.
    pub fn generate() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis());
        Self(format!("o-{millis}-{:08x}", rand::random::<u32>()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for OrderId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order was placed: `{"order_id": "...", "sku": "tea-01", "quantity": 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: OrderId,
    /// The article ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// What the inventory decided about an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The stock is set aside for the order.
    Reserved,
    /// The order cannot be served.
    Rejected {
        /// Why, for people.
        reason: String,
    },
}

/// The inventory's decision about one order, published on
/// [`STOCK_RESERVED`] or [`STOCK_REJECTED`]:
/// `{"order_id": "...", "sku": "tea-01", "quantity": 2, "outcome": "reserved"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The order.
    pub order_id: OrderId,
    /// The article ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Reserved or rejected.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The question "how many units of this SKU are in stock?", published on
/// [`STOCK_QUERY`]: `{"sku": "tea-01"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockQuery {
    /// The article asked about.
    pub sku: String,
}

/// The inventory's answer to a [`StockQuery`]:
/// `{"sku": "tea-01", "available": 98}`, with `available` null for a SKU
/// the inventory does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The article asked about.
    pub sku: String,
    /// Units left; `None` when the inventory does not know the SKU.
    pub available: Option<u64>,
}

impl StockQuery {
    /// The request to send with `Call` on [`STOCK_QUERY`].
    pub fn to_message(&self) -> Message {
        json_message(self)
    }
}

impl StockLevel {
    /// The reply to send with `Reply`.
    pub fn to_message(&self) -> Message {
        json_message(self)
    }
}

/// Whether a caller still waits for the answer to a request whose reply
/// deadline (the `tidings.reply_deadline` attribute) is `deadline`: not
/// when it has passed at `now`, nor when the request carries none (it was
/// not sent by `Call`). A responder skips a request nobody waits for.
pub fn is_awaited(deadline: Option<SystemTime>, now: SystemTime) -> bool {
    deadline.is_some_and(|deadline| deadline > now)
}

impl OrderPlaced {
    /// The message to publish on [`ORDER_PLACED`]. Its id is the order id,
    /// so that the broker stores an order announced twice (the outbox
    /// announces pending orders again after a restart) once, within the
    /// topic's dedup window.
    pub fn to_message(&self) -> Message {
        to_message(&self.order_id, self).with_id(self.order_id.as_str())
    }
}

impl Decision {
    /// The message to publish on [`Decision::topic`].
    pub fn to_message(&self) -> Message {
        to_message(&self.order_id, self)
    }

    /// The topic this decision is published on.
    pub fn topic(&self) -> &'static str {
        match self.outcome {
            Outcome::Reserved => STOCK_RESERVED,
            Outcome::Rejected { .. } => STOCK_REJECTED,
        }
    }
}

/// The JSON message carrying `event`, keyed by its order id.
fn to_message(order_id: &OrderId, event: &impl Serialize) -> Message {
    json_message(event).with_key(order_id.as_str())
}

/// The JSON message carrying `value`.
pub fn json_message(value: &impl Serialize) -> Message {
    // Events hold only strings, numbers and maps with string keys, which
    // always serialize.
    let json = serde_json::to_vec(value).expect("events serialize to JSON");
    Message::new(json).with_attribute("content-type", "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_json_is_flat() {
        let decision = Decision {
            order_id: OrderId::from("o-1"),
            sku: "mug-02".into(),
            quantity: 3,
            outcome: Outcome::Rejected {
                reason: "out of stock".into(),
            },
        };
        let json = serde_json::to_value(&decision).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"order_id": "o-1", "sku": "mug-02", "quantity": 3,
                "outcome": "rejected", "reason": "out of stock"})
        );
        let back: Decision = serde_json::from_value(json).expect("parses");
        assert_eq!(back, decision);
        assert_eq!(back.topic(), STOCK_REJECTED);
    }

    #[test]
    fn only_a_request_whose_deadline_is_ahead_is_awaited() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let second = Duration::from_secs(1);
        assert!(is_awaited(Some(now + second), now));
        assert!(
            !is_awaited(Some(now), now),
            "the deadline is the last moment"
        );
        assert!(!is_awaited(Some(now - second), now));
        assert!(!is_awaited(None, now), "not a call's request");
    }

    #[test]
    fn an_unknown_sku_is_answered_with_null() {
        let level = StockLevel {
            sku: "cup-9".into(),
            available: None,
        };
        let json = serde_json::to_value(&level).expect("serializes");
        assert_eq!(json, serde_json::json!({"sku": "cup-9", "available": null}));
    }

    #[test]
    fn decisions_are_kept_for_ever_and_questions_an_hour() {
        for topic in [INVENTORY_LEDGER, STOCK_RESERVED, STOCK_REJECTED] {
            assert_eq!(topic_config(topic).retention, Some(Retention::unlimited()));
        }
        let query = topic_config(STOCK_QUERY).retention.expect("a retention");
        assert_eq!(query.max_age, Some(STOCK_QUERY_MAX_AGE));
        assert!(query.discard_acked);
        assert_eq!(topic_config(ORDER_PLACED).retention, None, "broker default");
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(OrderId::generate(), OrderId::generate());
    }
}
