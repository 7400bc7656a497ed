//! [`RamLog`]: the messages of one memory topic
//! ([`StorageClass::Memory`](super::StorageClass::Memory)), the ids they
//! were published with and the topic's head, held in memory.
//!
//! An append that needs nothing written to disk is made here at once, from
//! the caller's task, under the log's lock: [`RamLog::append_now`]. Every
//! other change (a commit's appends, trims, settings, deletion, and an
//! append that needs a new offset mark stored) is the store's writer's,
//! which *claims* the log first ([`RamLog::claim`]): while a claim is held,
//! `append_now` appends nothing and hands its append to the writer (with a
//! claim of its own), so that the writer's changes and the appends queued
//! behind them keep their order. The writer applies its changes once the
//! rest of the write they belong to is on disk, and lets go of its claims
//! once their callers are answered. Readers read under the same short
//! lock. The log does no I/O and names no storage engine.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    Appended, Duplicate, NewMessage, ReadLimit, Retention, StoreListener, StoredMessage, TopicId,
    codec,
};
use crate::offsets::Offset;

/// A message of a log with its size as stored (what `retained_bytes`
/// counts).
#[derive(Debug, Clone)]
pub(crate) struct RamMessage {
    pub(crate) message: StoredMessage,
    pub(crate) size: u64,
}

impl RamMessage {
    /// `message` stored at `offset` and `publish_time`, with its size.
    pub(crate) fn new(message: &NewMessage, offset: Offset, publish_time: SystemTime) -> Self {
        let size = codec::stored_size(codec::encoded_len(message, publish_time));
        Self {
            message: message.stored_at(offset, publish_time),
            size,
        }
    }
}

/// The messages, ids and head of one memory topic.
#[derive(Debug, Default)]
pub(crate) struct RamLog(Mutex<LogState>);

#[derive(Debug)]
struct LogState {
    /// In offset order, from `first_offset` on.
    messages: VecDeque<RamMessage>,
    first_offset: Offset,
    next_offset: Offset,
    retained_bytes: u64,
    /// The publish time of the last message; the next is never earlier.
    last_publish: SystemTime,
    /// The offset mark stored on disk: no offset at or above it was handed
    /// out, and `append_now` hands out none.
    reserved: Offset,
    /// A higher mark was asked for and is not written yet.
    reserving: bool,
    /// How long ids are remembered.
    dedup_window: Duration,
    /// The topic's bound.
    retention: Retention,
    /// Claims held on the log (see the module's doc): while any is,
    /// appends go through the writer.
    claims: usize,
    /// The topic was deleted.
    deleted: bool,
    /// Remembered ids: the offset stored with each, and when.
    ids: HashMap<String, (Offset, SystemTime)>,
    /// The same ids in the order they were stored, which is the order of
    /// their times: the oldest are forgotten first.
    stored: VecDeque<(SystemTime, String)>,
}

impl Default for LogState {
    fn default() -> Self {
        Self {
            messages: VecDeque::new(),
            first_offset: 0,
            next_offset: 0,
            retained_bytes: 0,
            last_publish: UNIX_EPOCH,
            reserved: 0,
            reserving: false,
            dedup_window: Duration::ZERO,
            retention: Retention::default(),
            claims: 0,
            deleted: false,
            ids: HashMap::new(),
            stored: VecDeque::new(),
        }
    }
}

/// The head of a log as it stands, which the writer takes over when it
/// claims the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogHead {
    pub(crate) first_offset: Offset,
    pub(crate) next_offset: Offset,
    pub(crate) retained_bytes: u64,
    pub(crate) last_publish: SystemTime,
}

/// A claim on a log: while it is held, appends go through the writer.
/// Dropping it lets go.
#[derive(Debug)]
pub(crate) struct Claim(Arc<RamLog>);

impl Drop for Claim {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.claims = state.claims.saturating_sub(1);
    }
}

/// What [`RamLog::append_now`] did.
#[derive(Debug)]
pub(crate) enum AppendNow {
    /// Appended (the listener was told); `reserve` asks the caller to have
    /// a higher offset mark stored, which the log now counts on.
    Appended { appended: Appended, reserve: bool },
    /// Not appended: the writer must do it, with the claim taken for it.
    ViaWriter(Vec<NewMessage>, Claim),
    /// The topic was deleted.
    Deleted,
}

/// What a writer changes in a log in one step: its new head and settings,
/// the messages appended (those below `first_offset` are dropped at once)
/// and the ids stored with them.
#[derive(Debug)]
pub(crate) struct LogChange {
    pub(crate) head: LogHead,
    /// The offset mark now stored.
    pub(crate) reserved: Offset,
    pub(crate) appended: Vec<RamMessage>,
    pub(crate) ids: Vec<(String, Offset, SystemTime)>,
    /// How long ids are remembered.
    pub(crate) window: Duration,
    pub(crate) retention: Retention,
}

impl Default for LogChange {
    fn default() -> Self {
        Self {
            head: LogHead {
                first_offset: 0,
                next_offset: 0,
                retained_bytes: 0,
                last_publish: UNIX_EPOCH,
            },
            reserved: 0,
            appended: Vec::new(),
            ids: Vec::new(),
            window: Duration::ZERO,
            retention: Retention::default(),
        }
    }
}

impl RamLog {
    /// An empty log whose next message gets `next_offset`, which is the
    /// stored mark; ids are remembered for `dedup_window`, and `retention`
    /// bounds it.
    pub(crate) fn starting_at(
        next_offset: Offset,
        dedup_window: Duration,
        retention: Retention,
    ) -> Self {
        Self(Mutex::new(LogState {
            first_offset: next_offset,
            next_offset,
            reserved: next_offset,
            dedup_window,
            retention,
            ..LogState::default()
        }))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // Every change is made in one step under the lock; a panic in a
        // reader cannot leave it half done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its first offset, next offset and retained bytes.
    pub(crate) fn bounds(&self) -> (Offset, Offset, u64) {
        let state = self.lock();
        (state.first_offset, state.next_offset, state.retained_bytes)
    }

    /// Its next offset.
    pub(crate) fn next_offset(&self) -> Offset {
        self.lock().next_offset
    }

    /// Claims the log for the writer and returns its head as it stands:
    /// nothing but the writer changes it until the claim is dropped.
    pub(crate) fn claim(self: &Arc<Self>) -> (Claim, LogHead) {
        let mut state = self.lock();
        state.claims += 1;
        (Claim(Arc::clone(self)), state.head())
    }

    /// Appends `messages` of `topic` now, unless a claim is held or they
    /// need offsets beyond the stored mark; tells `listener` about them
    /// (and about messages the topic's bound dropped) before it lets go of
    /// the lock, so that it hears of every topic's appends in offset order.
    /// `reserve_ahead`: how far below the mark a higher one is asked for.
    pub(crate) fn append_now(
        self: &Arc<Self>,
        topic: TopicId,
        messages: Vec<NewMessage>,
        listener: Option<&dyn StoreListener>,
        reserve_ahead: u64,
    ) -> AppendNow {
        let mut state = self.lock();
        if state.deleted {
            return AppendNow::Deleted;
        }
        let wanted = state.next_offset.saturating_add(messages.len() as u64);
        if state.claims > 0 || wanted > state.reserved {
            state.claims += 1;
            return AppendNow::ViaWriter(messages, Claim(Arc::clone(self)));
        }
        let mut appended = state.append(&messages);
        let dropped_from = state.first_offset;
        state.drop_beyond_bound();
        appended.retained_bytes = state.retained_bytes;
        if let Some(listener) = listener {
            listener.appended(topic, &appended, appended.stored(messages));
            if state.first_offset > dropped_from {
                listener.truncated(topic, state.first_offset, state.retained_bytes);
            }
        }
        let reserve =
            !state.reserving && state.next_offset.saturating_add(reserve_ahead) > state.reserved;
        state.reserving |= reserve;
        AppendNow::Appended { appended, reserve }
    }

    /// Applies a writer's change.
    pub(crate) fn apply(&self, change: LogChange) {
        let mut state = self.lock();
        let first = change.head.first_offset;
        let below = state.messages.partition_point(|m| m.message.offset < first);
        state.messages.drain(..below);
        let kept = change.appended.into_iter();
        state
            .messages
            .extend(kept.filter(|m| m.message.offset >= first));
        state.first_offset = first;
        state.next_offset = change.head.next_offset;
        state.retained_bytes = change.head.retained_bytes;
        state.last_publish = change.head.last_publish;
        state.reserved = state.reserved.max(change.reserved);
        state.dedup_window = change.window;
        state.retention = change.retention;
        for (id, offset, stored) in change.ids {
            state.ids.insert(id.clone(), (offset, stored));
            state.stored.push_back((stored, id));
        }
        state.forget_ids(change.window, SystemTime::now());
    }

    /// A higher offset mark asked for by [`RamLog::append_now`] was written
    /// (`Some`, the mark) or not (`None`; a later append asks again).
    pub(crate) fn reserved(&self, mark: Option<Offset>) {
        let mut state = self.lock();
        state.reserving = false;
        if let Some(mark) = mark {
            state.reserved = state.reserved.max(mark);
        }
    }

    /// The topic was deleted: appends are refused from now on.
    pub(crate) fn delete(&self) {
        self.lock().deleted = true;
    }

    /// The offset of the message stored with `id`, if it was stored less
    /// than `window` before `now`.
    pub(crate) fn remembered(&self, id: &str, window: Duration, now: SystemTime) -> Option<Offset> {
        let state = self.lock();
        let &(offset, stored) = state.ids.get(id)?;
        (stored + window > now).then_some(offset)
    }

    /// The size as stored of the message at `offset`, if the log holds it.
    pub(crate) fn size_at(&self, offset: Offset) -> Option<u64> {
        let state = self.lock();
        let at = state
            .messages
            .binary_search_by_key(&offset, |m| m.message.offset)
            .ok()?;
        Some(state.messages[at].size)
    }

    /// Calls `each` with the offset and stored size of every message from
    /// `offset` on, oldest first, while it returns true: one lock and one
    /// search for a whole run, where [`size_at`](Self::size_at) costs both
    /// per message.
    pub(crate) fn sizes_from(&self, offset: Offset, mut each: impl FnMut(Offset, u64) -> bool) {
        let state = self.lock();
        let start = state
            .messages
            .partition_point(|m| m.message.offset < offset);
        for sized in state.messages.range(start..) {
            if !each(sized.message.offset, sized.size) {
                break;
            }
        }
    }

    /// The messages with offsets in `range`, within `limit`.
    pub(crate) fn read(&self, range: Range<Offset>, limit: ReadLimit) -> Vec<StoredMessage> {
        let mut out = Vec::new();
        if limit.max_messages == 0 || range.is_empty() {
            return out;
        }
        let state = self.lock();
        let start = state
            .messages
            .partition_point(|m| m.message.offset < range.start);
        let mut bytes = 0;
        for sized in state.messages.range(start..) {
            if sized.message.offset >= range.end {
                break;
            }
            bytes += sized.message.wire_size();
            out.push(sized.message.clone());
            if out.len() >= limit.max_messages || bytes >= limit.max_bytes {
                break;
            }
        }
        out
    }

    /// The messages at `offsets` (ascending) that the log holds.
    pub(crate) fn read_offsets(&self, offsets: &[Offset]) -> Vec<StoredMessage> {
        let state = self.lock();
        offsets
            .iter()
            .filter_map(|&offset| {
                let at = state
                    .messages
                    .binary_search_by_key(&offset, |m| m.message.offset)
                    .ok()?;
                Some(state.messages[at].message.clone())
            })
            .collect()
    }

    /// The lowest offset from which every message was published at or
    /// after `time`: the first offset when all were, the next offset when
    /// none was.
    pub(crate) fn offset_at_time(&self, time: SystemTime) -> Offset {
        let state = self.lock();
        let before = state
            .messages
            .partition_point(|m| m.message.publish_time < time);
        if before == 0 {
            return state.first_offset;
        }
        state
            .messages
            .get(before)
            .map_or(state.next_offset, |m| m.message.offset)
    }
}

impl LogState {
    fn head(&self) -> LogHead {
        LogHead {
            first_offset: self.first_offset,
            next_offset: self.next_offset,
            retained_bytes: self.retained_bytes,
            last_publish: self.last_publish,
        }
    }

    /// Appends `messages` at the next offset, leaving out those whose id
    /// was stored within the dedup window (earlier, or earlier in the
    /// same call).
    fn append(&mut self, messages: &[NewMessage]) -> Appended {
        let now = codec::truncate_to_micros(SystemTime::now());
        let publish_time = now.max(self.last_publish);
        let window = self.dedup_window;
        if !window.is_zero() {
            self.forget_ids(window, publish_time);
        }
        let mut appended = Appended {
            first_offset: self.next_offset,
            publish_time,
            retained_bytes: self.retained_bytes,
            duplicates: Vec::new(),
        };
        let mut offset = self.next_offset;
        for (index, message) in messages.iter().enumerate() {
            if !message.id.is_empty() && !window.is_zero() {
                if let Some(&(original, _)) = self.ids.get(&*message.id) {
                    appended.duplicates.push(Duplicate {
                        index,
                        offset: original,
                    });
                    continue;
                }
                self.ids
                    .insert(message.id.to_string(), (offset, publish_time));
                self.stored
                    .push_back((publish_time, message.id.to_string()));
            }
            let stored = RamMessage::new(message, offset, publish_time);
            self.retained_bytes += stored.size;
            self.messages.push_back(stored);
            offset += 1;
        }
        if offset > self.next_offset {
            self.next_offset = offset;
            self.last_publish = publish_time;
        }
        appended
    }

    /// Drops the oldest messages while the topic holds more than its
    /// bound allows.
    fn drop_beyond_bound(&mut self) {
        while self
            .retention
            .memory_exceeded(self.next_offset - self.first_offset, self.retained_bytes)
        {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.retained_bytes = self.retained_bytes.saturating_sub(oldest.size);
            self.first_offset = oldest.message.offset + 1;
        }
    }

    /// Forgets the ids stored `window` or longer before `now`.
    fn forget_ids(&mut self, window: Duration, now: SystemTime) {
        while let Some((stored, _)) = self.stored.front() {
            if *stored + window > now {
                break;
            }
            if let Some((_, id)) = self.stored.pop_front()
                && self.ids.get(&id).is_some_and(|&(_, at)| at + window <= now)
            {
                self.ids.remove(&id);
            }
        }
    }
}

/// The logs of a store's memory topics by topic id, shared by its writer,
/// which adds and removes them, and its readers.
#[derive(Debug, Clone, Default)]
pub(crate) struct RamLogs(Arc<RwLock<HashMap<TopicId, Arc<RamLog>>>>);

impl RamLogs {
    /// The log of `topic`, when it is a live memory topic.
    pub(crate) fn get(&self, topic: TopicId) -> Option<Arc<RamLog>> {
        let logs = self.0.read().unwrap_or_else(PoisonError::into_inner);
        logs.get(&topic).cloned()
    }

    /// Sets (`Some`) or removes (`None`) the log of `topic`.
    pub(crate) fn set(&self, topic: TopicId, log: Option<Arc<RamLog>>) {
        let mut logs = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match log {
            Some(log) => logs.insert(topic, log),
            None => logs.remove(&topic),
        };
    }
}

#[cfg(test)]
mod tests;
