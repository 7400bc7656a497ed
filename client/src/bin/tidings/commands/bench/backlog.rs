//! The backlog `tidings bench consume` drains: what each message carries
//! (an ordering key, a filter attribute), which messages the streams must
//! refuse (the poison keys), how many they must acknowledge, and the
//! untimed publishing that fills it. Nothing here receives messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings_client::Client;
use tidings_client::v1::{PublishMessage, PublishRequest};

use super::payload;
use super::report::Progress;

/// Messages per request when filling the backlog.
const FILL_BATCH: u64 = 500;
/// Fill requests in flight.
const FILL_IN_FLIGHT: usize = 8;
/// The attribute a filter can select on: `"yes"` on the chosen share of
/// the messages, `"no"` on the rest.
pub(super) const PICK_ATTRIBUTE: &str = "pick";

/// The shape of one backlog: message `i` (in publishing order) has key
/// `k{i mod keys}` when keys are on, and `pick = "yes"` on an even spread
/// of `match_percent` % of the messages when picks are on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Messages in the backlog.
    pub(super) count: u64,
    /// Distinct keys, round-robin; `None` for messages without a key.
    pub(super) keys: Option<u64>,
    /// Keys `k0` to `k{poison - 1}`: their messages are always nacked.
    pub(super) poison: u64,
    /// Share of messages with `pick = "yes"`; `None` for no attribute.
    pub(super) match_percent: Option<u64>,
}

impl Shape {
    /// The key of message `i`, empty without keys.
    fn key(&self, i: u64) -> String {
        self.keys
            .map_or_else(String::new, |n| format!("k{}", i % n))
    }

    /// Whether message `i` carries `pick = "yes"`: spread evenly, so that
    /// the first `i` messages hold `i × percent / 100` picks, rounded down.
    fn picked(i: u64, percent: u64) -> bool {
        (i + 1) * percent / 100 > i * percent / 100
    }

    /// The number in a key this bench wrote (`k17` → 17).
    pub(super) fn key_number(key: &str) -> Option<u64> {
        key.strip_prefix('k')?.parse().ok()
    }

    /// Whether a message with `key` is one the streams must nack.
    pub(super) fn is_poison(&self, key: &str) -> bool {
        self.poison > 0 && Self::key_number(key).is_some_and(|n| n < self.poison)
    }

    /// Messages of poison keys in the backlog.
    pub(super) fn poison_messages(&self) -> u64 {
        let Some(keys) = self.keys else { return 0 };
        let poison = self.poison.min(keys);
        self.count / keys * poison + (self.count % keys).min(poison)
    }

    /// Messages with `pick = "yes"` in the backlog.
    pub(super) fn picked_messages(&self) -> u64 {
        self.match_percent
            .map_or(self.count, |percent| self.count * percent / 100)
    }

    /// The message of index `i`.
    fn message(&self, i: u64, template: &PublishMessage) -> PublishMessage {
        let mut message = template.clone();
        message.key = self.key(i);
        if let Some(percent) = self.match_percent {
            let pick = if Self::picked(i, percent) {
                "yes"
            } else {
                "no"
            };
            message.attributes = HashMap::from([(PICK_ATTRIBUTE.to_owned(), pick.to_owned())]);
        }
        message
    }

    /// Publishes the backlog to `topic`, with payloads of `size` bytes, in
    /// large batches (untimed).
    pub(super) async fn fill(
        &self,
        client: &Client,
        topic: &str,
        size: usize,
    ) -> anyhow::Result<()> {
        let done = Arc::new(AtomicU64::new(0));
        let _progress = Progress::start("fill", Arc::clone(&done), self.count);
        let template = PublishMessage {
            payload: payload(size),
            ..PublishMessage::default()
        };
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            while next < self.count && pending.len() < FILL_IN_FLIGHT {
                let n = FILL_BATCH.min(self.count - next);
                let request = PublishRequest {
                    topic: topic.to_owned(),
                    messages: (next..next + n)
                        .map(|i| self.message(i, &template))
                        .collect(),
                };
                next += n;
                let mut service = client.publisher_service();
                pending.push(async move { service.publish(request).await.map(|_| n) });
            }
            match pending.next().await {
                Some(stored) => {
                    done.fetch_add(stored?, Ordering::Relaxed);
                }
                None => return Ok(()),
            }
        }
    }
}

/// Checks, across every stream, that each key's messages arrive in offset
/// order (with ordering on, a key's next message comes only once the one
/// before is acknowledged, so its offsets only grow).
#[derive(Debug)]
pub(super) struct KeyOrder {
    last: Mutex<Vec<Option<u64>>>,
}

impl KeyOrder {
    /// A check for keys `k0` to `k{keys - 1}`.
    pub(super) fn new(keys: u64) -> Self {
        let keys = usize::try_from(keys).unwrap_or(usize::MAX);
        Self {
            last: Mutex::new(vec![None; keys]),
        }
    }

    /// Records a delivery of `offset` with `key`.
    ///
    /// # Errors
    /// When the key had a later offset delivered already.
    pub(super) fn see(&self, key: &str, offset: u64) -> anyhow::Result<()> {
        let Some(n) = Shape::key_number(key).and_then(|n| usize::try_from(n).ok()) else {
            return Ok(());
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = last.get_mut(n) else {
            return Ok(());
        };
        if let Some(before) = *slot {
            anyhow::ensure!(
                offset > before,
                "key {key:?}: offset {offset} was delivered after {before}"
            );
        }
        *slot = Some(offset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(count: u64) -> Shape {
        Shape {
            count,
            keys: Some(10),
            poison: 2,
            match_percent: Some(10),
        }
    }

    #[test]
    fn picks_are_spread_evenly_and_counted_exactly() {
        for (count, percent) in [(1000, 10), (999, 10), (7, 50), (300, 33), (5, 100)] {
            let shape = Shape {
                match_percent: Some(percent),
                ..shape(count)
            };
            let picked = (0..count).filter(|&i| Shape::picked(i, percent)).count();
            assert_eq!(
                picked as u64,
                shape.picked_messages(),
                "{count} at {percent} %"
            );
        }
        let first: Vec<u64> = (0..30).filter(|&i| Shape::picked(i, 10)).collect();
        assert_eq!(first, [9, 19, 29]);
    }

    #[test]
    fn poison_messages_are_counted_by_key() {
        for count in [0, 1, 2, 3, 10, 11, 12, 13, 305] {
            let shape = shape(count);
            let poison = (0..count)
                .filter(|&i| shape.is_poison(&shape.key(i)))
                .count();
            assert_eq!(poison as u64, shape.poison_messages(), "{count}");
        }
        assert!(!shape(10).is_poison(""));
        assert!(!shape(10).is_poison("k2"));
        assert!(shape(10).is_poison("k1"));
    }

    #[test]
    fn key_order_refuses_an_offset_that_goes_back() -> anyhow::Result<()> {
        let order = KeyOrder::new(3);
        order.see("k1", 4)?;
        order.see("k2", 2)?;
        order.see("k1", 7)?;
        order.see("", 1)?;
        assert!(order.see("k1", 5).is_err());
        assert!(order.see("k2", 2).is_err());
        Ok(())
    }
}
