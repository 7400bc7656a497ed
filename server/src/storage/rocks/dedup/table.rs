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
//! halves when less than an eighth full. Removal shifts the entries that follow back
//! (no tombstones), so lookups never slow down as ids come and go.

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

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    offset: Offset,
}

const EMPTY: Slot = Slot {
    key: FREE,
    offset: 0,
};

/// Id hash → offset; see the module docs.
#[derive(Debug, Default)]
pub(in crate::storage::rocks) struct IdTable {
    /// A power of two in length, or empty.
    slots: Vec<Slot>,
    len: usize,
}

impl IdTable {
    /// How many ids it holds.
    #[cfg(test)]
    pub(in crate::storage::rocks) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: Key) -> usize {
        key[0] as usize & self.mask()
    }

    /// Reads the home slot of every hash, so that the probes that follow
    /// find them in cache: the loads are independent, so their misses
    /// overlap instead of queueing one behind another.
    pub(in crate::storage::rocks) fn touch(&self, hashes: impl IntoIterator<Item = u128>) {
        if self.slots.is_empty() {
            return;
        }
        let mut seen = 0;
        for hash in hashes {
            // Both ends: a slot of 24 bytes may straddle two cache lines.
            let slot = &self.slots[self.home(key(hash))];
            seen ^= slot.key[0] ^ slot.offset;
        }
        std::hint::black_box(seen);
    }

    /// The slot holding `key`, or the free slot that ends its probe.
    fn find(&self, key: Key) -> (usize, bool) {
        let mut at = self.home(key);
        loop {
            match self.slots[at].key {
                k if k == key => return (at, true),
                FREE => return (at, false),
                _ => at = (at + 1) & self.mask(),
            }
        }
    }

    /// The offset stored with `hash`.
    #[cfg(test)]
    pub(in crate::storage::rocks) fn get(&self, hash: u128) -> Option<Offset> {
        if self.len == 0 {
            return None;
        }
        match self.find(key(hash)) {
            (at, true) => Some(self.slots[at].offset),
            (_, false) => None,
        }
    }

    /// Stores `offset` with `hash`, unless `hash` is there already: then
    /// the offset stored with it, unchanged.
    pub(in crate::storage::rocks) fn insert_new(
        &mut self,
        hash: u128,
        offset: Offset,
    ) -> Result<(), Offset> {
        self.reserve_one();
        match self.find(key(hash)) {
            (at, true) => Err(self.slots[at].offset),
            (at, false) => {
                self.slots[at] = Slot {
                    key: key(hash),
                    offset,
                };
                self.len += 1;
                Ok(())
            }
        }
    }

    /// Stores `offset` with `hash`, replacing what was there.
    pub(in crate::storage::rocks) fn insert(&mut self, hash: u128, offset: Offset) {
        self.reserve_one();
        let (at, present) = self.find(key(hash));
        self.slots[at] = Slot {
            key: key(hash),
            offset,
        };
        self.len += usize::from(!present);
    }

    /// Removes `hash` if `offset` is stored with it; whether it did.
    pub(in crate::storage::rocks) fn remove(&mut self, hash: u128, offset: Offset) -> bool {
        if self.len == 0 {
            return false;
        }
        let (mut hole, present) = self.find(key(hash));
        if !present || self.slots[hole].offset != offset {
            return false;
        }
        // Shift back every later entry of the run whose home does not lie
        // strictly between the hole and it: a probe for it from its home
        // passes the hole, so the hole must not stay free.
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            let slot = self.slots[at];
            if slot.key == FREE {
                break;
            }
            let home = self.home(slot.key);
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
        if self.slots.len() > MIN_SLOTS && self.len * 8 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        true
    }

    /// Room for one more key at half load at most.
    fn reserve_one(&mut self) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; slots]);
        for slot in old.into_iter().filter(|slot| slot.key != FREE) {
            let (at, _) = self.find(slot.key);
            self.slots[at] = slot;
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
        }
        assert!(table.slots.len() > MIN_SLOTS || model.len() * 2 <= MIN_SLOTS);
        for (&hash, &offset) in &model {
            assert_eq!(table.get(hash), Some(offset), "{hash:x}");
        }
        for (hash, offset) in model.clone() {
            assert!(table.remove(hash, offset));
        }
        assert_eq!(
            (table.len(), table.slots.len()),
            (0, MIN_SLOTS),
            "shrunk back"
        );
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
}
