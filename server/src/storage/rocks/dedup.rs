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
//! Memory is 40 to 110 bytes per remembered id (8-byte slots of a table
//! kept between an eighth and half full, plus 24 bytes in the storing
//! order, which doubles as it grows), times the window times the rate of
//! messages with ids: a window of 2 minutes at 10 000 such messages a
//! second holds 1.2 million ids, up to 130 MiB. A topic remembers at most
//! 2^30 ids (tens of GiB of them); past that it forgets its oldest early.
//!
//! Entries past their topic's window are dropped from disk by a
//! compaction filter when compaction reaches their file; files are
//! compacted at least every [`PERIODIC_COMPACTION`], so what is kept stays
//! bounded by the window, not by history. A deleted topic's entries go
//! with it, in one range deletion.
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

/// The ids one topic remembers, in memory: in the order they were stored,
/// and in a table that finds one by its hash.
#[derive(Debug, Default)]
pub(super) struct Remembered {
    /// Which entry of `order` holds a hash: by sequence number.
    table: IdTable,
    order: Order,
    /// When `order`'s ids were stored, in runs: microseconds, and how many
    /// ids (an append's ids share their time).
    times: VecDeque<(u64, usize)>,
    /// Reused by [`expire`](Self::expire).
    expired: Vec<(u32, u32)>,
}

/// Remembered ids in the order they were stored, each by its sequence
/// number.
#[derive(Debug, Default)]
struct Order {
    /// Each id's hash and offset, oldest first, as three words (24 bytes,
    /// where a tuple would take 32).
    entries: VecDeque<[u64; 3]>,
    /// The sequence number of the first entry.
    first: u32,
}

impl Order {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn entry(&self, seq: u32) -> [u64; 3] {
        self.entries[seq.wrapping_sub(self.first) as usize]
    }

    fn offset(&self, seq: u32) -> Offset {
        self.entry(seq)[2]
    }

    /// Recognises `id`'s entry by its sequence number, for the table.
    fn is(&self, id: u128) -> impl Fn(u32) -> bool + Copy + '_ {
        move |seq| hash_of(self.entry(seq)) == id
    }

    /// Adds an entry; its sequence number.
    fn push(&mut self, id: u128, offset: Offset) -> u32 {
        let seq = self.first.wrapping_add(self.entries.len() as u32);
        self.entries
            .push_back([id as u64, (id >> 64) as u64, offset]);
        seq
    }

    /// Takes the first entry: its hash and sequence number.
    fn pop(&mut self) -> Option<(u128, u32)> {
        let entry = self.entries.pop_front()?;
        let seq = self.first;
        self.first = self.first.wrapping_add(1);
        Some((hash_of(entry), seq))
    }
}

/// The id hash an entry of [`Order`] holds.
fn hash_of(entry: [u64; 3]) -> u128 {
    u128::from(entry[0]) | u128::from(entry[1]) << 64
}

impl Remembered {
    /// Fetches the slots of `ids` into the cache together; see `table`.
    pub(super) fn touch(&self, ids: impl IntoIterator<Item = u128>) {
        self.table.touch(ids.into_iter().map(table::tag));
    }

    /// The sequence number of `id` if it is remembered.
    fn find(&self, id: u128) -> Option<u32> {
        self.table.get(table::tag(id), self.order.is(id))
    }

    /// The offset stored with `id`. Within the window of the last
    /// [`expire`](Self::expire), since that forgot every id past it.
    #[cfg(test)]
    pub(super) fn get(&self, id: u128) -> Option<Offset> {
        self.find(id).map(|seq| self.order.offset(seq))
    }

    /// Remembers `id`, stored with `offset` at `stored` (microseconds),
    /// unless it is remembered already: then the offset stored with it.
    pub(super) fn insert_new(
        &mut self,
        id: u128,
        offset: Offset,
        stored: u64,
    ) -> Result<(), Offset> {
        if let Some(seq) = self.find(id) {
            return Err(self.order.offset(seq));
        }
        let seq = self.push(id, offset, stored);
        self.table.put_new(table::tag(id), seq);
        Ok(())
    }

    /// Remembers `id`, stored with `offset` at `stored`, in place of what
    /// it was stored with before (reading back, oldest first).
    fn insert(&mut self, id: u128, offset: Offset, stored: u64) {
        let seq = self.push(id, offset, stored);
        self.table.put(table::tag(id), seq, self.order.is(id));
    }

    /// Adds `id` to the storing order; its sequence number.
    fn push(&mut self, id: u128, offset: Offset, stored: u64) -> u32 {
        if self.order.len() >= table::MAX_IDS {
            // A billion ids: forget the oldest early rather than reuse
            // sequence numbers.
            self.forget_oldest(1);
        }
        match self.times.back_mut() {
            Some((time, count)) if *time == stored => *count += 1,
            _ => self.times.push_back((stored, 1)),
        }
        self.order.push(id, offset)
    }

    /// Forgets `id` if it is still the one stored with `offset` (its
    /// write failed).
    pub(super) fn forget(&mut self, id: u128, offset: Offset) {
        if let Some(seq) = self.find(id)
            && self.order.offset(seq) == offset
        {
            self.table.remove(table::tag(id), seq);
        }
    }

    /// Forgets the ids stored longer than `window` before `now`.
    pub(super) fn expire(&mut self, window: Duration, now: u64) {
        let mut count = 0;
        for &(stored, ids) in &self.times {
            if remembered(stored, window, now) {
                break;
            }
            count += ids;
        }
        self.forget_oldest(count);
    }

    /// Forgets the `count` ids stored first.
    fn forget_oldest(&mut self, mut count: usize) {
        self.expired.clear();
        while count > 0 {
            let Some((_, ids)) = self.times.front_mut() else {
                break;
            };
            let taken = (*ids).min(count);
            *ids -= taken;
            count -= taken;
            if *ids == 0 {
                self.times.pop_front();
            }
            for (id, seq) in std::iter::from_fn(|| self.order.pop()).take(taken) {
                self.expired.push((table::tag(id), seq));
            }
        }
        self.table.touch(self.expired.iter().map(|&(tag, _)| tag));
        for &(tag, seq) in &self.expired {
            // Stored again since (or forgotten): the table holds another
            // sequence number or none, and that stays.
            self.table.remove(tag, seq);
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
        assert_eq!((ids.len(), ids.order.len(), ids.times.len()), (0, 0, 0));
    }

    #[test]
    fn ids_whose_hashes_share_their_low_bits_are_told_apart() {
        // The table keeps 32 bits of a hash; the rest is checked against
        // the storing order.
        let (a, b) = (5 | 1 << 64, 5 | 2 << 64);
        let mut ids = Remembered::default();
        assert_eq!(ids.insert_new(a, 1, 10), Ok(()));
        assert_eq!(ids.get(b), None);
        assert_eq!(ids.insert_new(b, 2, 10), Ok(()));
        assert_eq!(
            (ids.insert_new(a, 3, 11), ids.insert_new(b, 3, 11)),
            (Err(1), Err(2))
        );
        ids.forget(b, 2);
        assert_eq!((ids.get(a), ids.get(b)), (Some(1), None));
        assert_eq!(ids.insert_new(b, 4, 12), Ok(()));
        ids.expire(Duration::from_micros(2), 12);
        assert_eq!((ids.get(a), ids.get(b), ids.len()), (None, Some(4), 1));
        ids.expire(Duration::from_micros(2), 14);
        assert_eq!((ids.len(), ids.order.len(), ids.times.len()), (0, 0, 0));
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
