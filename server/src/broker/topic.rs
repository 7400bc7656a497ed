//! A live topic: its identity, its durable head, and the signal that it was
//! deleted. Messages themselves stay in storage.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::TopicInfo;
use crate::names::TopicName;
use crate::offsets::Offset;
use crate::storage::{NewMessage, StoredMessage, TopicId, TopicRecord};

/// The size assumed for a message before any was published.
const INITIAL_SIZE_ESTIMATE: usize = 1024;
/// Bounds of a topic's tail cache.
const TAIL_CACHE_BYTES: usize = 4 << 20;
const TAIL_CACHE_MESSAGES: usize = 8192;

/// The most recently published messages of a topic, kept while streams are
/// open on it so that streams reading at the head are served from memory
/// instead of storage. Holds payloads by reference (`Bytes`), bounded in
/// bytes and count; the oldest go first.
#[derive(Default)]
struct TailCache {
    messages: BTreeMap<Offset, StoredMessage>,
    bytes: usize,
}

impl TailCache {
    fn insert(&mut self, message: StoredMessage) {
        self.bytes += message.wire_size();
        if let Some(old) = self.messages.insert(message.offset, message) {
            self.bytes -= old.wire_size();
        }
        while self.bytes > TAIL_CACHE_BYTES || self.messages.len() > TAIL_CACHE_MESSAGES {
            let Some((_, oldest)) = self.messages.pop_first() else {
                break;
            };
            self.bytes -= oldest.wire_size();
        }
    }
}

pub(super) struct Topic {
    pub(super) id: TopicId,
    pub(super) name: TopicName,
    pub(super) created: SystemTime,
    /// The next offset: every offset below it is durable and readable.
    /// Streams wait on it for new messages.
    head_tx: watch::Sender<Offset>,
    /// A running estimate of message size, to size storage reads.
    size_estimate: AtomicUsize,
    /// Cancelled when the topic is deleted; subscriptions' tokens are its
    /// children.
    pub(super) deleted: CancellationToken,
    /// Streams open on the topic's subscriptions; the tail is cached only
    /// while there are some.
    open_streams: AtomicUsize,
    tail: Mutex<TailCache>,
}

impl Topic {
    pub(super) fn new(record: &TopicRecord) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            created: record.created,
            head_tx: watch::Sender::new(record.next_offset),
            size_estimate: AtomicUsize::new(INITIAL_SIZE_ESTIMATE),
            deleted: CancellationToken::new(),
            open_streams: AtomicUsize::new(0),
            tail: Mutex::new(TailCache::default()),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, TailCache> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stream_closed(&self) {
        if self.open_streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.tail() = TailCache::default();
        }
    }

    /// Whether published messages should be cached: streams are open.
    pub(super) fn wants_tail(&self) -> bool {
        self.open_streams.load(Ordering::Relaxed) > 0
    }

    /// Caches a batch that storage appended at `first_offset`. Call before
    /// [`Topic::advance_head`], so that woken streams find it.
    pub(super) fn cache(
        &self,
        first_offset: Offset,
        publish_time: SystemTime,
        batch: Vec<NewMessage>,
    ) {
        let mut tail = self.tail();
        for (offset, message) in (first_offset..).zip(batch) {
            tail.insert(StoredMessage {
                offset,
                publish_time,
                payload: message.payload,
                key: message.key,
                attributes: message.attributes,
            });
        }
    }

    /// The cached messages among `offsets`, and the offsets not cached.
    pub(super) fn cached(
        &self,
        offsets: impl Iterator<Item = Offset>,
    ) -> (Vec<StoredMessage>, Vec<Offset>) {
        let tail = self.tail();
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for offset in offsets {
            match tail.messages.get(&offset) {
                Some(message) => found.push(message.clone()),
                None => missing.push(offset),
            }
        }
        (found, missing)
    }

    pub(super) fn head(&self) -> Offset {
        *self.head_tx.borrow()
    }

    /// Moves the head up to `to` (never down: appends complete in any
    /// order, and each completion implies every earlier offset is durable).
    pub(super) fn advance_head(&self, to: Offset) {
        self.head_tx.send_if_modified(|head| {
            let moved = to > *head;
            if moved {
                *head = to;
            }
            moved
        });
    }

    pub(super) fn watch_head(&self) -> watch::Receiver<Offset> {
        self.head_tx.subscribe()
    }

    /// Folds the mean size of a published batch into the estimate.
    pub(super) fn observe_size(&self, mean: usize) {
        let old = self.size_estimate.load(Ordering::Relaxed);
        self.size_estimate
            .store((old * 7 + mean.max(1)) / 8, Ordering::Relaxed);
    }

    pub(super) fn size_estimate(&self) -> usize {
        self.size_estimate.load(Ordering::Relaxed).max(1)
    }

    pub(super) fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            next_offset: self.head(),
            created: self.created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::TopicName;
    use bytes::Bytes;

    fn topic() -> Topic {
        Topic::new(&TopicRecord {
            id: TopicId(1),
            name: TopicName::new("t").unwrap(),
            next_offset: 0,
            created: SystemTime::UNIX_EPOCH,
        })
    }

    fn batch(n: usize, size: usize) -> Vec<NewMessage> {
        (0..n)
            .map(|_| NewMessage {
                payload: Bytes::from(vec![0; size]),
                ..NewMessage::default()
            })
            .collect()
    }

    #[test]
    fn the_tail_is_cached_only_while_streams_are_open() {
        let topic = topic();
        assert!(!topic.wants_tail());
        topic.stream_opened();
        topic.cache(0, SystemTime::UNIX_EPOCH, batch(3, 10));
        let (found, missing) = topic.cached([1, 2, 3].into_iter());
        assert_eq!(found.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(missing, [3]);
        topic.stream_closed();
        assert_eq!(
            topic.cached([0].into_iter()).1,
            [0],
            "cleared with the last stream"
        );
    }

    #[test]
    fn the_tail_cache_drops_its_oldest_messages_past_its_bounds() {
        let topic = topic();
        topic.stream_opened();
        let big = TAIL_CACHE_BYTES / 4;
        topic.cache(0, SystemTime::UNIX_EPOCH, batch(6, big));
        let (found, missing) = topic.cached(0..6);
        assert!(found.len() < 6 && found.iter().all(|m| m.offset >= 2));
        assert!(missing.contains(&0));
        assert!(found.iter().any(|m| m.offset == 5), "the newest stays");
    }
}
