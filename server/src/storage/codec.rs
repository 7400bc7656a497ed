//! Binary encodings of what the stores keep as bytes: messages, ack states,
//! topic and subscription records, and the keys they are stored under.
//!
//! Every value starts with a format byte, so a later format can be told from
//! this one. Integers are big-endian; strings are a `u32` length and UTF-8
//! bytes. Decoding never panics and never trusts a length it has not checked:
//! bad bytes give [`StoreError::Corrupt`]. This module does no I/O and names
//! no storage engine.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{
    DEFAULT_DEDUP_WINDOW, DeliveryRecord, NewMessage, StorageClass, TopicRecord, TopicSettings,
};
use super::{
    DeadLetterPolicy, DeadLetters, PushConfig, RetryPolicy, StoreError, StoreResult, StoredMessage,
    SubscriptionId, SubscriptionRecord, SubscriptionSettings, TopicId,
};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset, OffsetRanges};

/// The format byte of every value this version writes, but messages with
/// an id.
const FORMAT_V1: u8 = 1;

/// The format byte of a message with fields V1 has not (an id, a delivery
/// time): after its attributes come tagged fields up to [`END_TAG`], then
/// the payload. Messages without them are still written as V1, a few
/// bytes shorter.
const MESSAGE_V2: u8 = 2;
/// Ends a message's tagged fields.
const END_TAG: u8 = 0;
/// Tag of a message's id.
const MESSAGE_ID_TAG: u8 = 1;
/// Tag of the time before which a message is delivered on no subscription.
const DELIVER_AT_TAG: u8 = 2;

/// The length of a message key: topic id and offset, big-endian.
pub(crate) const MESSAGE_KEY_LEN: usize = 16;

/// Microseconds since the Unix epoch; times before it count as 0.
pub(crate) fn to_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `time` rounded down to what the codec keeps (whole microseconds), so that
/// a value handed to a caller equals the one decoded later.
pub(crate) fn truncate_to_micros(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(to_micros(time))
}

fn from_micros(what: &'static str, micros: u64) -> StoreResult<SystemTime> {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(micros))
        .ok_or_else(|| {
            corrupt(
                what,
                format!("time of {micros} microseconds is out of range"),
            )
        })
}

pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.into(),
    }
}

/// The size a message takes as stored: its key and its encoded value
/// (before compression). What `retained_bytes` counts.
pub(crate) fn stored_size(encoded_len: usize) -> u64 {
    (MESSAGE_KEY_LEN + encoded_len) as u64
}

/// Encodes a topic's head: its next offset, and its retained bytes.
pub(crate) fn encode_head(next_offset: Offset, retained_bytes: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&next_offset.to_be_bytes());
    value[8..].copy_from_slice(&retained_bytes.to_be_bytes());
    value
}

/// Decodes what [`encode_head`] wrote; a head written before retained
/// bytes were kept (the next offset alone) has `None` for them.
pub(crate) fn decode_head(value: &[u8]) -> StoreResult<(Offset, Option<u64>)> {
    match value.len() {
        8 => Ok((decode_u64("topic head", value)?, None)),
        16 => Ok((
            decode_u64("topic head", &value[..8])?,
            Some(decode_u64("topic head", &value[8..])?),
        )),
        len => Err(corrupt("topic head", format!("{len} bytes, not 8 or 16"))),
    }
}

/// The key of a message: topic id ‖ offset, so a topic's messages sort by
/// offset and sit together.
pub(crate) fn message_key(topic: TopicId, offset: Offset) -> [u8; MESSAGE_KEY_LEN] {
    let mut key = [0; MESSAGE_KEY_LEN];
    key[..8].copy_from_slice(&topic.0.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The offset in a message key.
pub(crate) fn message_key_offset(key: &[u8]) -> StoreResult<Offset> {
    let bytes: [u8; 8] = key
        .get(8..MESSAGE_KEY_LEN)
        .and_then(|b| b.try_into().ok())
        .filter(|_| key.len() == MESSAGE_KEY_LEN)
        .ok_or_else(|| corrupt("message key", format!("{} bytes, want 16", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The length of a key of the time-ordered indexes (delayed messages,
/// remembered ids).
pub(crate) const TIMED_KEY_LEN: usize = 24;

/// A key of a time-ordered index: topic id ‖ time in microseconds ‖
/// offset, so a topic's entries sort by time, then offset.
pub(crate) fn timed_key(topic: TopicId, time: SystemTime, offset: Offset) -> [u8; TIMED_KEY_LEN] {
    let mut key = [0; TIMED_KEY_LEN];
    key[..8].copy_from_slice(&topic.0.to_be_bytes());
    key[8..16].copy_from_slice(&to_micros(time).to_be_bytes());
    key[16..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The topic, time (in microseconds) and offset of a [`timed_key`].
pub(crate) fn decode_timed_key(
    what: &'static str,
    key: &[u8],
) -> StoreResult<(TopicId, u64, Offset)> {
    if key.len() != TIMED_KEY_LEN {
        return Err(corrupt(
            what,
            format!("{} bytes, not {TIMED_KEY_LEN}", key.len()),
        ));
    }
    Ok((
        TopicId(decode_u64(what, &key[..8])?),
        decode_u64(what, &key[8..16])?,
        decode_u64(what, &key[16..])?,
    ))
}

/// The key of a delayed message in its topic's index: its due time and
/// offset.
pub(crate) fn delayed_key(topic: TopicId, due: SystemTime, offset: Offset) -> [u8; TIMED_KEY_LEN] {
    timed_key(topic, due, offset)
}

/// The due time and offset of a [`delayed_key`].
pub(crate) fn decode_delayed_key(key: &[u8]) -> StoreResult<(SystemTime, Offset)> {
    const WHAT: &str = "delayed message key";
    let (_, micros, offset) = decode_timed_key(WHAT, key)?;
    Ok((from_micros(WHAT, micros)?, offset))
}

/// Encodes the ids one append stored, as their 128-bit hashes, each with
/// its message's offset as a distance from `first`: 20 bytes an id.
pub(crate) fn encode_ids(
    first: Offset,
    ids: impl ExactSizeIterator<Item = (u128, Offset)>,
) -> Vec<u8> {
    let mut w = Writer::new(1 + 4 + 20 * ids.len());
    w.u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for (id, offset) in ids {
        w.0.extend_from_slice(&id.to_be_bytes());
        w.u32(u32::try_from(offset - first).unwrap_or(u32::MAX));
    }
    w.0
}

/// Decodes what [`encode_ids`] wrote for an entry at `first`.
pub(crate) fn decode_ids(first: Offset, value: &[u8]) -> StoreResult<Vec<(u128, Offset)>> {
    const WHAT: &str = "remembered ids";
    let mut r = Reader::new(WHAT, value)?;
    let count = r.u32()? as usize;
    if count != r.remaining() / 20 || r.remaining() % 20 != 0 {
        return Err(corrupt(
            WHAT,
            format!("{count} ids in {} bytes", r.remaining()),
        ));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let mut hash = [0; 16];
        hash.copy_from_slice(r.take(16)?);
        let gap = r.u32()?;
        let offset = first.checked_add(u64::from(gap)).ok_or_else(|| {
            corrupt(
                WHAT,
                format!("offset {first} + {gap} is past the last offset"),
            )
        })?;
        ids.push((u128::from_be_bytes(hash), offset));
    }
    r.finish()?;
    Ok(ids)
}

/// A `u64` as eight big-endian bytes (heads and id counters).
pub(crate) fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Decodes what [`encode_u64`] wrote.
pub(crate) fn decode_u64(what: &'static str, bytes: &[u8]) -> StoreResult<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(what, format!("{} bytes, want 8", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

/// Appends to a value under construction.
struct Writer(Vec<u8>);

impl Writer {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(FORMAT_V1);
        Self(buf)
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn str(&mut self, value: &str) {
        // Names, keys and attributes come through gRPC, whose messages are
        // far below 4 GiB; saturate rather than panic all the same.
        self.u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(value.as_bytes());
    }
}

/// Takes from a value being decoded; every read checks the length left.
struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts after the format byte, which must be one this version reads.
    fn new(what: &'static str, buf: &'a [u8]) -> StoreResult<Self> {
        Self::with_formats(what, buf, &[FORMAT_V1])
    }

    /// Starts after the format byte, which must be one of `formats`.
    fn with_formats(what: &'static str, buf: &'a [u8], formats: &[u8]) -> StoreResult<Self> {
        match buf.first() {
            Some(format) if formats.contains(format) => Ok(Self { what, buf, pos: 1 }),
            Some(other) => Err(corrupt(what, format!("unknown format byte {other}"))),
            None => Err(corrupt(what, "empty value")),
        }
    }

    /// The format byte the value started with.
    fn format(&self) -> u8 {
        self.buf[0]
    }

    fn take(&mut self, len: usize) -> StoreResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(corrupt(
                self.what,
                format!("truncated: wanted {len} bytes at byte {}", self.pos),
            ));
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> StoreResult<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> StoreResult<u64> {
        decode_u64(self.what, self.take(8)?)
    }

    fn time(&mut self) -> StoreResult<SystemTime> {
        let micros = self.u64()?;
        from_micros(self.what, micros)
    }

    fn string(&mut self) -> StoreResult<String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(self.what, "string is not UTF-8"))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self) -> StoreResult<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(corrupt(
                self.what,
                format!("{extra} unexpected trailing bytes"),
            )),
        }
    }
}

/// [`encode_message_into`] a fresh buffer.
#[cfg(test)]
pub(crate) fn encode_message(publish_time: SystemTime, message: &NewMessage) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_message_into(&mut buf, publish_time, message);
    buf
}

/// Encodes a message as stored into `buf`, replacing what it held: publish
/// time, key, attributes, the id (if any) as a tagged field, then the
/// payload, which runs to the end so it can be sliced out without a copy.
/// The writer reuses one buffer for every message instead of allocating
/// each time.
pub(crate) fn encode_message_into(
    buf: &mut Vec<u8>,
    publish_time: SystemTime,
    message: &NewMessage,
) {
    let due = message.due(publish_time);
    buf.clear();
    buf.reserve(encoded_len(message, publish_time));
    buf.push(if message.id.is_empty() && due.is_none() {
        FORMAT_V1
    } else {
        MESSAGE_V2
    });
    let mut w = Writer(std::mem::take(buf));
    w.u64(to_micros(publish_time));
    w.str(&message.key);
    w.u32(u32::try_from(message.attributes.len()).unwrap_or(u32::MAX));
    for (name, value) in &message.attributes {
        w.str(name);
        w.str(value);
    }
    if !message.id.is_empty() || due.is_some() {
        if !message.id.is_empty() {
            w.0.push(MESSAGE_ID_TAG);
            w.str(&message.id);
        }
        if let Some(at) = due {
            w.0.push(DELIVER_AT_TAG);
            w.u64(to_micros(at));
        }
        w.0.push(END_TAG);
    }
    w.0.extend_from_slice(&message.payload);
    *buf = w.0;
}

/// The length of what [`encode_message_into`] writes for `message`
/// published at `publish_time`, without encoding it.
pub(crate) fn encoded_len(message: &NewMessage, publish_time: SystemTime) -> usize {
    let attributes: usize = message
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    let id = if message.id.is_empty() {
        0
    } else {
        1 + 4 + message.id.len()
    };
    let deliver_at = if message.due(publish_time).is_some() {
        1 + 8
    } else {
        0
    };
    let tagged = match id + deliver_at {
        0 => 0,
        tagged => tagged + 1,
    };
    1 + 8 + 4 + message.key.len() + 4 + attributes + tagged + message.payload.len()
}

/// Decodes a message stored at `offset`; the payload shares `value`'s memory.
pub(crate) fn decode_message(offset: Offset, value: Bytes) -> StoreResult<StoredMessage> {
    const WHAT: &str = "message";
    let mut r = Reader::with_formats(WHAT, &value, &[FORMAT_V1, MESSAGE_V2])?;
    let publish_time = r.time()?;
    let key = r.string()?;
    let count = r.u32()?;
    // Each attribute takes at least 8 bytes: do not trust a count the value
    // cannot hold before allocating for it.
    if count as usize > r.remaining() / 8 {
        return Err(corrupt("message", format!("{count} attributes cannot fit")));
    }
    let mut attributes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.string()?;
        attributes.push((name, r.string()?));
    }
    let mut id = String::new();
    let mut deliver_at = None;
    if r.format() == MESSAGE_V2 {
        loop {
            match r.take(1)?[0] {
                END_TAG => break,
                MESSAGE_ID_TAG => id = r.string()?,
                DELIVER_AT_TAG => deliver_at = Some(r.time()?),
                tag => return Err(unknown_tag(WHAT, tag)),
            }
        }
    }
    let start = r.pos;
    Ok(StoredMessage {
        offset,
        publish_time,
        payload: value.slice(start..),
        key,
        attributes,
        id: id.into(),
        deliver_at,
    })
}

/// Decodes only the publish time of a stored message.
pub(crate) fn decode_publish_time(value: &[u8]) -> StoreResult<SystemTime> {
    Reader::with_formats("message", value, &[FORMAT_V1, MESSAGE_V2])?.time()
}

/// Encodes an ack state: floor, then the acknowledged ranges above it.
pub(crate) fn encode_ack_state(state: &AckState) -> Vec<u8> {
    let mut w = Writer::new(8 + 4 + 16 * state.acked.range_count());
    w.u64(state.floor);
    write_ranges(&mut w, &state.acked);
    w.0
}

/// Decodes what [`encode_ack_state`] wrote.
pub(crate) fn decode_ack_state(value: &[u8]) -> StoreResult<AckState> {
    const WHAT: &str = "ack state";
    let mut r = Reader::new(WHAT, value)?;
    let floor = r.u64()?;
    let acked = read_ranges(&mut r, WHAT)?;
    Ok(AckState { floor, acked })
}

/// Encodes a subscription's dead letters: the rejected count, then the
/// moved offsets as ranges.
pub(crate) fn encode_dead_letters(dead: &DeadLetters) -> Vec<u8> {
    let mut w = Writer::new(8 + 4 + 16 * dead.offsets.range_count());
    w.u64(dead.rejected);
    write_ranges(&mut w, &dead.offsets);
    w.0
}

/// Decodes what [`encode_dead_letters`] wrote.
pub(crate) fn decode_dead_letters(value: &[u8]) -> StoreResult<DeadLetters> {
    const WHAT: &str = "dead letters";
    let mut r = Reader::new(WHAT, value)?;
    let rejected = r.u64()?;
    let offsets = read_ranges(&mut r, WHAT)?;
    Ok(DeadLetters { offsets, rejected })
}

/// A set of offsets as its count of ranges, then each range's start and end.
fn write_ranges(w: &mut Writer, set: &OffsetRanges) {
    w.u32(u32::try_from(set.range_count()).unwrap_or(u32::MAX));
    for range in set.ranges() {
        w.u64(range.start);
        w.u64(range.end);
    }
}

/// Reads what [`write_ranges`] wrote, to the end of the value.
fn read_ranges(r: &mut Reader<'_>, what: &'static str) -> StoreResult<OffsetRanges> {
    let count = r.u32()? as usize;
    if r.remaining() != count.saturating_mul(16) {
        return Err(corrupt(
            what,
            format!("{count} ranges do not match {} bytes", r.remaining()),
        ));
    }
    let mut ranges: Vec<Range<Offset>> = Vec::with_capacity(count);
    for _ in 0..count {
        let start = r.u64()?;
        ranges.push(start..r.u64()?);
    }
    r.finish()?;
    OffsetRanges::from_sorted_ranges(ranges)
        .ok_or_else(|| corrupt(what, "ranges are empty, unordered or overlapping"))
}

/// Tag of a topic's retention by age among the record's optional fields.
const MAX_AGE_TAG: u8 = 1;
/// Tag of a topic's retention by count.
const MAX_MESSAGES_TAG: u8 = 2;
/// Tag, alone, of a topic that discards acknowledged messages.
const DISCARD_ACKED_TAG: u8 = 3;
/// Tag of a topic's retention by size.
const MAX_BYTES_TAG: u8 = 4;
/// Tag of a topic's dedup window, when it is not the default.
const DEDUP_WINDOW_TAG: u8 = 5;
/// Tag, alone, of a topic whose messages live in memory
/// ([`StorageClass::Memory`]); a record without it is a disk topic.
const MEMORY_TAG: u8 = 6;

/// Encodes a topic record without its offsets, which are stored apart (as
/// the topic's head and first offset) so that an append does not rewrite
/// the record: its fixed fields, then each setting that is not at its
/// default as a tag byte and its value, so a record without them reads as
/// it did before they existed (keeping everything).
pub(crate) fn encode_topic(record: &TopicRecord) -> Vec<u8> {
    let retention = &record.settings.retention;
    let mut w = Writer::new(8 + 8 + 4 + record.name.as_str().len() + 13 + 9 + 1 + 9);
    w.u64(record.id.0);
    w.u64(to_micros(record.created));
    w.str(record.name.as_str());
    if let Some(age) = retention.max_age {
        w.0.push(MAX_AGE_TAG);
        w.u64(age.as_secs());
        w.u32(age.subsec_nanos());
    }
    if let Some(count) = retention.max_messages {
        w.0.push(MAX_MESSAGES_TAG);
        w.u64(count);
    }
    if retention.discard_acked {
        w.0.push(DISCARD_ACKED_TAG);
    }
    if let Some(bytes) = retention.max_bytes {
        w.0.push(MAX_BYTES_TAG);
        w.u64(bytes);
    }
    let window = record.settings.dedup_window;
    if window != DEFAULT_DEDUP_WINDOW {
        w.0.push(DEDUP_WINDOW_TAG);
        w.u64(window.as_secs());
        w.u32(window.subsec_nanos());
    }
    if record.storage == StorageClass::Memory {
        w.0.push(MEMORY_TAG);
    }
    w.0
}

/// Decodes what [`encode_topic`] wrote, completing it with the offsets
/// stored apart.
pub(crate) fn decode_topic(
    value: &[u8],
    first_offset: Offset,
    next_offset: Offset,
) -> StoreResult<TopicRecord> {
    const WHAT: &str = "topic record";
    let mut r = Reader::new(WHAT, value)?;
    let id = TopicId(r.u64()?);
    let created = r.time()?;
    let name = TopicName::new(r.string()?).map_err(|e| corrupt(WHAT, e.to_string()))?;
    let mut settings = TopicSettings::default();
    let mut storage = StorageClass::Disk;
    let retention = &mut settings.retention;
    while r.remaining() > 0 {
        match r.take(1)?[0] {
            MAX_AGE_TAG => retention.max_age = Some(read_duration(&mut r, WHAT)?),
            MAX_MESSAGES_TAG => retention.max_messages = Some(r.u64()?),
            DISCARD_ACKED_TAG => retention.discard_acked = true,
            MAX_BYTES_TAG => retention.max_bytes = Some(r.u64()?),
            DEDUP_WINDOW_TAG => settings.dedup_window = read_duration(&mut r, WHAT)?,
            MEMORY_TAG => storage = StorageClass::Memory,
            tag => return Err(unknown_tag(WHAT, tag)),
        }
    }
    Ok(TopicRecord {
        id,
        name,
        first_offset,
        next_offset,
        created,
        settings,
        retained_bytes: 0,
        storage,
    })
}

/// The error of a setting tag this broker does not know.
fn unknown_tag(what: &'static str, tag: u8) -> StoreError {
    corrupt(
        what,
        format!("unknown setting tag {tag}: written by a newer broker?"),
    )
}

/// Tag of a subscription's filter among the record's optional fields.
const FILTER_TAG: u8 = 1;
/// Tag of a subscription's retry policy.
const RETRY_TAG: u8 = 2;
/// Tag, alone, of an ordered subscription.
const ORDERED_TAG: u8 = 3;
/// Tag of a subscription's dead-letter policy.
const DEAD_LETTER_TAG: u8 = 4;
/// Tag of a subscription's delivery delay.
const DELIVERY_DELAY_TAG: u8 = 5;
/// Tag of a subscription's push configuration: endpoint, the most POSTs in
/// flight, the number of headers, then each header's name and value.
const PUSH_TAG: u8 = 6;

/// Encodes a subscription record: its fixed fields, then each optional
/// setting that is not at its default as a tag byte and its value, so a
/// record without them reads as it did before they existed.
pub(crate) fn encode_subscription(record: &SubscriptionRecord) -> Vec<u8> {
    let settings = &record.settings;
    let optional = if settings.filter.is_empty() {
        0
    } else {
        1 + 4 + settings.filter.len()
    } + if settings.retry.is_some() { 1 + 24 } else { 0 }
        + usize::from(settings.ordered)
        + settings
            .dead_letter
            .as_ref()
            .map_or(0, |d| 1 + 4 + d.topic.as_str().len() + 4)
        + settings.push.as_ref().map_or(0, |p| {
            1 + 4
                + p.endpoint.len()
                + 4
                + 4
                + p.headers
                    .iter()
                    .map(|(n, v)| 8 + n.len() + v.len())
                    .sum::<usize>()
        });
    let mut w = Writer::new(8 + 8 + 8 + 4 + 8 + 4 + record.name.as_str().len() + optional);
    w.u64(record.id.0);
    w.u64(record.topic.0);
    w.u64(settings.ack_deadline.as_secs());
    w.u32(settings.ack_deadline.subsec_nanos());
    w.u64(to_micros(record.created));
    w.str(record.name.as_str());
    if !settings.filter.is_empty() {
        w.0.push(FILTER_TAG);
        w.str(&settings.filter);
    }
    if let Some(retry) = &settings.retry {
        w.0.push(RETRY_TAG);
        for backoff in [retry.minimum_backoff, retry.maximum_backoff] {
            w.u64(backoff.as_secs());
            w.u32(backoff.subsec_nanos());
        }
    }
    if settings.ordered {
        w.0.push(ORDERED_TAG);
    }
    if let Some(dead) = &settings.dead_letter {
        w.0.push(DEAD_LETTER_TAG);
        w.str(dead.topic.as_str());
        w.u32(dead.max_delivery_attempts);
    }
    if !settings.delivery_delay.is_zero() {
        w.0.push(DELIVERY_DELAY_TAG);
        w.u64(settings.delivery_delay.as_secs());
        w.u32(settings.delivery_delay.subsec_nanos());
    }
    if let Some(push) = &settings.push {
        w.0.push(PUSH_TAG);
        w.str(&push.endpoint);
        w.u32(push.max_outstanding);
        w.u32(u32::try_from(push.headers.len()).unwrap_or(u32::MAX));
        for (name, value) in &push.headers {
            w.str(name);
            w.str(value);
        }
    }
    w.0
}

/// A duration written as seconds and nanoseconds.
fn read_duration(r: &mut Reader<'_>, what: &'static str) -> StoreResult<Duration> {
    let secs = r.u64()?;
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(corrupt(what, format!("{nanos} nanoseconds in a duration")));
    }
    Ok(Duration::new(secs, nanos))
}

/// Decodes what [`encode_subscription`] wrote.
pub(crate) fn decode_subscription(value: &[u8]) -> StoreResult<SubscriptionRecord> {
    const WHAT: &str = "subscription record";
    let mut r = Reader::new(WHAT, value)?;
    let id = SubscriptionId(r.u64()?);
    let topic = TopicId(r.u64()?);
    let secs = r.u64()?;
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(corrupt(WHAT, format!("{nanos} nanoseconds in a deadline")));
    }
    let created = r.time()?;
    let name = SubscriptionName::new(r.string()?).map_err(|e| corrupt(WHAT, e.to_string()))?;
    let mut filter = String::new();
    let mut retry = None;
    let mut ordered = false;
    let mut dead_letter = None;
    let mut delivery_delay = Duration::ZERO;
    let mut push = None;
    while r.remaining() > 0 {
        match r.take(1)?[0] {
            FILTER_TAG => filter = r.string()?,
            RETRY_TAG => {
                retry = Some(RetryPolicy {
                    minimum_backoff: read_duration(&mut r, WHAT)?,
                    maximum_backoff: read_duration(&mut r, WHAT)?,
                });
            }
            ORDERED_TAG => ordered = true,
            DEAD_LETTER_TAG => {
                let topic =
                    TopicName::new(r.string()?).map_err(|e| corrupt(WHAT, e.to_string()))?;
                dead_letter = Some(DeadLetterPolicy {
                    topic,
                    max_delivery_attempts: r.u32()?,
                });
            }
            DELIVERY_DELAY_TAG => delivery_delay = read_duration(&mut r, WHAT)?,
            PUSH_TAG => {
                let endpoint = r.string()?;
                let max_outstanding = r.u32()?;
                let count = r.u32()?;
                let mut headers = BTreeMap::new();
                for _ in 0..count {
                    let name = r.string()?;
                    headers.insert(name, r.string()?);
                }
                push = Some(PushConfig {
                    endpoint,
                    headers,
                    max_outstanding,
                });
            }
            tag => return Err(unknown_tag(WHAT, tag)),
        }
    }
    Ok(SubscriptionRecord {
        id,
        name,
        topic,
        settings: SubscriptionSettings {
            ack_deadline: Duration::new(secs, nanos),
            filter,
            retry,
            ordered,
            dead_letter,
            delivery_delay,
            push,
        },
        created,
    })
}

/// Encodes a delivery record: failures, then the redelivery time in
/// microseconds (0 for none).
pub(crate) fn encode_delivery(record: &DeliveryRecord) -> Vec<u8> {
    let mut w = Writer::new(4 + 8);
    w.u32(record.failures);
    // A time at the epoch itself reads back as "none": nothing is lost, it
    // is long past either way.
    w.u64(record.redeliver_at.map_or(0, to_micros));
    w.0
}

/// Decodes what [`encode_delivery`] wrote.
pub(crate) fn decode_delivery(value: &[u8]) -> StoreResult<DeliveryRecord> {
    const WHAT: &str = "delivery record";
    let mut r = Reader::new(WHAT, value)?;
    let failures = r.u32()?;
    let micros = r.u64()?;
    r.finish()?;
    let redeliver_at = match micros {
        0 => None,
        micros => Some(from_micros(WHAT, micros)?),
    };
    Ok(DeliveryRecord {
        failures,
        redeliver_at,
    })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
