//! The index of delayed messages, in the `delays` column family: topic id
//! ‖ due time ‖ offset → nothing. The writer adds an entry in the same
//! batch as its message and drops a topic's entries with the topic; the
//! broker reads the index a little ahead of time and drops what is due
//! ([`Store::forget_delayed`](crate::storage::Store::forget_delayed)), so
//! the index holds the future only, however long the log.

use std::time::SystemTime;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::{column, engine};
use crate::storage::codec;
use crate::storage::{DuePosition, StoreResult, TopicId};

/// The column family of the index.
pub(super) const CF_DELAYS: &str = "delays";

/// The entries of `topic` past `after` and due at or before `until`, in
/// order, at most `limit`.
pub(super) fn delayed(
    db: &DB,
    topic: TopicId,
    after: Option<DuePosition>,
    until: SystemTime,
    limit: usize,
) -> StoreResult<Vec<DuePosition>> {
    let family = column(db, CF_DELAYS)?;
    let start = match after {
        Some(after) => codec::delayed_key(topic, after.due, after.offset.saturating_add(1)),
        None => codec::delayed_key(topic, SystemTime::UNIX_EPOCH, 0),
    };
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end_of(topic, until).to_vec());
    let mode = IteratorMode::From(&start, Direction::Forward);
    let mut found = Vec::new();
    for item in db.iterator_cf_opt(family, options, mode) {
        if found.len() >= limit {
            break;
        }
        let (key, _) = item.map_err(|e| engine("reading delayed messages", e))?;
        let (due, offset) = codec::decode_delayed_key(&key)?;
        found.push(DuePosition { due, offset });
    }
    Ok(found)
}

/// How many entries of `topic` are due after `time`.
pub(super) fn count_delayed(db: &DB, topic: TopicId, time: SystemTime) -> StoreResult<u64> {
    let family = column(db, CF_DELAYS)?;
    let start = end_of(topic, time);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound((topic.0 + 1).to_be_bytes().to_vec());
    let mode = IteratorMode::From(&start, Direction::Forward);
    let mut count = 0;
    for item in db.iterator_cf_opt(family, options, mode) {
        item.map_err(|e| engine("counting delayed messages", e))?;
        count += 1;
    }
    Ok(count)
}

/// The first key past every entry of `topic` due at or before `time`.
pub(super) fn end_of(topic: TopicId, time: SystemTime) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&topic.0.to_be_bytes());
    let micros = codec::to_micros(time).saturating_add(1);
    key[8..].copy_from_slice(&micros.to_be_bytes());
    key
}
