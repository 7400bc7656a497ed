//! Remembered message ids of disk topics.
//!
//! The writer answers "was this id stored within the window?" from memory:
//! each topic's [`Remembered`] maps a 128-bit hash of every id stored
//! within its dedup window to the offset stored with it, and forgets ids
//! in the order they were stored as the window passes them. An id is
//! remembered as soon as its append is staged (so a repeat later in the
//! same group commit is caught) and forgotten again if the write fails.
//! What one append stored is also written, in the same batch as its
//! messages, to the `dedup` column family — one entry per append, not per
//! id: topic id ‖ time stored ‖ first offset → the ids' hashes with their
//! offsets (20 bytes an id). So an id is remembered exactly when its
//! message is stored, across crashes too: at start the writer reads the
//! entries within each topic's window back.
//!
//! Memory is 70 to 140 bytes per remembered id (24-byte slots of a table
//! kept at most half full, plus 32 bytes in the storing order; both double
//! as they grow), times the window times the rate of messages with ids: a
//! window of 2 minutes at 10 000 such messages a second holds 1.2 million
//! ids, up to 170 MiB. Entries past their
//! topic's window are dropped from disk by a compaction filter when
//! compaction reaches their file; files are compacted at least every
//! [`PERIODIC_COMPACTION`], so what is kept stays bounded by the window,
//! not by history. A deleted topic's entries go with it, in one range
//! deletion.
//!
//! Hashes stand for ids: two different ids with the same 128-bit hash
//! would be taken for one, with odds far below those of a disk error. The
//! hash (XXH3) is not keyed: a publisher that knows another's future id
//! could in principle craft a colliding one; ids are trusted as much as
//! the publishers that send them.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rocksdb::compaction_filter::Decision;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::{column, engine};
use crate::offsets::Offset;
use table::IdTable;

mod table;
use crate::storage::{StoreResult, TopicId, codec};

/// The column family of remembered ids.
pub(super) const CF_DEDUP: &str = "dedup";

/// Files of remembered ids are compacted (and their expired ids dropped)
/// at least this often, even when nothing else would compact them.
pub(super) const PERIODIC_COMPACTION: Duration = Duration::from_secs(60 * 60);

/// Each topic's dedup window, shared by the writer, which keeps it
/// current, and the compaction filter, which forgets ids past it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Windows(Arc<RwLock<HashMap<TopicId, Duration>>>);

impl Windows {
    pub(super) fn set(&self, topic: TopicId, window: Duration) {
        let mut windows = self.0.write().unwrap_or_else(PoisonError::into_inner);
        windows.insert(topic, window);
    }

    pub(super) fn remove(&self, topic: TopicId) {
        let mut windows = self.0.write().unwrap_or_else(PoisonError::into_inner);
        windows.remove(&topic);
    }

    fn get(&self, topic: TopicId) -> Option<Duration> {
        let windows = self.0.read().unwrap_or_else(PoisonError::into_inner);
        windows.get(&topic).copied()
    }
}

/// A window in microseconds.
fn micros(window: Duration) -> u64 {
    u64::try_from(window.as_micros()).unwrap_or(u64::MAX)
}

/// Whether an id stored at `stored` (microseconds) is still remembered at
/// `now` under `window`.
fn remembered(stored: u64, window: Duration, now: u64) -> bool {
    stored.saturating_add(micros(window)) > now
}

/// The hash that stands for an id: XXH3's 128 bits, an algorithm fixed
/// by its specification, so hashes stored by one build are those of the
/// next.
pub(super) fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The compaction filter of the `dedup` family: drops entries past their
/// topic's window. Entries of a topic it does not know (not loaded yet)
/// and keys it cannot read are kept: forgetting one too early would store
/// a duplicate, keeping one too long only costs a few bytes.
pub(super) fn compaction_filter(
    windows: Windows,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, key, _value| {
        let Ok((topic, stored, _)) = codec::decode_timed_key("remembered ids key", key) else {
            return Decision::Keep;
        };
        let now = codec::to_micros(SystemTime::now());
        match windows.get(topic) {
            Some(window) if !remembered(stored, window, now) => Decision::Remove,
            _ => Decision::Keep,
        }
    }
}

/// Hashes keys that are hashes already: takes their low bits as they
/// are, instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; anything else is folded in.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// A map keyed by id hashes.
pub(super) type ByIdHash<V> = HashMap<u128, V, BuildHasherDefault<AlreadyHashed>>;

/// The ids one topic remembers, in memory.
#[derive(Debug, Default)]
pub(super) struct Remembered {
    /// Id hash → the offset stored with it.
    table: IdTable,
    /// What was stored, in order: when (microseconds), id hash, offset.
    order: VecDeque<(u64, u128, Offset)>,
    /// Reused by [`expire`](Self::expire).
    expired: Vec<(u128, Offset)>,
}

impl Remembered {
    /// Fetches the slots of `ids` into the cache together; see `table`.
    pub(super) fn touch(&self, ids: impl IntoIterator<Item = u128>) {
        self.table.touch(ids);
    }

    /// The offset stored with `id`. Within the window of the last
    /// [`expire`](Self::expire), since that forgot every id past it.
    #[cfg(test)]
    pub(super) fn get(&self, id: u128) -> Option<Offset> {
        self.table.get(id)
    }

    /// Remembers `id`, stored with `offset` at `stored` (microseconds),
    /// unless it is remembered already: then the offset stored with it.
    pub(super) fn insert_new(
        &mut self,
        id: u128,
        offset: Offset,
        stored: u64,
    ) -> Result<(), Offset> {
        self.table.insert_new(id, offset)?;
        self.order.push_back((stored, id, offset));
        Ok(())
    }

    /// Remembers `id`, stored with `offset` at `stored`, in place of what
    /// it was stored with before (reading back, oldest first).
    fn insert(&mut self, id: u128, offset: Offset, stored: u64) {
        self.table.insert(id, offset);
        self.order.push_back((stored, id, offset));
    }

    /// Forgets `id` if it is still the one stored with `offset` (its
    /// write failed).
    pub(super) fn forget(&mut self, id: u128, offset: Offset) {
        self.table.remove(id, offset);
    }

    /// Forgets the ids stored longer than `window` before `now`.
    pub(super) fn expire(&mut self, window: Duration, now: u64) {
        self.expired.clear();
        while let Some(&(stored, id, offset)) = self.order.front() {
            if remembered(stored, window, now) {
                break;
            }
            self.order.pop_front();
            self.expired.push((id, offset));
        }
        self.table.touch(self.expired.iter().map(|&(id, _)| id));
        for &(id, offset) in &self.expired {
            // Stored again since (or forgotten): the table holds another
            // offset or none, and that stays.
            self.table.remove(id, offset);
        }
    }

    /// How many ids it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Reads back what `topic` stored within `window` of `now`.
pub(super) fn load(
    db: &DB,
    topic: TopicId,
    window: Duration,
    now: SystemTime,
) -> StoreResult<Remembered> {
    let mut ids = Remembered::default();
    if window.is_zero() {
        return Ok(ids);
    }
    let family = column(db, CF_DEDUP)?;
    let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let start = codec::timed_key(topic, since, 0);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound((topic.0 + 1).to_be_bytes().to_vec());
    let mode = IteratorMode::From(&start, Direction::Forward);
    for item in db.iterator_cf_opt(family, options, mode) {
        let (key, value) = item.map_err(|e| engine("reading remembered ids", e))?;
        let (_, stored, first) = codec::decode_timed_key("remembered ids key", &key)?;
        for (id, offset) in codec::decode_ids(first, &value)? {
            ids.insert(id, offset, stored);
        }
    }
    ids.expire(window, codec::to_micros(now));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_remembered_for_its_window_and_not_a_microsecond_longer() {
        let window = Duration::from_secs(120);
        let mut ids = Remembered::default();
        let a = id_hash("a");
        assert_eq!(ids.insert_new(a, 7, 1_000), Ok(()));
        ids.expire(window, 1_000 + 120_000_000 - 1);
        assert_eq!(ids.insert_new(a, 8, 1_000 + 120_000_000 - 1), Err(7));
        assert_eq!(ids.get(id_hash("b")), None);
        ids.expire(window, 1_000 + 120_000_000);
        assert_eq!(ids.get(a), None);
        assert_eq!(ids.insert_new(a, 9, 1_000 + 120_000_000), Ok(()));
        assert_ne!(id_hash("a"), id_hash("b"));
    }

    #[test]
    fn expiry_forgets_in_storing_order_and_keeps_an_id_stored_again() {
        let window = Duration::from_micros(100);
        let mut ids = Remembered::default();
        let (a, b, c) = (id_hash("a"), id_hash("b"), id_hash("c"));
        ids.insert(a, 1, 0);
        ids.insert(b, 2, 50);
        ids.insert(a, 3, 90);
        assert_eq!(ids.insert_new(c, 4, 95), Ok(()));
        ids.forget(c, 4);
        ids.expire(window, 120);
        assert_eq!(ids.get(a), Some(3), "stored again at 90");
        assert_eq!((ids.get(b), ids.get(c)), (Some(2), None));
        ids.expire(window, 160);
        assert_eq!((ids.get(b), ids.len()), (None, 1));
        ids.expire(window, 200);
        assert_eq!((ids.len(), ids.order.len()), (0, 0));
    }

    #[test]
    fn the_filter_drops_expired_entries_of_known_topics_only() {
        let windows = Windows::default();
        windows.set(TopicId(1), Duration::from_secs(60));
        let mut filter = compaction_filter(windows);
        let long_ago = codec::timed_key(TopicId(1), SystemTime::UNIX_EPOCH, 0);
        let now = codec::timed_key(TopicId(1), SystemTime::now(), 0);
        let unknown = codec::timed_key(TopicId(2), SystemTime::UNIX_EPOCH, 0);
        assert!(matches!(filter(0, &long_ago, b""), Decision::Remove));
        assert!(matches!(filter(0, &now, b""), Decision::Keep));
        assert!(matches!(filter(0, &unknown, b""), Decision::Keep));
        assert!(matches!(filter(0, b"junk", b""), Decision::Keep));
    }
}
