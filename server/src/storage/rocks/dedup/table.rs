//! The table behind [`Remembered`](super::Remembered): which of the ids
//! it remembers has a given hash, by open addressing with linear probing.
//!
//! It exists for one cost. A topic publishing with ids remembers millions
//! of them, so its table is far larger than the processor's caches, and
//! every lookup or insert of a new id lands on a random cache line: a miss
//! to memory, on the writer thread (one per broker) that every group
//! commit waits for. So the table is small and says where its slots are.
//! A slot is one word: 32 bits of the id's hash (its tag) above the id's
//! sequence number in `Remembered`'s storing order, where the whole hash
//! and its offset are kept. A probe compares tags, and reads the storing
//! order only when a tag matches (for a repeated id, or one time in 2^31
//! for another): three slots in four fit in one cache line. And the
//! writer first [`touch`](IdTable::touch)es the slots of every id of an
//! append — loads that do not depend on each other, which the processor
//! overlaps — and then probes and inserts while those lines are in cache.
//!
//! Hashes are uniform already, so an id's tag is its hash's low 32 bits
//! with the top one set (a used slot is never zero), and its home slot is
//! the tag's low bits. The table keeps at most one id in two slots, so a
//! probe for an absent id ends after a slot or two; it doubles when
//! fuller and halves when less than an eighth full. Removal shifts the
//! entries that follow back (no tombstones), so lookups never slow down as
//! ids come and go. Growing or shrinking moves the ids a few at a time
//! with each insert and removal, not all at once: at tens of millions of
//! ids, moving them in one go held up every publish for seconds.

/// Slots in a table that has grown at all.
const MIN_SLOTS: usize = 1024;

/// The most slots a table has: homes come from a tag's low 31 bits.
const MAX_SLOTS: usize = 1 << 31;

/// The most ids a table holds; [`Remembered`](super::Remembered) forgets
/// its oldest early rather than hold more.
pub(super) const MAX_IDS: usize = MAX_SLOTS / 2;

/// Set in every tag, so that no used slot is zero.
const TAG_BIT: u32 = 1 << 31;

/// An id's tag: its hash's low bits, with [`TAG_BIT`] set.
pub(super) fn tag(hash: u128) -> u32 {
    hash as u32 | TAG_BIT
}

/// A tag above a sequence number.
type Slot = u64;

/// No id: a slot holding it is free.
const FREE: Slot = 0;

fn slot(tag: u32, seq: u32) -> Slot {
    u64::from(tag) << 32 | u64::from(seq)
}

fn tag_of(slot: Slot) -> u32 {
    (slot >> 32) as u32
}

fn seq_of(slot: Slot) -> u32 {
    slot as u32
}

/// Sequence number → id hash → offset; see the module docs.
#[derive(Debug, Default)]
pub(super) struct IdTable {
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
    /// Whether an id tagged `tag` may still be here: its home is past the
    /// runs moved so far (an id sits in the run that holds its home, and
    /// runs move whole).
    fn may_hold(&self, tag: u32) -> bool {
        let home = self.from.home(tag);
        let mask = self.from.mask();
        // Slots moved or passed: from just after `start` to `cursor`.
        let moved = self.cursor.wrapping_sub(self.start) & mask;
        let past = home.wrapping_sub(self.start) & mask;
        past == 0 || past > moved
    }
}

/// Slots [`Slots::touch`] fetches from an id's home on. A probe for a new
/// id, the common one, ends at the first free slot: at the table's fill of
/// a quarter to a half, at its home 75 to 50 times in a hundred, within
/// four slots 99 to 87 times (simulated); one that ran on past the line
/// `touch` had fetched stalled on a miss of its own.
const TOUCHED: usize = 4;

/// Slots looked at to move ids on each insert or removal. A table moves
/// when it is half full (or an eighth), so the move is done long before
/// the new slots fill up; while it lasts, a lookup may probe both arrays,
/// so it should not last long either.
const MOVE_STEP: usize = 16;

impl Slots {
    fn with_len(slots: usize) -> Self {
        Self {
            slots: vec![FREE; slots],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask()
    }

    /// Reads the slots a probe for `tag` most likely looks at: its home
    /// and the [`TOUCHED`] - 1 after it. Four slots are 32 bytes, so they
    /// span at most two cache lines, one holding the first and the other
    /// the last (but for the homes whose slots wrap around the table's
    /// end).
    fn touch(&self, tag: u32) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        let home = self.home(tag);
        self.slots[home] ^ self.slots[(home + TOUCHED - 1) & self.mask()]
    }

    /// The slot holding the id tagged `tag` for which `is` says yes to
    /// its sequence number, or the free slot that ends its probe.
    fn find(&self, tag: u32, is: impl Fn(u32) -> bool) -> (usize, bool) {
        let mut at = self.home(tag);
        loop {
            match self.slots[at] {
                FREE => return (at, false),
                slot if tag_of(slot) == tag && is(seq_of(slot)) => return (at, true),
                _ => at = (at + 1) & self.mask(),
            }
        }
    }

    fn get(&self, tag: u32, is: impl Fn(u32) -> bool) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        match self.find(tag, is) {
            (at, true) => Some(seq_of(self.slots[at])),
            (_, false) => None,
        }
    }

    /// Stores `seq` under `tag`, over the slot of the id `is` recognises
    /// if there is one; the caller made room.
    fn put(&mut self, tag: u32, seq: u32, is: impl Fn(u32) -> bool) {
        let (at, present) = self.find(tag, is);
        self.slots[at] = slot(tag, seq);
        self.len += usize::from(!present);
    }

    /// Removes the slot holding `seq` under `tag`; whether there was one.
    fn remove(&mut self, tag: u32, seq: u32) -> bool {
        if self.len == 0 {
            return false;
        }
        let (mut hole, present) = self.find(tag, |at| at == seq);
        if !present {
            return false;
        }
        // Shift back every later entry of the run whose home does not lie
        // strictly between the hole and it: a probe for it from its home
        // passes the hole, so the hole must not stay free.
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            let slot = self.slots[at];
            if slot == FREE {
                break;
            }
            let home = self.home(tag_of(slot));
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
        self.slots[hole] = FREE;
        self.len -= 1;
        true
    }
}

impl IdTable {
    /// How many ids it holds.
    pub(super) fn len(&self) -> usize {
        self.live.len + self.moving.as_ref().map_or(0, |m| m.from.len)
    }

    /// Reads the slots where each tag's probe will look, so that the
    /// probes that follow find them in cache: the loads are independent,
    /// so their misses overlap instead of queueing one behind another.
    pub(super) fn touch(&self, tags: impl IntoIterator<Item = u32>) {
        let mut seen = 0;
        for tag in tags {
            seen ^= self.live.touch(tag);
            if let Some(moving) = self.moving.as_ref().filter(|m| m.may_hold(tag)) {
                seen ^= moving.from.touch(tag);
            }
        }
        std::hint::black_box(seen);
    }

    /// The sequence number of the id tagged `tag` that `is` recognises.
    pub(super) fn get(&self, tag: u32, is: impl Fn(u32) -> bool + Copy) -> Option<u32> {
        self.live.get(tag, is).or_else(|| {
            self.moving
                .as_ref()
                .filter(|m| m.may_hold(tag))
                .and_then(|m| m.from.get(tag, is))
        })
    }

    /// Stores `seq` under `tag`, replacing the id `is` recognises if it
    /// is there.
    pub(super) fn put(&mut self, tag: u32, seq: u32, is: impl Fn(u32) -> bool + Copy) {
        if let Some(moving) = &mut self.moving
            && let Some(stored) = moving.from.get(tag, is)
        {
            moving.from.remove(tag, stored);
        }
        self.step();
        self.live.put(tag, seq, is);
    }

    /// Stores `seq` under `tag`, for an id the caller found absent.
    pub(super) fn put_new(&mut self, tag: u32, seq: u32) {
        self.step();
        self.live.put(tag, seq, |_| false);
    }

    /// Removes `seq` from under `tag`; whether it was there.
    pub(super) fn remove(&mut self, tag: u32, seq: u32) -> bool {
        let removed = self.live.remove(tag, seq)
            || self
                .moving
                .as_mut()
                .is_some_and(|m| m.from.remove(tag, seq));
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
        let len = self.len();
        let grow = (self.live.len + 1) * 2 > slots && slots < MAX_SLOTS;
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
            .position(|&slot| slot == FREE)
            .expect("a table is at most half full");
        self.moving = Some(Moving {
            from,
            start,
            cursor: start,
        });
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
            if slot == FREE {
                if budget == 0 {
                    return;
                }
            } else {
                moving.from.slots[at] = FREE;
                moving.from.len -= 1;
                // Not in `live` yet: it moves once, and nothing inserts
                // an id that is still here.
                self.live.put(tag_of(slot), seq_of(slot), |_| false);
            }
            budget = budget.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// What `Remembered` keeps for the table: each sequence number's hash.
    #[derive(Default)]
    struct Ids {
        table: IdTable,
        hashes: Vec<u128>,
    }

    impl Ids {
        fn get(&self, hash: u128) -> Option<u32> {
            let hashes = &self.hashes;
            self.table
                .get(tag(hash), |seq| hashes[seq as usize] == hash)
        }

        /// Stores `hash` under a new sequence number, replacing it if it
        /// is there; the number.
        fn put(&mut self, hash: u128) -> u32 {
            let seq = u32::try_from(self.hashes.len()).expect("small");
            self.hashes.push(hash);
            let hashes = &self.hashes;
            self.table
                .put(tag(hash), seq, |at| hashes[at as usize] == hash);
            seq
        }

        fn remove(&mut self, hash: u128, seq: u32) -> bool {
            self.table.remove(tag(hash), seq)
        }
    }

    /// Hashes that share their tag (and so their home slot in a table of
    /// any size), to make long runs, wrap-arounds and tag matches that are
    /// not the id on purpose.
    fn colliding(low: u32, n: u64) -> u128 {
        u128::from(low) | (u128::from(n + 1) << 64)
    }

    #[test]
    fn put_get_and_remove_agree_with_a_map_through_growth_and_shrinking() {
        let mut ids = Ids::default();
        let mut model = HashMap::new();
        // A fixed sequence of pseudo-random operations, biased to runs of
        // ids that share a tag (the cases the shifting has to get right).
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
                0 => colliding(u32::MAX - (roll % 3) as u32, roll % 50),
                1 => colliding((roll % 7) as u32, roll % 50),
                _ => u128::from(next()) << 64 | u128::from(next() % 5_000),
            };
            // Grow for the first half, then mostly remove.
            let removing = if round < 30_000 { 3 } else { 7 };
            if next() % 10 < removing {
                let seq = model.get(&hash).copied().unwrap_or(u32::MAX);
                assert_eq!(ids.remove(hash, seq), model.remove(&hash).is_some());
            } else {
                let seq = ids.put(hash);
                model.insert(hash, seq);
            }
            assert_eq!(ids.table.len(), model.len());
            assert_eq!(ids.get(hash), model.get(&hash).copied());
        }
        assert!(ids.table.live.slots.len() > MIN_SLOTS || model.len() * 2 <= MIN_SLOTS);
        for (&hash, &seq) in &model {
            assert_eq!(ids.get(hash), Some(seq), "{hash:x}");
        }
        for (hash, seq) in model.clone() {
            assert!(ids.remove(hash, seq));
        }
        assert_eq!(ids.table.len(), 0);
        assert!(ids.table.live.slots.len() <= 2 * MIN_SLOTS, "shrunk back");
        assert_eq!(ids.get(colliding(3, 1)), None);
    }

    #[test]
    fn a_remove_names_the_sequence_number_so_an_id_stored_again_stays() {
        let mut ids = Ids::default();
        let first = ids.put(7);
        let second = ids.put(7);
        assert_eq!(ids.table.len(), 1);
        assert!(!ids.remove(7, first), "stored again as {second}");
        assert_eq!(ids.get(7), Some(second));
        assert!(ids.remove(7, second));
        assert_eq!(ids.get(7), None);
    }

    #[test]
    fn ids_with_one_tag_are_told_apart_by_their_whole_hash() {
        let mut ids = Ids::default();
        let (a, b) = (colliding(5, 1), colliding(5, 2));
        assert_eq!(tag(a), tag(b));
        let seq = ids.put(a);
        assert_eq!(ids.get(b), None);
        let other = ids.put(b);
        assert_eq!((ids.get(a), ids.get(b)), (Some(seq), Some(other)));
        assert!(ids.remove(a, seq));
        assert!(!ids.remove(a, seq), "removed already");
        assert_eq!((ids.get(a), ids.get(b)), (None, Some(other)));
    }

    #[test]
    fn the_zero_hash_is_an_id_like_any_other() {
        let mut ids = Ids::default();
        assert_eq!(ids.get(0), None);
        let seq = ids.put(0);
        assert_eq!(ids.get(0), Some(seq));
        assert!(ids.remove(0, seq));
        assert_eq!(ids.table.len(), 0);
    }

    #[test]
    fn growing_moves_the_ids_a_few_at_a_time_and_loses_none() {
        let mut ids = Ids::default();
        let hash = |n: u64| u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let half = (MIN_SLOTS / 2) as u64;
        for n in 0..=half {
            assert_eq!(ids.put(hash(n)), n as u32);
        }
        // The insert past half full began a move and moved only a few.
        let moving = ids.table.moving.as_ref().expect("growing");
        assert!(moving.from.len > 400, "{} left to move", moving.from.len);
        assert_eq!(ids.table.live.slots.len(), 2 * MIN_SLOTS);
        let mut n = half + 1;
        while ids.table.moving.is_some() {
            assert_eq!(ids.get(hash(n)), None);
            ids.put(hash(n));
            n += 1;
        }
        assert!(n < 2 * half, "the move took {} inserts", n - half);
        for m in 0..n {
            assert_eq!(ids.get(hash(m)), Some(m as u32), "{m}");
        }
        assert_eq!(ids.table.len(), n as usize);
    }
}
