//! The read side of [`RocksStore`](super::RocksStore): the catalog at
//! start, message reads by range and by offset, heads, and the search by
//! publish time. Blocking functions over `&DB`, run by the store on
//! `spawn_blocking`; each iterator lives for one call. Nothing here writes.

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::{
    CF_MESSAGES, CF_META, CF_SUBSCRIPTIONS, FIRST_PREFIX, HEAD_PREFIX, SUBSCRIPTION_PREFIX,
    TOPIC_PREFIX, column, engine, meta_key,
};
use crate::offsets::{AckState, Offset};
use crate::storage::codec;
use crate::storage::{
    Catalog, DeadLetters, DeliveryRecord, ReadLimit, StorageClass, StoreError, StoreResult,
    StoredMessage, StoredSubscription, SubscriptionId, SubscriptionRecord, TopicId, TopicRecord,
};

/// Reads every topic and subscription.
pub(super) fn load_catalog(db: &DB) -> StoreResult<Catalog> {
    let meta = column(db, CF_META)?;
    let mut topics = Vec::new();
    let mut heads = HashMap::new();
    let mut firsts = HashMap::new();
    let mut records = Vec::new();
    for item in db.iterator_cf(meta, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| engine("reading metadata", e))?;
        match key.split_first() {
            Some((&TOPIC_PREFIX, _)) => topics.push(value),
            Some((&HEAD_PREFIX, id)) => {
                let id = codec::decode_u64("topic head key", id)?;
                heads.insert(id, codec::decode_head(&value)?);
            }
            Some((&FIRST_PREFIX, id)) => {
                let id = codec::decode_u64("first offset key", id)?;
                firsts.insert(id, codec::decode_u64("first offset", &value)?);
            }
            Some((&SUBSCRIPTION_PREFIX, _)) => records.push(codec::decode_subscription(&value)?),
            _ => {}
        }
    }
    let topics = topics
        .iter()
        .map(|value| {
            let record = codec::decode_topic(value, 0, 0)?;
            let (head, bytes) = heads.get(&record.id.0).copied().ok_or_else(|| {
                codec::corrupt("topic head", format!("topic {:?} has no head", record.id))
            })?;
            // A memory topic's head is the offset it starts at, empty.
            let memory = record.storage == StorageClass::Memory;
            // Topics written before first offsets were stored start at 0.
            let first = match memory {
                true => head,
                false => firsts.get(&record.id.0).copied().unwrap_or(0).min(head),
            };
            // Heads written before retained bytes were kept: counted once.
            let retained_bytes = match bytes {
                _ if memory => 0,
                Some(bytes) => bytes,
                None => trim_point(db, record.id, first, head, u64::MAX)?.1,
            };
            Ok(TopicRecord {
                first_offset: first,
                next_offset: head,
                retained_bytes,
                ..record
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let subscriptions = load_delivery_states(db, records)?;
    Ok(Catalog {
        topics,
        subscriptions,
    })
}

/// Pairs each subscription with its stored ack state and delivery records,
/// read in one pass over the `subscriptions` family.
pub(super) fn load_delivery_states(
    db: &DB,
    records: Vec<SubscriptionRecord>,
) -> StoreResult<Vec<StoredSubscription>> {
    let mut acks: HashMap<SubscriptionId, AckState> = HashMap::new();
    let mut deliveries: HashMap<SubscriptionId, Vec<(Offset, DeliveryRecord)>> = HashMap::new();
    let mut dead: HashMap<SubscriptionId, DeadLetters> = HashMap::new();
    let states = column(db, CF_SUBSCRIPTIONS)?;
    for item in db.iterator_cf(states, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| engine("reading ack states", e))?;
        let id = SubscriptionId(codec::decode_u64(
            "ack state key",
            key.get(..8).unwrap_or(&key),
        )?);
        match key.len() {
            8 => {
                acks.insert(id, codec::decode_ack_state(&value)?);
            }
            9 => {
                dead.insert(id, codec::decode_dead_letters(&value)?);
            }
            16 => {
                let offset = codec::decode_u64("delivery record key", &key[8..])?;
                let record = codec::decode_delivery(&value)?;
                deliveries.entry(id).or_default().push((offset, record));
            }
            len => {
                let detail = format!("a key of {len} bytes in the subscriptions family");
                return Err(codec::corrupt("ack state key", detail));
            }
        }
    }
    records
        .into_iter()
        .map(|record| {
            let acks = acks.remove(&record.id).ok_or_else(|| {
                codec::corrupt(
                    "ack state",
                    format!("subscription {:?} has no ack state", record.id),
                )
            })?;
            let deliveries = deliveries.remove(&record.id).unwrap_or_default();
            let dead_letters = dead.remove(&record.id).unwrap_or_default();
            Ok(StoredSubscription {
                record,
                acks,
                deliveries,
                dead_letters,
            })
        })
        .collect()
}

pub(super) fn read_messages(
    db: &DB,
    topic: TopicId,
    range: Range<Offset>,
    limit: ReadLimit,
) -> StoreResult<Vec<StoredMessage>> {
    let mut out = Vec::new();
    if limit.max_messages == 0 || range.is_empty() {
        return Ok(out);
    }
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(codec::message_key(topic, range.end));
    let start = codec::message_key(topic, range.start);
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
        bytes += message.wire_size();
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

/// The first and next offset of a topic, from storage.
/// Where a trim that starts at `first` ends: past every message below
/// `before`, then on until at least `drop_bytes` are counted (or `head`).
/// Returns that offset and the stored bytes of the messages before it.
pub(super) fn trim_point(
    db: &DB,
    topic: TopicId,
    first: Offset,
    before: Offset,
    drop_bytes: u64,
) -> StoreResult<(Offset, u64)> {
    let head = read_bounds(db, topic)?.end;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(codec::message_key(topic, head));
    let start = codec::message_key(topic, first);
    let iter = db.iterator_cf_opt(
        column(db, CF_MESSAGES)?,
        options,
        IteratorMode::From(&start, Direction::Forward),
    );
    let mut end = first;
    let mut bytes = 0;
    for item in iter {
        let (key, value) = item.map_err(|e| engine("measuring messages", e))?;
        let offset = codec::message_key_offset(&key)?;
        if offset >= before && bytes >= drop_bytes {
            break;
        }
        bytes += codec::stored_size(value.len());
        end = offset + 1;
    }
    Ok((end.max(before.min(head)), bytes))
}

/// A topic's first offset: every offset below it was deleted.
pub(super) fn first_offset(db: &DB, topic: TopicId) -> StoreResult<Offset> {
    Ok(read_bounds(db, topic)?.start)
}

fn read_bounds(db: &DB, topic: TopicId) -> StoreResult<Range<Offset>> {
    let meta = column(db, CF_META)?;
    let get = |prefix| {
        db.get_pinned_cf(meta, meta_key(prefix, topic.0))
            .map_err(|e| engine("reading a topic head", e))
    };
    let head = match get(HEAD_PREFIX)? {
        Some(value) => codec::decode_head(&value)?.0,
        None => return Err(StoreError::TopicNotFound(topic)),
    };
    let first = get(FIRST_PREFIX)?
        .map(|v| codec::decode_u64("first offset", &v))
        .transpose()?
        .unwrap_or(0);
    Ok(first.min(head)..head)
}

/// The offset and publish time of the first message at or after `offset`
/// and below `end`.
fn first_message_from(
    db: &DB,
    topic: TopicId,
    offset: Offset,
    end: Offset,
) -> StoreResult<Option<(Offset, SystemTime)>> {
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(codec::message_key(topic, end));
    let start = codec::message_key(topic, offset);
    let mut iter = db.iterator_cf_opt(
        column(db, CF_MESSAGES)?,
        options,
        IteratorMode::From(&start, Direction::Forward),
    );
    let Some(item) = iter.next() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(|e| engine("reading a message", e))?;
    let found = codec::message_key_offset(&key)?;
    Ok(Some((found, codec::decode_publish_time(&value)?)))
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

/// Binary search over the topic's offsets: publish times never decrease
/// along offsets. Each probe seeks to the first message at or after the
/// middle, so offsets without a message (deleted, or never used) cost
/// nothing and cannot mislead the search.
pub(super) fn find_offset_at_time(
    db: &DB,
    topic: TopicId,
    time: SystemTime,
) -> StoreResult<Offset> {
    let bounds = read_bounds(db, topic)?;
    let (mut low, mut high) = (bounds.start, bounds.end);
    // Retention asks every second whether anything expired; mostly nothing.
    match first_message_from(db, topic, low, high)? {
        Some((_, published)) if published >= time => return Ok(low),
        None => return Ok(low),
        Some(_) => {}
    }
    while low < high {
        let mid = low + (high - low) / 2;
        match first_message_from(db, topic, mid, high)? {
            // Every message from `mid` on is at or after `time`.
            Some((_, published)) if published >= time => high = mid,
            Some((found, _)) => low = found + 1,
            // Nothing stored in `mid..high`: the answer is at most `mid`.
            None => high = mid,
        }
    }
    Ok(low)
}
