//! Remembered message ids, in the `dedup` column family: topic id ‖ id →
//! the offset of the message stored with the id, and when it was stored.
//!
//! The writer looks ids up before it gives offsets out and writes new ones
//! in the same batch as their messages, so an id is remembered exactly
//! when its message is stored, across crashes too. An id older than its
//! topic's dedup window is forgotten: lookups ignore it at once, and a
//! compaction filter drops it from disk when compaction next reaches its
//! file; files are compacted at least every [`PERIODIC_COMPACTION`], so
//! what is kept stays bounded by the window, not by history. A deleted
//! topic's ids go with it, in one range deletion.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rocksdb::compaction_filter::Decision;
use rocksdb::{ColumnFamily, DB};

use super::engine;
use crate::offsets::Offset;
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

/// Whether an id stored at `stored_micros` is still remembered at `now`
/// under `window`.
fn remembered(stored_micros: u64, window: Duration, now: SystemTime) -> bool {
    let window = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    stored_micros.saturating_add(window) > codec::to_micros(now)
}

/// The compaction filter of the `dedup` family: drops ids past their
/// topic's window. Ids of a topic it does not know (not loaded yet) and
/// values it cannot read are kept: forgetting one too early would store a
/// duplicate, keeping one too long only costs a few bytes.
pub(super) fn compaction_filter(
    windows: Windows,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, key, value| {
        let (Ok(topic), Ok((_, stored))) = (
            codec::dedup_key_topic(key),
            codec::decode_remembered_id(value),
        ) else {
            return Decision::Keep;
        };
        match windows.get(topic) {
            Some(window) if !remembered(stored, window, SystemTime::now()) => Decision::Remove,
            _ => Decision::Keep,
        }
    }
}

/// The offsets of the messages stored with `ids` in `topic`, where they are
/// still remembered under `window` at `now`; `None` for ids not stored or
/// forgotten. One lookup for them all.
pub(super) fn look_up(
    db: &DB,
    family: &ColumnFamily,
    topic: TopicId,
    ids: &[&str],
    window: Duration,
    now: SystemTime,
) -> StoreResult<Vec<Option<Offset>>> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| codec::dedup_key(topic, id)).collect();
    let found = db.batched_multi_get_cf(family, &keys, false);
    found
        .into_iter()
        .map(|value| {
            let value = value.map_err(|e| engine("looking up message ids", e))?;
            let Some(value) = value else {
                return Ok(None);
            };
            let (offset, stored) = codec::decode_remembered_id(&value)?;
            Ok(remembered(stored, window, now).then_some(offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_remembered_for_its_window_and_not_a_microsecond_longer() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let micros = codec::to_micros(stored);
        let window = Duration::from_secs(120);
        let just_before = stored + window - Duration::from_micros(1);
        assert!(remembered(micros, window, just_before));
        assert!(!remembered(micros, window, stored + window));
        assert!(!remembered(micros, Duration::ZERO, stored));
    }

    #[test]
    fn the_filter_drops_expired_ids_of_known_topics_only() {
        let windows = Windows::default();
        windows.set(TopicId(1), Duration::from_secs(60));
        let mut filter = compaction_filter(windows);
        let long_ago = codec::encode_remembered_id(7, SystemTime::UNIX_EPOCH);
        let now = codec::encode_remembered_id(7, SystemTime::now());
        let known = codec::dedup_key(TopicId(1), "a");
        let unknown = codec::dedup_key(TopicId(2), "a");
        assert!(matches!(filter(0, &known, &long_ago), Decision::Remove));
        assert!(matches!(filter(0, &known, &now), Decision::Keep));
        assert!(matches!(filter(0, &unknown, &long_ago), Decision::Keep));
        assert!(matches!(filter(0, &known, b"junk"), Decision::Keep));
    }
}
