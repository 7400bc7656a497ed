//! The read side of [`RocksStore`](super::RocksStore): the catalog at
//! start, message reads by range and by offset, heads, and the search by
//! publish time. Blocking functions over `&DB`, run by the store on
//! `spawn_blocking`; each iterator lives for one call. Nothing here writes.

use std::time::SystemTime;

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::{
    CF_MESSAGES, CF_META, CF_SUBSCRIPTIONS, HEAD_PREFIX, SUBSCRIPTION_PREFIX, TOPIC_PREFIX, column,
    engine, meta_key, state_key,
};
use crate::offsets::{AckState, Offset};
use crate::storage::codec;
use crate::storage::{
    Catalog, ReadLimit, StoreError, StoreResult, StoredMessage, SubscriptionRecord, TopicId,
    TopicRecord,
};

/// Reads every topic and subscription.
pub(super) fn load_catalog(db: &DB) -> StoreResult<Catalog> {
    let meta = column(db, CF_META)?;
    let mut topics = Vec::new();
    let mut heads = std::collections::HashMap::new();
    let mut records = Vec::new();
    for item in db.iterator_cf(meta, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| engine("reading metadata", e))?;
        match key.split_first() {
            Some((&TOPIC_PREFIX, _)) => topics.push(value),
            Some((&HEAD_PREFIX, id)) => {
                let id = codec::decode_u64("topic head key", id)?;
                heads.insert(id, codec::decode_u64("topic head", &value)?);
            }
            Some((&SUBSCRIPTION_PREFIX, _)) => records.push(codec::decode_subscription(&value)?),
            _ => {}
        }
    }
    let topics = topics
        .iter()
        .map(|value| {
            let record = codec::decode_topic(value, 0)?;
            let head = heads.get(&record.id.0).copied().ok_or_else(|| {
                codec::corrupt("topic head", format!("topic {:?} has no head", record.id))
            })?;
            Ok(TopicRecord {
                next_offset: head,
                ..record
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let subscriptions = load_ack_states(db, records)?;
    Ok(Catalog {
        topics,
        subscriptions,
    })
}

/// Pairs each subscription with its stored ack state.
pub(super) fn load_ack_states(
    db: &DB,
    records: Vec<SubscriptionRecord>,
) -> StoreResult<Vec<(SubscriptionRecord, AckState)>> {
    let states = column(db, CF_SUBSCRIPTIONS)?;
    let keys = records.iter().map(|r| (states, state_key(r.id)));
    let values = db.multi_get_cf(keys);
    let mut subscriptions = Vec::with_capacity(records.len());
    for (record, value) in records.into_iter().zip(values) {
        let value = value.map_err(|e| engine("reading ack states", e))?;
        let value = value.ok_or_else(|| {
            codec::corrupt(
                "ack state",
                format!("subscription {:?} has no ack state", record.id),
            )
        })?;
        subscriptions.push((record, codec::decode_ack_state(&value)?));
    }
    Ok(subscriptions)
}

pub(super) fn read_messages(
    db: &DB,
    topic: TopicId,
    from: Offset,
    limit: ReadLimit,
) -> StoreResult<Vec<StoredMessage>> {
    let mut out = Vec::new();
    if limit.max_messages == 0 {
        return Ok(out);
    }
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(codec::message_key(topic, u64::MAX));
    let start = codec::message_key(topic, from);
    let iter = db.iterator_cf_opt(
        column(db, CF_MESSAGES)?,
        options,
        IteratorMode::From(&start, Direction::Forward),
    );
    let mut bytes = 0;
    for item in iter {
        let (key, value) = item.map_err(|e| engine("reading messages", e))?;
        let offset = codec::message_key_offset(&key)?;
        let message = codec::decode_message(offset, Bytes::from(value.into_vec()))?;
        bytes += message.payload.len();
        out.push(message);
        if out.len() >= limit.max_messages || bytes >= limit.max_bytes {
            break;
        }
    }
    Ok(out)
}

pub(super) fn read_at_offsets(
    db: &DB,
    topic: TopicId,
    offsets: Vec<Offset>,
) -> StoreResult<Vec<StoredMessage>> {
    let messages = column(db, CF_MESSAGES)?;
    let keys = offsets
        .iter()
        .map(|&o| (messages, codec::message_key(topic, o)));
    let values = db.multi_get_cf(keys);
    let mut out = Vec::with_capacity(offsets.len());
    for (offset, value) in offsets.into_iter().zip(values) {
        if let Some(value) = value.map_err(|e| engine("reading messages", e))? {
            out.push(codec::decode_message(offset, Bytes::from(value))?);
        }
    }
    Ok(out)
}

/// The head of a topic, from storage.
fn read_head(db: &DB, topic: TopicId) -> StoreResult<Offset> {
    let value = db
        .get_pinned_cf(column(db, CF_META)?, meta_key(HEAD_PREFIX, topic.0))
        .map_err(|e| engine("reading a topic head", e))?
        .ok_or(StoreError::TopicNotFound(topic))?;
    codec::decode_u64("topic head", &value)
}

/// The publish time of the message at `offset`, if there is one.
pub(super) fn publish_time_at(
    db: &DB,
    topic: TopicId,
    offset: Offset,
) -> StoreResult<Option<SystemTime>> {
    let value = db
        .get_pinned_cf(column(db, CF_MESSAGES)?, codec::message_key(topic, offset))
        .map_err(|e| engine("reading a message", e))?;
    value.map(|v| codec::decode_publish_time(&v)).transpose()
}

/// Binary search over `0..head`: publish times never decrease along
/// offsets. A missing message counts as published before `time`.
pub(super) fn find_offset_at_time(
    db: &DB,
    topic: TopicId,
    time: SystemTime,
) -> StoreResult<Offset> {
    let (mut low, mut high) = (0, read_head(db, topic)?);
    while low < high {
        let mid = low + (high - low) / 2;
        match publish_time_at(db, topic, mid)? {
            Some(published) if published >= time => high = mid,
            _ => low = mid + 1,
        }
    }
    Ok(low)
}
