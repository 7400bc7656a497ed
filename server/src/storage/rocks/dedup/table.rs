//! The table behind [`Remembered`](super::Remembered): id hashes to the
//! offsets stored with them, by open addressing with linear probing.
//!
//! It exists for one cost. A topic publishing with ids remembers millions
//! of them, so its table is far larger than the processor's caches, and
//! every lookup or insert of a new id lands on a random cache line: a miss
//! to memory, which on the writer thread (one per broker) held up every
//! group commit by about a third of a microsecond per message. A general
//! map hides where its slots are; this one can say, so the writer first
//! [`touch`](IdTable::touch)es the slot of every id of an append — loads
//! that do not depend on each other, which the processor overlaps — and
//! then probes and inserts while those lines are in cache.
//!
//! Keys are 128-bit hashes, uniform already, so a key's home slot is its
//! low bits. The table keeps at most one key in two slots, so a probe for
//! an absent key ends after a slot or two; it doubles when fuller and
//! halves when less than an eighth full. Removal shifts the entries that
//! follow back (no tombstones), so lookups never slow down as ids come and
//! go. Growing or shrinking moves the ids a few at a time with each insert
//! and removal, not all at once: at tens of millions of ids, moving them
//! in one go held up every publish for seconds.

use crate::offsets::Offset;

/// Slots in a table that has grown at all.
const MIN_SLOTS: usize = 1024;

/// An id hash as stored: two words, so a slot packs into 24 bytes.
type Key = [u64; 2];

/// No key: a slot holding it is free. The hash `0` is stored as `1`,
/// which joins two hashes in 2^128; see the module docs of `dedup` on
/// collisions.
const FREE: Key = [0, 0];

fn key(hash: u128) -> Key {
    match [hash as u64, (hash >> 64) as u64] {
        FREE => [1, 0],
        key => key,
    }
}

/// A key and its offset, as three words: an array of integers, so that a
/// new table's slots come from zeroed pages the system hands over as they
/// are first touched, instead of being written out all at once.
type Slot = [u64; 3];

const EMPTY: Slot = [0; 3];

fn slot(key: Key, offset: Offset) -> Slot {
    [key[0], key[1], offset]
}

fn key_of(slot: &Slot) -> Key {
    [slot[0], slot[1]]
}

fn offset_of(slot: &Slot) -> Offset {
    slot[2]
}

/// Id hash → offset; see the module docs.
#[derive(Debug, Default)]
pub(in crate::storage::rocks) struct IdTable {
    /// Where new ids go.
    live: Slots,
    /// While the table grows or shrinks: the slots it had, whose ids move
    /// to `live` a few at a time.
    moving: Option<Moving>,
}

/// One array of slots: open addressing with linear probing.
#[derive(Debug, Default)]
struct Slots {
    /// A power of two in length, or empty.
    slots: Vec<Slot>,
    len: usize,
}

/// The slots a table is moving away from. Ids move a whole run at a time
/// (a run: the slots between two free ones), in slot order from a free
/// slot: so every run not moved yet is whole, and a probe in it (or a
/// removal, which shifts only within its run) works as before. Nothing is
/// inserted here any more.
#[derive(Debug)]
struct Moving {
    from: Slots,
    /// The free slot where moving began, and ends.
    start: usize,
    /// The last slot moved or passed: free, and the end of a run.
    cursor: usize,
}

impl Moving {
    /// Whether `key` may still be here: its home is past the runs moved so
    /// far (a key sits in the run that holds its home, and runs move
    /// whole).
    fn may_hold(&self, key: Key) -> bool {
        let home = self.from.home(key);
        let mask = self.from.mask();
        // Slots moved or passed: from just after `start` to `cursor`.
        let moved = self.cursor.wrapping_sub(self.start) & mask;
        let past = home.wrapping_sub(self.start) & mask;
        past == 0 || past > moved
    }
}

/// Slots [`Slots::touch`] fetches from a key's home on. A probe for a new
/// id, the common one, ends at the first free slot: at the table's fill of
/// a quarter to a half, at its home 75 to 50 times in a hundred, within
/// three slots 96 to 81 times (simulated); one that ran on past the line
/// `touch` had fetched stalled on a miss of its own.
const TOUCHED: usize = 3;

/// Slots looked at to move ids on each insert or removal. A table moves
/// when it is half full (or an eighth), so the move is done long before
/// the new slots fill up; while it lasts, a lookup may probe both arrays,
/// so it should not last long either.
const MOVE_STEP: usize = 16;

impl Slots {
    fn with_len(slots: usize) -> Self {
        Self {
            slots: vec![EMPTY; slots],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: Key) -> usize {
        key[0] as usize & self.mask()
    }

    /// Reads the slots a probe for `key` most likely looks at: its home
    /// and the [`TOUCHED`] - 1 after it. Three slots are 72 bytes from a
    /// word boundary, so they span at most two cache lines, one holding
    /// their first word and the other their last (but for the two homes
    /// whose slots wrap around the table's end).
    fn touch(&self, key: Key) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        let home = self.home(key);
        let last = &self.slots[(home + TOUCHED - 1) & self.mask()];
        self.slots[home][0] ^ last[2]
    }

    /// The slot holding `key`, or the free slot that ends its probe.
    fn find(&self, key: Key) -> (usize, bool) {
        let mut at = self.home(key);
        loop {
            match key_of(&self.slots[at]) {
                k if k == key => return (at, true),
                FREE => return (at, false),
                _ => at = (at + 1) & self.mask(),
            }
        }
    }

    fn get(&self, key: Key) -> Option<Offset> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (at, true) => Some(offset_of(&self.slots[at])),
            (_, false) => None,
        }
    }

    /// Stores `slot`, over the slot with its key if there is one; the
    /// caller made room.
    fn put(&mut self, slot: Slot) {
        let (at, present) = self.find(key_of(&slot));
        self.slots[at] = slot;
        self.len += usize::from(!present);
    }

    /// Removes `key` if `offset` is stored with it; whether it did.
    fn remove(&mut self, key: Key, offset: Offset) -> bool {
        if self.len == 0 {
            return false;
        }
        let (mut hole, present) = self.find(key);
        if !present || offset_of(&self.slots[hole]) != offset {
            return false;
        }
        // Shift back every later entry of the run whose home does not lie
        // strictly between the hole and it: a probe for it from its home
        // passes the hole, so the hole must not stay free.
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            let slot = self.slots[at];
            if key_of(&slot) == FREE {
                break;
            }
            let home = self.home(key_of(&slot));
            let stays = if hole <= at {
                hole < home && home <= at
            } else {
                hole < home || home <= at
            };
            if !stays {
                self.slots[hole] = slot;
                hole = at;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

impl IdTable {
    /// How many ids it holds.
    #[cfg(test)]
    pub(in crate::storage::rocks) fn len(&self) -> usize {
        self.len_now()
    }

    /// Reads the slots where each hash's probe will look, so that the
    /// probes that follow find them in cache: the loads are independent,
    /// so their misses overlap instead of queueing one behind another.
    pub(in crate::storage::rocks) fn touch(&self, hashes: impl IntoIterator<Item = u128>) {
        let mut seen = 0;
        for hash in hashes {
            let key = key(hash);
            seen ^= self.live.touch(key);
            if let Some(moving) = self.moving.as_ref().filter(|m| m.may_hold(key)) {
                seen ^= moving.from.touch(key);
            }
        }
        std::hint::black_box(seen);
    }

    fn get_key(&self, key: Key) -> Option<Offset> {
        self.live.get(key).or_else(|| {
            self.moving
                .as_ref()
                .filter(|m| m.may_hold(key))
                .and_then(|m| m.from.get(key))
        })
    }

    /// The offset stored with `hash`.
    #[cfg(test)]
    pub(in crate::storage::rocks) fn get(&self, hash: u128) -> Option<Offset> {
        self.get_key(key(hash))
    }

    /// Stores `offset` with `hash`, unless `hash` is there already: then
    /// the offset stored with it, unchanged.
    pub(in crate::storage::rocks) fn insert_new(
        &mut self,
        hash: u128,
        offset: Offset,
    ) -> Result<(), Offset> {
        let key = key(hash);
        if let Some(stored) = self.get_key(key) {
            return Err(stored);
        }
        self.step();
        self.live.put(slot(key, offset));
        Ok(())
    }

    /// Stores `offset` with `hash`, replacing what was there.
    pub(in crate::storage::rocks) fn insert(&mut self, hash: u128, offset: Offset) {
        let key = key(hash);
        if let Some(moving) = &mut self.moving
            && let Some(stored) = moving.from.get(key)
        {
            moving.from.remove(key, stored);
        }
        self.step();
        self.live.put(slot(key, offset));
    }

    /// Removes `hash` if `offset` is stored with it; whether it did.
    pub(in crate::storage::rocks) fn remove(&mut self, hash: u128, offset: Offset) -> bool {
        let key = key(hash);
        let removed = self.live.remove(key, offset)
            || self
                .moving
                .as_mut()
                .is_some_and(|m| m.from.remove(key, offset));
        if removed {
            self.step();
        }
        removed
    }

    /// One step of the table's upkeep, before an insert or after a
    /// removal: moves a few ids if it is moving, starts moving to twice
    /// the slots when the live ones are half full (or to half when less
    /// than an eighth of them is used).
    fn step(&mut self) {
        if self.moving.is_some() {
            self.move_some(MOVE_STEP);
        }
        let slots = self.live.slots.len();
        let len = self.len_now();
        let grow = (self.live.len + 1) * 2 > slots;
        let shrink = slots > MIN_SLOTS && len * 8 < slots;
        if !grow && !shrink {
            return;
        }
        // A move still under way ends first (it rarely is: see MOVE_STEP).
        if self.moving.is_some() {
            self.move_some(usize::MAX);
        }
        let target = if grow {
            (slots * 2).max(MIN_SLOTS)
        } else {
            slots / 2
        };
        let from = std::mem::replace(&mut self.live, Slots::with_len(target));
        if from.len == 0 {
            return;
        }
        let start = from
            .slots
            .iter()
            .position(|slot| key_of(slot) == FREE)
            .expect("a table is at most half full");
        self.moving = Some(Moving {
            from,
            start,
            cursor: start,
        });
    }

    fn len_now(&self) -> usize {
        self.live.len + self.moving.as_ref().map_or(0, |m| m.from.len)
    }

    /// Moves the ids of at least `budget` slots' worth of whole runs to
    /// the live slots; ends the move when every run has moved.
    fn move_some(&mut self, mut budget: usize) {
        let Some(moving) = &mut self.moving else {
            return;
        };
        let mask = moving.from.mask();
        loop {
            let at = (moving.cursor + 1) & mask;
            if at == moving.start {
                self.moving = None;
                return;
            }
            moving.cursor = at;
            let slot = moving.from.slots[at];
            if key_of(&slot) == FREE {
                if budget == 0 {
                    return;
                }
            } else {
                moving.from.slots[at] = EMPTY;
                moving.from.len -= 1;
                self.live.put(slot);
            }
            budget = budget.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Hashes that share their home slot in a table of any size, to make
    /// long runs and wrap-arounds on purpose.
    fn colliding(home: u64, n: u64) -> u128 {
        u128::from(home) | (u128::from(n + 1) << 64)
    }

    #[test]
    fn insert_get_and_remove_agree_with_a_map_through_growth_and_shrinking() {
        let mut table = IdTable::default();
        let mut model = HashMap::new();
        // A fixed sequence of pseudo-random operations, biased to runs of
        // keys that share a home (the cases the shifting has to get right).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..60_000_u64 {
            let roll = next();
            let hash = match roll % 4 {
                0 => colliding(u64::MAX - roll % 3, roll % 50),
                1 => colliding(roll % 7, roll % 50),
                _ => u128::from(next()) << 64 | u128::from(next() % 5_000),
            };
            // Grow for the first half, then mostly remove.
            let removing = if round < 30_000 { 3 } else { 7 };
            if next() % 10 < removing {
                let offset = model.get(&hash).copied().unwrap_or(round);
                assert_eq!(table.remove(hash, offset), model.remove(&hash).is_some());
            } else if roll % 2 == 0 {
                let before = model.get(&hash).copied();
                assert_eq!(table.insert_new(hash, round).err(), before);
                model.entry(hash).or_insert(round);
            } else {
                table.insert(hash, round);
                model.insert(hash, round);
            }
            assert_eq!(table.len(), model.len());
            assert_eq!(table.get(hash), model.get(&hash).copied());
        }
        assert!(table.live.slots.len() > MIN_SLOTS || model.len() * 2 <= MIN_SLOTS);
        for (&hash, &offset) in &model {
            assert_eq!(table.get(hash), Some(offset), "{hash:x}");
        }
        for (hash, offset) in model.clone() {
            assert!(table.remove(hash, offset));
        }
        assert_eq!(table.len(), 0);
        assert!(table.live.slots.len() <= 2 * MIN_SLOTS, "shrunk back");
        assert_eq!(table.get(colliding(3, 1)), None);
    }

    #[test]
    fn a_remove_names_the_offset_so_an_id_stored_again_stays() {
        let mut table = IdTable::default();
        table.insert(7, 1);
        table.insert(7, 2);
        assert_eq!(table.len(), 1);
        assert!(!table.remove(7, 1), "stored again with 2");
        assert_eq!(table.get(7), Some(2));
        assert!(table.remove(7, 2));
        assert_eq!(table.get(7), None);
    }

    #[test]
    fn the_zero_hash_is_a_key_like_any_other() {
        let mut table = IdTable::default();
        assert_eq!(table.insert_new(0, 5), Ok(()));
        assert_eq!(table.insert_new(0, 6), Err(5));
        assert_eq!(table.get(0), Some(5));
        assert!(table.remove(0, 5));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn growing_moves_the_ids_a_few_at_a_time_and_loses_none() {
        let mut table = IdTable::default();
        let ids = |n: u64| u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let half = (MIN_SLOTS / 2) as u64;
        for n in 0..=half {
            assert_eq!(table.insert_new(ids(n), n), Ok(()));
        }
        // The insert past half full began a move and moved only a few.
        let moving = table.moving.as_ref().expect("growing");
        assert!(moving.from.len > 400, "{} left to move", moving.from.len);
        assert_eq!(table.live.slots.len(), 2 * MIN_SLOTS);
        let mut n = half + 1;
        while table.moving.is_some() {
            assert_eq!(table.insert_new(ids(n), n), Ok(()));
            n += 1;
        }
        assert!(n < 2 * half, "the move took {} inserts", n - half);
        for m in 0..n {
            assert_eq!(table.get(ids(m)), Some(m), "{m}");
            assert_eq!(table.insert_new(ids(m), 0), Err(m));
        }
        assert_eq!(table.len(), n as usize);
    }
}
