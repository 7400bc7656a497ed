//! Offsets and the acknowledgement state of a subscription.
//!
//! [`AckState`] is what a subscription persists: an ack floor below which
//! every offset is acknowledged, and the acknowledged offsets above it kept as
//! ranges, so that a long run of acknowledgements above one slow message costs
//! one range, not one entry per message. It knows nothing of leases or
//! streams; those live in memory in the broker.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

/// A message's position in its topic. Offsets start at 0 and grow by one per
/// message; they are never reused. Offsets below a topic's first offset
/// were deleted, and an engine may leave offsets unused, so a topic's
/// offsets need not be dense.
pub type Offset = u64;

/// A hash map keyed by offsets (or other small integer ids), with a hasher
/// made for them: one multiplication instead of SipHash. The keys come
/// from the broker, not from clients, so there is no flooding to defend
/// against, and the delivery path looks offsets up several times per
/// message.
pub type OffsetMap<V> = HashMap<Offset, V, BuildHasherDefault<OffsetHasher>>;

/// The hasher of [`OffsetMap`]: Fibonacci hashing of a `u64`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for offsets; stay correct for anything.
        for &byte in bytes {
            self.write_u64(u64::from(byte) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (value ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A set of offsets kept as disjoint, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetRanges {
    /// start -> end (exclusive); ranges neither overlap nor touch.
    ranges: BTreeMap<Offset, Offset>,
    len: u64,
}

impl OffsetRanges {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of offsets in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `offset` is in the set.
    pub fn contains(&self, offset: Offset) -> bool {
        self.containing(offset).is_some()
    }

    /// The range holding `offset`, if any.
    pub fn containing(&self, offset: Offset) -> Option<Range<Offset>> {
        self.ranges
            .range(..=offset)
            .next_back()
            .filter(|&(_, &end)| offset < end)
            .map(|(&start, &end)| start..end)
    }

    /// The start of the first range that begins above `offset`.
    pub fn next_start_after(&self, offset: Offset) -> Option<Offset> {
        use std::ops::Bound;
        self.ranges
            .range((Bound::Excluded(offset), Bound::Unbounded))
            .next()
            .map(|(&start, _)| start)
    }

    /// Adds `offset`; returns false when it was already there.
    pub fn insert(&mut self, offset: Offset) -> bool {
        if self.contains(offset) {
            return false;
        }
        let end = offset + 1;
        let mut start = offset;
        let mut new_end = end;
        // Merge with a range that ends exactly at `offset`.
        if let Some((&s, &e)) = self.ranges.range(..offset).next_back()
            && e == offset
        {
            start = s;
        }
        // Merge with a range that starts exactly at `offset + 1`.
        if let Some(e) = self.ranges.remove(&end) {
            new_end = e;
        }
        self.ranges.insert(start, new_end);
        self.len += 1;
        true
    }

    /// Removes `offset`, splitting its range; returns false when it was not
    /// there.
    pub fn remove(&mut self, offset: Offset) -> bool {
        let Some(range) = self.containing(offset) else {
            return false;
        };
        self.ranges.remove(&range.start);
        if range.start < offset {
            self.ranges.insert(range.start, offset);
        }
        if offset + 1 < range.end {
            self.ranges.insert(offset + 1, range.end);
        }
        self.len -= 1;
        true
    }

    /// Builds a set from ranges in ascending order that are non-empty and
    /// neither overlap nor touch, as [`OffsetRanges::ranges`] yields them.
    /// Returns `None` for any other input (a corrupt stored set).
    pub fn from_sorted_ranges(ranges: impl IntoIterator<Item = Range<Offset>>) -> Option<Self> {
        let mut set = Self::new();
        let mut last_end = None;
        for r in ranges {
            if r.start >= r.end || last_end.is_some_and(|e| r.start <= e) {
                return None;
            }
            last_end = Some(r.end);
            set.len += r.end - r.start;
            set.ranges.insert(r.start, r.end);
        }
        Some(set)
    }

    /// The first range, if any.
    pub fn first(&self) -> Option<Range<Offset>> {
        self.ranges.first_key_value().map(|(&s, &e)| s..e)
    }

    /// Removes and returns the first range.
    pub fn pop_first(&mut self) -> Option<Range<Offset>> {
        let (s, e) = self.ranges.pop_first()?;
        self.len -= e - s;
        Some(s..e)
    }

    /// The ranges in ascending order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<Offset>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// The number of ranges, which is what storing the set costs.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

/// The persisted acknowledgement state of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    /// Every offset below the floor is acknowledged (or was never wanted, for
    /// a subscription that started later).
    pub floor: Offset,
    /// Acknowledged offsets at or above the floor. Never contains `floor`
    /// itself: the floor advances over it instead.
    pub acked: OffsetRanges,
}

impl AckState {
    /// A state with nothing acknowledged at or above `floor`.
    pub fn starting_at(floor: Offset) -> Self {
        Self {
            floor,
            acked: OffsetRanges::new(),
        }
    }

    /// Whether `offset` is acknowledged.
    pub fn is_acked(&self, offset: Offset) -> bool {
        offset < self.floor || self.acked.contains(offset)
    }

    /// Acknowledges `offset` and advances the floor over every acknowledged
    /// offset that now follows it. Returns false when it was acknowledged
    /// already.
    pub fn ack(&mut self, offset: Offset) -> bool {
        if offset < self.floor || !self.acked.insert(offset) {
            return false;
        }
        while let Some(first) = self.acked.first() {
            if first.start != self.floor {
                break;
            }
            self.acked.pop_first();
            self.floor = first.end;
        }
        true
    }

    /// Takes back the acknowledgement of `offset` (to deliver it again):
    /// below the floor, the floor comes down to it and the offsets between
    /// stay acknowledged. Returns false when it was not acknowledged.
    pub fn unack(&mut self, offset: Offset) -> bool {
        if offset >= self.floor {
            return self.acked.remove(offset);
        }
        if offset + 1 < self.floor {
            let mut acked = OffsetRanges::new();
            acked.ranges.insert(offset + 1, self.floor);
            acked.len = self.floor - offset - 1;
            for range in self.acked.ranges() {
                // Ranges never touch the floor, so they stay apart.
                acked.len += range.end - range.start;
                acked.ranges.insert(range.start, range.end);
            }
            self.acked = acked;
        }
        self.floor = offset;
        true
    }

    /// Moves the floor up to `floor` (offsets below it were deleted, say):
    /// they count as acknowledged. Returns whether the floor moved.
    pub fn advance_floor(&mut self, floor: Offset) -> bool {
        if floor <= self.floor {
            return false;
        }
        self.floor = floor;
        while let Some(first) = self.acked.first() {
            if first.start > self.floor {
                break;
            }
            self.acked.pop_first();
            self.floor = self.floor.max(first.end);
        }
        true
    }

    /// How many offsets below `head` are not acknowledged.
    pub fn unacked_below(&self, head: Offset) -> u64 {
        let acked_below_head: u64 = self
            .acked
            .ranges()
            .take_while(|r| r.start < head)
            .map(|r| r.end.min(head) - r.start)
            .sum();
        head.saturating_sub(self.floor)
            .saturating_sub(acked_below_head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_on_both_sides() {
        let mut set = OffsetRanges::new();
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(set.range_count(), 2);
        assert!(set.insert(6));
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![5..8]);
        assert!(!set.insert(6));
        assert_eq!(set.len(), 3);
        assert!(set.contains(7) && !set.contains(8) && !set.contains(4));
    }

    #[test]
    fn from_sorted_ranges_rejects_overlap_and_disorder() {
        let set = OffsetRanges::from_sorted_ranges([1..3, 5..9]).unwrap();
        assert_eq!(set.len(), 6);
        assert!(OffsetRanges::from_sorted_ranges([1..3, 3..4]).is_none());
        assert!(OffsetRanges::from_sorted_ranges([5..6, 1..2]).is_none());
        assert!(OffsetRanges::from_sorted_ranges(std::iter::once(2..2)).is_none());
    }

    #[test]
    fn floor_advances_over_contiguous_acks() {
        let mut state = AckState::starting_at(10);
        assert!(state.ack(12));
        assert!(state.ack(11));
        assert_eq!(state.floor, 10);
        assert!(state.ack(10));
        assert_eq!(state.floor, 13);
        assert!(state.acked.is_empty());
        assert!(!state.ack(11), "acking below the floor is a no-op");
        assert!(state.is_acked(3));
    }

    #[test]
    fn ranges_are_found_by_offset_and_by_the_next_start() {
        let set = OffsetRanges::from_sorted_ranges([2..5, 9..10]).unwrap();
        assert_eq!(set.containing(4), Some(2..5));
        assert_eq!(set.containing(5), None);
        assert_eq!(set.containing(1), None);
        assert_eq!(set.next_start_after(2), Some(9));
        assert_eq!(set.next_start_after(0), Some(2));
        assert_eq!(set.next_start_after(9), None);
    }

    #[test]
    fn advancing_the_floor_swallows_the_ranges_it_reaches() {
        let mut state = AckState::starting_at(0);
        for offset in [3, 4, 7, 12] {
            state.ack(offset);
        }
        assert!(state.advance_floor(4));
        assert_eq!(state.floor, 5, "joined the range 3..5");
        assert_eq!(state.acked.ranges().collect::<Vec<_>>(), vec![7..8, 12..13]);
        assert!(!state.advance_floor(2), "never moves down");
        assert!(state.advance_floor(10));
        assert_eq!(state.acked.ranges().collect::<Vec<_>>(), vec![12..13]);
    }

    #[test]
    fn removing_splits_a_range() {
        let mut set = OffsetRanges::from_sorted_ranges([2..6, 9..10]).unwrap();
        assert!(set.remove(3));
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![2..3, 4..6, 9..10]);
        assert!(set.remove(9) && set.remove(2) && !set.remove(2));
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![4..6]);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn unacking_below_the_floor_lowers_it_and_keeps_the_rest_acked() {
        let mut state = AckState::starting_at(10);
        state.ack(12);
        assert!(state.unack(4));
        assert_eq!(state.floor, 4);
        assert_eq!(
            state.acked.ranges().collect::<Vec<_>>(),
            vec![5..10, 12..13]
        );
        assert_eq!(state.acked.len(), 6);
        assert!(!state.is_acked(4) && state.is_acked(3) && state.is_acked(9));
        assert!(!state.is_acked(10), "10 was never acknowledged");
        assert!(!state.unack(4), "not acknowledged any more");
        assert!(state.unack(12) && !state.is_acked(12));
        // Right below the floor: it just comes down.
        assert!(state.unack(3));
        assert_eq!(state.floor, 3);
        // Acking it again restores the floor over the range.
        assert!(state.ack(3) && state.ack(4));
        assert_eq!(state.floor, 10);
    }

    #[test]
    fn unacked_counts_gaps_below_head() {
        let mut state = AckState::starting_at(0);
        for offset in [1, 2, 5, 9] {
            state.ack(offset);
        }
        // 0, 3, 4, 6, 7 are unacked below 8; 9 is acked but above the head.
        assert_eq!(state.unacked_below(8), 5);
        assert_eq!(state.unacked_below(0), 0);
    }
}
