//! The Rust client of the Tidings broker.
//!
//! A [`Client`] holds one gRPC channel to a broker. From it come
//! - admin calls: [`Client::create_topic`] (or
//!   [`Client::create_topic_with`], for a [`Retention`] policy),
//!   [`Client::update_topic`], [`Client::list_topics`],
//!   [`Client::create_subscription`], [`Client::get_subscription`] …, and
//!   [`Client::health`];
//! - [`Client::read_topic`]: a topic's stored messages by offset, taking
//!   nothing from its subscriptions;
//! - a [`Publisher`]: [`Publisher::publish`] queues a message and returns
//!   a future of its offset; a background task sends queued messages in
//!   batches, several batches at a time, as requests on one long-lived
//!   `PublishStream` call (or unary `Publish` calls), from a bounded queue,
//!   and sends a batch again only when it never reached the broker;
//! - [`Client::publish_batch`] and [`PublishStream`]: one request of
//!   messages, stored together, as a unary call or on a shared stream;
//! - a [`Subscriber`]: a [`Stream`](futures::Stream) of [`Delivery`]
//!   values, each settled with an ack, a nack (optionally with an error:
//!   [`Delivery::nack_with_error`]) or a reject ([`Delivery::reject`]: never
//!   again; dead-lettered at once when the subscription has a dead-letter
//!   policy). Acks and rejects are batched (or awaited one by one with
//!   [`Delivery::ack_with_response`] and
//!   [`Delivery::reject_with_response`]), leases of unsettled deliveries are
//!   extended on their own, flow control holds to a count and a byte
//!   budget, the stream reconnects when the broker restarts, and
//!   [`Subscriber::shutdown`] ends it only once handlers have settled what
//!   they hold.
//!
//! ```no_run
//! use futures::StreamExt as _;
//! use tidings_client::{Client, Message};
//!
//! # async fn example() -> Result<(), tidings_client::Error> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! client.create_topic("order.placed").await?;
//!
//! // Publish: each future resolves to the message's offset once stored.
//! let publisher = client.publisher("order.placed");
//! let offset = publisher
//!     .publish(Message::new(r#"{"order":42}"#).with_key("order-42"))
//!     .await?;
//! println!("stored at offset {offset}");
//!
//! // Subscribe: the subscription is created on the topic when missing.
//! let mut subscriber = client
//!     .subscriber("inventory")
//!     .topic("order.placed")
//!     .subscribe()
//!     .await?;
//! while let Some(delivery) = subscriber.next().await {
//!     let delivery = delivery?;
//!     println!("{} {:?}", delivery.offset(), delivery.payload());
//!     delivery.ack();
//! }
//! subscriber.close().await?;
//! publisher.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery promises
//! Delivery is at least once: a message comes again until it is acked (or
//! rejected) — after a nack, when a dropped [`Delivery`] is nacked for
//! you, when its lease expires (only past the subscriber's
//! `max_lease_extension`, when the subscriber lets the lease go), or when
//! the stream ends with it unsettled ([`Subscriber::close`];
//! [`Subscriber::shutdown`] waits for handlers first). Settlements are idempotent, and transient failures
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, timeouts) are
//! retried across reconnects. Acks, rejects and nacks the broker refused,
//! or that were given up while closing, are never only logged:
//! [`Subscriber::flush`], [`Subscriber::close`] and
//! [`Subscriber::shutdown`] return [`Error::Unsettled`] with how many and
//! why, and the awaitable forms return the failure itself. Settlements name
//! each delivery by its ack_id (by its offset with a broker that gives
//! none), so a late nack or extension never disturbs a lease that has moved
//! on. See [`Publisher`] for what
//! publishing promises about order (with `max_in_flight(1)`, exact publish
//! order, and a pause after a failure until [`Publisher::resume`]), memory,
//! retries and errors.
//!
//! # Layout
//! `client.rs` connects; `admin.rs` holds the admin calls; `types.rs` (with
//! `types/topic.rs`: topics and their retention) the plain data; `publisher.rs` (with `publisher/`: its task, its calls and
//! retries, its queue limits, its pause), `batch.rs` and
//! `publish_stream.rs` (the shared `PublishStream` call) the publisher;
//! `subscriber.rs`, `reader.rs`, `delivery.rs`, `settle.rs` (with
//! `settle/`: its requests) and `lease.rs` the subscriber. The raw
//! generated API stays reachable as [`v1`] (and through
//! [`Client::publisher_service`] and friends).
//!
//! This crate speaks only the wire API (`tidings::v1`); it never depends on
//! the server or its storage engine.

mod admin;
mod backoff;
mod batch;
mod call;
mod client;
mod commit;
mod delivery;
mod error;
mod lease;
mod publish_stream;
mod publisher;
mod read;
mod reader;
mod security;
mod settle;
mod subscriber;
mod types;

pub use tidings::v1;

pub use call::{CallReply, REPLY_DEADLINE_ATTRIBUTE, REPLY_TO_ATTRIBUTE};
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_DECODING_MESSAGE_SIZE,
};
pub use commit::Commit;
pub use delivery::{Delivery, MAX_ERROR_BYTES, MAX_NACK_DELAY, SettleFuture};
pub use error::{Error, Result};
pub use publish_stream::PublishStream;
pub use publisher::{
    DEFAULT_LINGER, DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_MESSAGES, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_MESSAGES, DEFAULT_RETRY_WINDOW, PublishFuture,
    Publisher, PublisherBuilder, WhenQueueFull,
};
pub use read::{StoredMessage, TopicRead};
pub use security::{BearerToken, Transport};
pub use subscriber::{
    DEFAULT_ACK_FLUSH_INTERVAL, DEFAULT_MAX_LEASE_EXTENSION, DEFAULT_MAX_OUTSTANDING_BYTES,
    DEFAULT_MAX_OUTSTANDING_MESSAGES, DEFAULT_ORDERED_ACK_FLUSH_INTERVAL,
    DEFAULT_STREAM_IDLE_TIMEOUT, ShutdownReport, Subscriber, SubscriberBuilder,
};
pub use types::{
    DeadLetterPolicy, Message, Published, PushConfig, Retention, RetryPolicy, StartPosition,
    StorageClass, Subscription, SubscriptionConfig, SubscriptionUpdate, Topic, TopicConfig,
    TopicUpdate,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + Unpin>() {}

    /// Handles are shared across tasks: the compiler checks it here.
    #[test]
    fn handles_can_cross_tasks() {
        send_sync::<Client>();
        send_sync::<Publisher>();
        send_sync::<PublishStream>();
        send_sync::<Delivery>();
        send_sync::<Error>();
        send::<PublishFuture>();
        send_sync::<PublishFuture>();
        send::<SettleFuture>();
        send_sync::<SettleFuture>();
        send::<Subscriber>();
    }
}
