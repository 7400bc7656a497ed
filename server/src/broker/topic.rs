//! A live topic: its identity, its head and first offset as storage
//! reports them, its tail cache, and the signal that it was deleted.
//! Messages themselves stay in storage.
//!
//! [`Topics`] is the registry of live topics by id, and the storage
//! listener: the store tells it about every append and truncation, on the
//! store's side of the write, so heads advance and streams wake even when
//! the publishing request was cancelled meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::TopicInfo;
use super::delays::Delays;
use crate::names::TopicName;
use crate::offsets::Offset;
use crate::storage::{
    Appended, DuePosition, NewMessage, ReadLimit, Retention, StorageClass, StoreListener,
    StoredMessage, TopicId, TopicRecord, TopicSettings,
};

/// Bounds of a topic's tail cache.
const TAIL_CACHE_BYTES: usize = 4 << 20;
const TAIL_CACHE_MESSAGES: usize = 8192;

/// The most recently published messages of a topic, kept while streams are
/// open on it so that streams reading at the head are served from memory
/// instead of storage. Holds payloads by reference (`Bytes`), bounded in
/// bytes and count; the oldest go first. Its offsets are contiguous up to
/// the head: appends are cached in order, before the head moves.
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
            if self.pop_first().is_none() {
                break;
            }
        }
    }

    fn pop_first(&mut self) -> Option<StoredMessage> {
        let (_, oldest) = self.messages.pop_first()?;
        self.bytes -= oldest.wire_size();
        Some(oldest)
    }

    fn drop_below(&mut self, first: Offset) {
        while self
            .messages
            .first_key_value()
            .is_some_and(|(&o, _)| o < first)
        {
            self.pop_first();
        }
    }
}

pub(super) struct Topic {
    pub(super) id: TopicId,
    pub(super) name: TopicName,
    pub(super) created: SystemTime,
    /// The next offset: every offset below it is written and readable.
    /// Streams wait on it for new messages. Moved by the store's listener.
    head_tx: watch::Sender<Offset>,
    /// The first offset that may hold a message.
    first_offset: AtomicU64,
    /// The stored size of the retained messages, as the store last said.
    retained_bytes: AtomicU64,
    /// Bytes of the messages stored since the broker started.
    published_bytes: AtomicU64,
    /// Cancelled when the topic is deleted; subscriptions' tokens are its
    /// children.
    pub(super) deleted: CancellationToken,
    /// Streams open on the topic's subscriptions; the tail is cached only
    /// while there are some.
    open_streams: AtomicUsize,
    tail: Mutex<TailCache>,
    /// What can change, as stored.
    settings: Mutex<TopicSettings>,
    /// Its delayed messages (see `delays.rs`).
    delays: Mutex<Delays>,
    /// Where its messages are kept.
    pub(super) storage: StorageClass,
}

impl Topic {
    pub(super) fn new(record: &TopicRecord) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            created: record.created,
            head_tx: watch::Sender::new(record.next_offset),
            first_offset: AtomicU64::new(record.first_offset),
            retained_bytes: AtomicU64::new(record.retained_bytes),
            published_bytes: AtomicU64::new(0),
            deleted: CancellationToken::new(),
            open_streams: AtomicUsize::new(0),
            tail: Mutex::new(TailCache::default()),
            settings: Mutex::new(record.settings.clone()),
            // A memory topic's delayed messages are in memory anyway: its
            // books keep them all.
            delays: Mutex::new(Delays::starting(
                SystemTime::now(),
                0,
                record.storage == StorageClass::Memory,
            )),
            storage: record.storage,
        }
    }

    /// Runs `f` on what the topic knows of its delayed messages.
    pub(super) fn with_delays<T>(&self, f: impl FnOnce(&mut Delays) -> T) -> T {
        f(&mut self.delays.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces what the topic knows of its delayed messages (at start).
    pub(super) fn set_delays(&self, delays: Delays) {
        self.with_delays(|d| *d = delays);
    }

    /// Scans pass over delayed messages after this (see `delays.rs`).
    pub(super) fn delay_horizon(&self) -> Option<DuePosition> {
        self.with_delays(|d| d.horizon())
    }

    /// Delayed messages not yet due.
    pub(super) fn delayed(&self) -> u64 {
        self.with_delays(|d| d.waiting())
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, TopicSettings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record to store for new `settings`: its offsets and retained
    /// bytes are the store's business.
    pub(super) fn record_with(&self, settings: TopicSettings) -> TopicRecord {
        TopicRecord {
            id: self.id,
            name: self.name.clone(),
            first_offset: self.first_offset(),
            next_offset: self.head(),
            created: self.created,
            settings,
            retained_bytes: self.retained_bytes(),
            storage: self.storage,
        }
    }

    /// The settings now.
    pub(super) fn settings(&self) -> TopicSettings {
        self.lock_settings().clone()
    }

    /// The settings were stored as `settings`.
    pub(super) fn set_settings(&self, settings: TopicSettings) {
        *self.lock_settings() = settings;
    }

    pub(super) fn retention(&self) -> Retention {
        self.lock_settings().retention
    }

    /// Messages published before this are expired: never read or
    /// delivered again, deleted soon. `None` without an age limit.
    pub(super) fn expired_before(&self, now: SystemTime) -> Option<SystemTime> {
        let age = self.retention().max_age?;
        Some(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
    }

    /// Drops the messages of `messages` that are expired.
    pub(super) fn drop_expired(&self, messages: &mut Vec<StoredMessage>) {
        if let Some(cutoff) = self.expired_before(SystemTime::now()) {
            messages.retain(|m| m.publish_time >= cutoff);
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
    fn wants_tail(&self) -> bool {
        self.open_streams.load(Ordering::Relaxed) > 0
    }

    /// A batch was written at `appended.first_offset`: caches it while
    /// streams are open, then moves the head, which wakes the streams.
    fn appended(&self, appended: &Appended, messages: Vec<NewMessage>) {
        let count = messages.len() as u64;
        if count == 0 {
            return;
        }
        self.retained_bytes
            .store(appended.retained_bytes, Ordering::Release);
        let bytes: usize = messages.iter().map(NewMessage::size).sum();
        self.published_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let delayed = (appended.first_offset..)
            .zip(&messages)
            .filter_map(|(offset, m)| {
                let due = m.due(appended.publish_time)?;
                Some(DuePosition { due, offset })
            });
        for position in delayed {
            self.with_delays(|d| d.stored(position));
        }
        if self.wants_tail() {
            let mut tail = self.tail();
            for (offset, message) in (appended.first_offset..).zip(messages) {
                let deliver_at = message.due(appended.publish_time);
                tail.insert(StoredMessage {
                    offset,
                    publish_time: appended.publish_time,
                    payload: message.payload,
                    key: message.key,
                    attributes: message.attributes,
                    id: message.id,
                    deliver_at,
                });
            }
        }
        self.advance_head(appended.first_offset + count);
    }

    /// Every offset below `first` was deleted; `retained_bytes` are left.
    fn truncated(&self, first: Offset, retained_bytes: u64) {
        self.first_offset.fetch_max(first, Ordering::AcqRel);
        self.retained_bytes.store(retained_bytes, Ordering::Release);
        self.tail().drop_below(first);
    }

    /// The stored size of the retained messages.
    pub(super) fn retained_bytes(&self) -> u64 {
        self.retained_bytes.load(Ordering::Acquire)
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

    /// The messages of `range` within `limit`, when the cache holds the
    /// range's start (it then holds everything after it up to the head).
    pub(super) fn cached_range(
        &self,
        range: &Range<Offset>,
        limit: ReadLimit,
    ) -> Option<Vec<StoredMessage>> {
        let tail = self.tail();
        if !tail.messages.contains_key(&range.start) {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for message in tail.messages.range(range.clone()).map(|(_, m)| m) {
            if out.len() >= limit.max_messages || (!out.is_empty() && bytes >= limit.max_bytes) {
                break;
            }
            bytes += message.wire_size();
            out.push(message.clone());
        }
        Some(out)
    }

    pub(super) fn head(&self) -> Offset {
        *self.head_tx.borrow()
    }

    pub(super) fn first_offset(&self) -> Offset {
        self.first_offset.load(Ordering::Acquire)
    }

    /// Moves the head up to `to` (never down).
    fn advance_head(&self, to: Offset) {
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

    pub(super) fn info(&self) -> TopicInfo {
        let next_offset = self.head();
        let first_offset = self.first_offset().min(next_offset);
        TopicInfo {
            name: self.name.clone(),
            first_offset,
            next_offset,
            created: self.created,
            retention: self.retention(),
            retained_messages: next_offset - first_offset,
            retained_bytes: self.retained_bytes(),
            published_bytes: self.published_bytes.load(Ordering::Relaxed),
            dedup_window: self.lock_settings().dedup_window,
            storage: self.storage,
        }
    }
}

/// The live topics by id: what the store's listener needs to find them.
#[derive(Default)]
pub(super) struct Topics {
    by_id: RwLock<HashMap<TopicId, Arc<Topic>>>,
}

impl Topics {
    pub(super) fn insert(&self, topic: Arc<Topic>) {
        self.write().insert(topic.id, topic);
    }

    pub(super) fn remove(&self, id: TopicId) {
        self.write().remove(&id);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicId, Arc<Topic>>> {
        self.by_id.write().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: TopicId) -> Option<Arc<Topic>> {
        let by_id = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        by_id.get(&id).cloned()
    }
}

impl StoreListener for Topics {
    fn appended(&self, topic: TopicId, appended: &Appended, messages: Vec<NewMessage>) {
        // A topic deleted meanwhile has nobody left to tell.
        if let Some(topic) = self.get(topic) {
            topic.appended(appended, messages);
        }
    }

    fn truncated(&self, topic: TopicId, first_offset: Offset, retained_bytes: u64) {
        if let Some(topic) = self.get(topic) {
            topic.truncated(first_offset, retained_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::TopicName;
    use bytes::Bytes;
    use bytestring::ByteString;
    use std::time::Duration;

    fn topic() -> Topic {
        Topic::new(&TopicRecord {
            id: TopicId(1),
            name: TopicName::new("t").unwrap(),
            first_offset: 0,
            next_offset: 0,
            created: SystemTime::UNIX_EPOCH,
            settings: TopicSettings::default(),
            retained_bytes: 0,
            storage: StorageClass::Disk,
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

    fn appended_at(first_offset: Offset) -> Appended {
        Appended {
            first_offset,
            publish_time: SystemTime::UNIX_EPOCH,
            retained_bytes: 0,
            duplicates: Vec::new(),
        }
    }

    #[test]
    fn the_tail_is_cached_only_while_streams_are_open() {
        let topic = topic();
        topic.appended(&appended_at(0), batch(2, 10));
        assert!(
            topic
                .cached_range(
                    &(0..2),
                    ReadLimit {
                        max_messages: 9,
                        max_bytes: 9
                    }
                )
                .is_none()
        );
        topic.stream_opened();
        topic.appended(&appended_at(2), batch(3, 10));
        let (found, missing) = topic.cached([3, 4, 5].into_iter());
        assert_eq!(found.iter().map(|m| m.offset).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(missing, [5]);
        assert_eq!(topic.head(), 5, "the head follows every append");
        topic.stream_closed();
        assert_eq!(
            topic.cached([3].into_iter()).1,
            [3],
            "cleared with the last stream"
        );
    }

    #[test]
    fn the_tail_cache_drops_its_oldest_messages_past_its_bounds() {
        let topic = topic();
        topic.stream_opened();
        let big = TAIL_CACHE_BYTES / 4;
        topic.appended(&appended_at(0), batch(6, big));
        let (found, missing) = topic.cached(0..6);
        assert!(found.len() < 6 && found.iter().all(|m| m.offset >= 2));
        assert!(missing.contains(&0));
        assert!(found.iter().any(|m| m.offset == 5), "the newest stays");
    }

    #[test]
    fn cached_ranges_are_bounded_and_truncation_drops_what_is_gone() {
        let topic = topic();
        topic.stream_opened();
        topic.appended(&appended_at(0), batch(10, 100));
        let limit = |max_messages, max_bytes| ReadLimit {
            max_messages,
            max_bytes,
        };
        let offsets = |read: Option<Vec<StoredMessage>>| {
            read.map(|r| r.iter().map(|m| m.offset).collect::<Vec<_>>())
        };
        assert_eq!(
            offsets(topic.cached_range(&(2..9), limit(3, usize::MAX))),
            Some(vec![2, 3, 4])
        );
        // Each message is 132 bytes on the wire: the one that reaches the
        // byte budget is the last.
        assert_eq!(
            offsets(topic.cached_range(&(2..9), limit(99, 200))),
            Some(vec![2, 3])
        );
        assert_eq!(
            offsets(topic.cached_range(&(2..9), limit(99, 0))),
            Some(vec![2])
        );
        topic.truncated(4, 0);
        assert_eq!(topic.first_offset(), 4);
        assert!(topic.cached_range(&(2..9), limit(99, usize::MAX)).is_none());
        assert_eq!(topic.info().first_offset, 4);
        topic.truncated(1, 0);
        assert_eq!(topic.first_offset(), 4, "never moves down");
    }

    #[test]
    fn messages_past_the_age_limit_are_dropped_from_reads_before_they_are_deleted() {
        let topic = topic();
        let now = SystemTime::now();
        let at = |age: u64| StoredMessage {
            offset: age,
            publish_time: now - Duration::from_secs(age),
            payload: Bytes::new(),
            key: String::new(),
            attributes: Vec::new(),
            id: ByteString::new(),
            deliver_at: None,
        };
        let mut messages = vec![at(7200), at(60), at(0)];
        topic.drop_expired(&mut messages);
        assert_eq!(messages.len(), 3, "no age limit: everything stays");
        topic.set_settings(TopicSettings {
            retention: Retention {
                max_age: Some(Duration::from_secs(3600)),
                ..Retention::default()
            },
            ..TopicSettings::default()
        });
        topic.drop_expired(&mut messages);
        let offsets: Vec<Offset> = messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [60, 0], "the one published two hours ago is gone");
    }
}
