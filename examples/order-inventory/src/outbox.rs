//! The order service's outbox: one task that announces every pending order
//! on `order.placed`, retrying until the broker stored the event.
//!
//! It takes its work from the order book's [`OutboxFeed`] (the orders
//! pending at start, then each new one as the book records it), so no
//! announcement depends on an HTTP handler staying alive. It tells who
//! waits which orders are announced through [`Announced`]. It never changes
//! an order; publishing an order twice is harmless (the inventory decides
//! each order once, by id).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings_client::Publisher;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::{OrderId, OrderPlaced};
use crate::orders::OutboxFeed;

/// How long an order whose publish failed waits before it is published
/// again.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Which orders the outbox has announced since the service started (an
/// order pending at start is announced again). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Announced {
    announced_rx: watch::Receiver<HashSet<OrderId>>,
}

impl Announced {
    /// Whether the broker stored `order`'s `order.placed` since this
    /// service started.
    pub fn contains(&self, order: &OrderId) -> bool {
        self.announced_rx.borrow().contains(order)
    }

    /// Waits until `order` is announced; returns `false` when the outbox
    /// stopped first.
    pub async fn wait(&self, order: &OrderId) -> bool {
        let mut announced_rx = self.announced_rx.clone();
        let waited = announced_rx.wait_for(|announced| announced.contains(order));
        waited.await.is_ok()
    }
}

/// The outbox task's state; [`Outbox::run`] is the task.
#[derive(Debug)]
pub struct Outbox {
    publisher: Publisher,
    feed: OutboxFeed,
    announced_tx: watch::Sender<HashSet<OrderId>>,
}

/// The answer of one publish: the event and the broker's offset or error.
type Published = (OrderPlaced, tidings_client::Result<u64>);

impl Outbox {
    /// An outbox that publishes with `publisher` what `feed` brings.
    pub fn new(publisher: Publisher, feed: OutboxFeed) -> Self {
        Self {
            publisher,
            feed,
            announced_tx: watch::Sender::new(HashSet::new()),
        }
    }

    /// A handle that tells which orders are announced.
    pub fn announced(&self) -> Announced {
        Announced {
            announced_rx: self.announced_tx.subscribe(),
        }
    }

    /// Publishes every order of the feed, each until the broker stored it,
    /// one publish per order at a time; a failed one is tried again after
    /// [`RETRY_DELAY`]. Runs until `shutdown`.
    pub async fn run(mut self, shutdown: &CancellationToken) {
        let mut in_flight = FuturesUnordered::new();
        // Orders whose publish failed, waiting for `retry_at`.
        let mut waiting = BTreeMap::new();
        let mut retry_at = Instant::now();
        let pending = std::mem::take(&mut self.feed.pending);
        if !pending.is_empty() {
            info!(orders = pending.len(), "announcing the pending orders");
        }
        for event in pending {
            in_flight.push(self.publish(event));
        }
        let mut feed_open = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = self.feed.placed_rx.recv(), if feed_open => match event {
                    Some(event) => in_flight.push(self.publish(event)),
                    None => feed_open = false,
                },
                Some((event, result)) = in_flight.next() => {
                    if let Some(event) = self.settle(event, result) {
                        if waiting.is_empty() {
                            retry_at = Instant::now() + RETRY_DELAY;
                        }
                        waiting.insert(event.order_id.clone(), event);
                    }
                }
                () = tokio::time::sleep_until(retry_at), if !waiting.is_empty() => {
                    warn!(orders = waiting.len(), "publishing order.placed again");
                    for event in std::mem::take(&mut waiting).into_values() {
                        in_flight.push(self.publish(event));
                    }
                }
            }
        }
    }

    /// Publishes `event`; the future answers with the event and the result.
    fn publish(&self, event: OrderPlaced) -> impl Future<Output = Published> + use<> {
        let publishing = self.publisher.publish(event.to_message());
        async move { (event, publishing.await) }
    }

    /// Records the answer of a publish; returns the event when it must be
    /// published again.
    fn settle(
        &self,
        event: OrderPlaced,
        result: tidings_client::Result<u64>,
    ) -> Option<OrderPlaced> {
        let order = &event.order_id;
        match result {
            Ok(offset) => {
                debug!(%order, offset, "published order.placed");
                self.announced_tx.send_modify(|announced| {
                    announced.insert(order.clone());
                });
                None
            }
            Err(err) => {
                debug!(%order, error = %err, "cannot publish order.placed yet; will retry");
                Some(event)
            }
        }
    }
}
