//! The order/inventory example: services that talk only through Tidings.
//!
//! - `order-service` takes orders over HTTP, records them and publishes
//!   `order.placed`; it follows `stock.reserved` and `stock.rejected` to
//!   settle each order, and asks the inventory "how many are in stock?"
//!   with `Call` on `stock.query`.
//! - `inventory-service` consumes `order.placed`, reserves stock or rejects
//!   the order, and publishes the outcome with `Commit`, together with the
//!   order's acknowledgement; it keeps no files, its state is rebuilt from
//!   its ledger on the broker. It answers `stock.query` with `Reply`.
//! - `notification-service` tells customers their order is reserved: the
//!   broker pushes each `stock.reserved` event to it over HTTP.
//!
//! This library holds what the binaries share:
//!
//! - [`events`]: the topics, what each keeps, and the JSON on them;
//! - [`journal`]: an append-only, fsynced JSON-lines file, the durable
//!   memory of the order service and of the notifier;
//! - [`orders`]: the order service's orders, changed by one writer task;
//! - [`outbox`]: the order service's task that announces pending orders;
//! - [`stock`]: the inventory's stock and the decision taken per order;
//! - [`ledger`]: the inventory's memory on the broker, and the commit that
//!   stores each decision exactly once;
//! - [`push`]: the body the broker pushes, decoded, and the set-up of a
//!   push subscription;
//! - [`notifications`]: the notifier's notifications, one per order;
//! - [`service`]: logging, signals, topics, HTTP serving and errors, and
//!   the consume loop.
//!
//! Delivery is at-least-once, so every handler here is idempotent: a
//! redelivered event changes nothing that its first delivery did not.

pub mod events;
pub mod journal;
pub mod ledger;
pub mod notifications;
pub mod orders;
pub mod outbox;
pub mod push;
pub mod service;
pub mod stock;
