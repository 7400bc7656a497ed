//! [`RamLog`]: the messages of one memory topic
//! ([`StorageClass::Memory`](super::StorageClass::Memory)), and the ids
//! they were published with, held in memory.
//!
//! A store's writer changes a log (appends, drops its oldest messages,
//! remembers ids) once the rest of the write it belongs to is on disk;
//! readers read it under a short lock. It keeps no offsets of its own
//! beyond what the writer sets, does no I/O and names no storage engine.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::{ReadLimit, StoredMessage, TopicId};
use crate::offsets::Offset;

/// A message of a log with its size as stored (what `retained_bytes`
/// counts).
#[derive(Debug, Clone)]
pub(crate) struct RamMessage {
    pub(crate) message: StoredMessage,
    pub(crate) size: u64,
}

/// The messages and ids of one memory topic.
#[derive(Debug, Default)]
pub(crate) struct RamLog(Mutex<LogState>);

#[derive(Debug, Default)]
struct LogState {
    /// In offset order, from `first_offset` on.
    messages: VecDeque<RamMessage>,
    first_offset: Offset,
    next_offset: Offset,
    retained_bytes: u64,
    /// Remembered ids: the offset stored with each, and when.
    ids: HashMap<String, (Offset, SystemTime)>,
    /// The same ids in the order they were stored, which is the order of
    /// their times: the oldest are forgotten first.
    stored: VecDeque<(SystemTime, String)>,
}

/// What a writer changes in a log in one step: its new bounds, the
/// messages appended (those below `first_offset` are dropped at once) and
/// the ids stored with them.
#[derive(Debug, Default)]
pub(crate) struct LogChange {
    pub(crate) first_offset: Offset,
    pub(crate) next_offset: Offset,
    pub(crate) retained_bytes: u64,
    pub(crate) appended: Vec<RamMessage>,
    pub(crate) ids: Vec<(String, Offset, SystemTime)>,
    /// How long ids are remembered.
    pub(crate) window: Duration,
}

impl RamLog {
    /// An empty log whose next message gets `next_offset`.
    pub(crate) fn starting_at(next_offset: Offset) -> Self {
        Self(Mutex::new(LogState {
            first_offset: next_offset,
            next_offset,
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

    /// Applies a writer's change.
    pub(crate) fn apply(&self, change: LogChange) {
        let mut state = self.lock();
        let first = change.first_offset;
        let below = state.messages.partition_point(|m| m.message.offset < first);
        state.messages.drain(..below);
        let kept = change.appended.into_iter();
        state
            .messages
            .extend(kept.filter(|m| m.message.offset >= first));
        state.first_offset = first;
        state.next_offset = change.next_offset;
        state.retained_bytes = change.retained_bytes;
        for (id, offset, stored) in change.ids {
            state.ids.insert(id.clone(), (offset, stored));
            state.stored.push_back((stored, id));
        }
        state.forget_ids(change.window, SystemTime::now());
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
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sized(offset: Offset, publish_time: SystemTime, size: u64) -> RamMessage {
        RamMessage {
            message: StoredMessage {
                offset,
                publish_time,
                payload: Bytes::from(vec![b'x'; 10]),
                key: String::new(),
                attributes: Vec::new(),
                id: String::new(),
                deliver_at: None,
            },
            size,
        }
    }

    #[test]
    fn a_change_drops_below_its_first_offset_even_what_it_appends() {
        let log = RamLog::starting_at(10);
        let now = SystemTime::now();
        log.apply(LogChange {
            first_offset: 10,
            next_offset: 13,
            retained_bytes: 30,
            appended: (10..13).map(|o| sized(o, now, 10)).collect(),
            ..LogChange::default()
        });
        log.apply(LogChange {
            first_offset: 14,
            next_offset: 16,
            retained_bytes: 20,
            appended: (13..16).map(|o| sized(o, now, 10)).collect(),
            ..LogChange::default()
        });
        assert_eq!(log.bounds(), (14, 16, 20));
        assert_eq!(log.size_at(13), None);
        assert_eq!(log.size_at(15), Some(10));
        let all = ReadLimit {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
        };
        let offsets: Vec<Offset> = log.read(0..100, all).iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![14, 15]);
        let found = log.read_offsets(&[13, 15, 20]);
        assert_eq!(found.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![15]);
    }

    #[test]
    fn ids_are_forgotten_once_their_window_has_passed() {
        let log = RamLog::starting_at(0);
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let now = SystemTime::now();
        let window = Duration::from_secs(60);
        log.apply(LogChange {
            next_offset: 2,
            ids: vec![("old".to_owned(), 0, long_ago), ("new".to_owned(), 1, now)],
            window,
            ..LogChange::default()
        });
        assert_eq!(log.remembered("new", window, now), Some(1));
        assert_eq!(log.remembered("old", window, now), None);
        assert!(
            !log.lock().ids.contains_key("old"),
            "an expired id is gone from memory, not only ignored"
        );
    }

    #[test]
    fn offset_at_time_finds_the_first_message_at_or_after_it() {
        let log = RamLog::starting_at(5);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        log.apply(LogChange {
            first_offset: 5,
            next_offset: 8,
            appended: vec![sized(5, at(0), 1), sized(6, at(2), 1), sized(7, at(4), 1)],
            ..LogChange::default()
        });
        assert_eq!(log.offset_at_time(at(0)), 5);
        assert_eq!(log.offset_at_time(at(1)), 6);
        assert_eq!(log.offset_at_time(at(4)), 7);
        assert_eq!(log.offset_at_time(at(5)), 8);
    }
}
