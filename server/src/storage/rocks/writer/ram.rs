//! The writer's side of memory topics: appends and trims staged beside a
//! batch, applied to the topics' [`RamLog`]s once the batch is written.
//!
//! No message data and no message id of a memory topic is written to the
//! database. What is written is a high-water mark of its offsets, so that a
//! restart never hands an offset out twice: the writer reserves offsets
//! [`RESERVED_OFFSETS`] at a time, and when an append takes the next offset
//! past the reserved mark, the batch stores a new mark (synced, as metadata
//! is) in the topic's head record, where a disk topic keeps its next
//! offset. After a restart, or a `kill -9`, the topic starts empty at the
//! stored mark, which is above every offset handed out before it.
//!
//! A memory topic is bounded at every append: its oldest messages are
//! dropped, in the same step, until it is within its retention's
//! `max_bytes` (64 MiB when unset) and `max_messages`.
//!
//! Most appends to a memory topic never reach the writer: the store makes
//! them in the log at once ([`RamLog::append_now`]), as long as the log
//! is not claimed and the stored mark covers their offsets; an append that
//! comes within half of [`RESERVED_OFFSETS`] of the mark asks the writer
//! for a higher one ([`Op::Reserve`](super::Op::Reserve)), so that busy
//! topics seldom wait for it. The writer claims a memory topic's log before
//! it stages anything that changes it, takes its head over from the log
//! then, and keeps the claim until the batch's callers are answered.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{TopicHead, Undo, Writer};
use crate::offsets::Offset;
use crate::storage::codec;
use crate::storage::ram::{LogChange, LogHead, RamLog, RamMessage};
use crate::storage::rocks::batch::Batch;
use crate::storage::rocks::dedup::id_hash;
use crate::storage::{
    Appended, Duplicate, NewMessage, Retention, StoreError, StoreResult, TopicId,
};

/// How many offsets a memory topic reserves with each mark it stores. A
/// restart skips what was reserved and not used, at most this many
/// offsets; a busy topic stores a mark once per this many messages.
pub(in crate::storage::rocks) const RESERVED_OFFSETS: u64 = 1 << 20;

/// The writer's view of a memory topic, beside its [`TopicHead`].
#[derive(Debug, Clone)]
pub(super) struct RamHead {
    /// Where its messages are; shared with the readers.
    log: Arc<RamLog>,
    /// The offset mark stored on disk: no offset at or above it was handed
    /// out.
    reserved: Offset,
}

impl RamHead {
    /// An empty memory topic whose next offset is the stored mark, with
    /// its settings.
    pub(super) fn starting_at(reserved: Offset, window: Duration, retention: Retention) -> Self {
        Self {
            log: Arc::new(RamLog::starting_at(reserved, window, retention)),
            reserved,
        }
    }
}

impl TopicHead {
    /// Its log, when it is a memory topic.
    pub(super) fn ram_log(&self) -> Option<Arc<RamLog>> {
        self.ram.as_ref().map(|ram| Arc::clone(&ram.log))
    }
}

/// What the batch being built changes in one memory topic's log.
pub(super) struct RamPending {
    log: Arc<RamLog>,
    /// The topic's next offset when the batch began: `appended` holds the
    /// offsets from it on, densely.
    start: Offset,
    appended: Vec<RamMessage>,
    /// Ids stored with `appended`: id, offset, when.
    ids: Vec<(String, Offset, SystemTime)>,
}

impl RamPending {
    /// The stored size of the message at `offset`, wherever it is yet.
    fn size_at(&self, offset: Offset) -> u64 {
        match offset.checked_sub(self.start) {
            Some(index) => usize::try_from(index)
                .ok()
                .and_then(|index| self.appended.get(index))
                .map_or(0, |m| m.size),
            None => self.log.size_at(offset).unwrap_or(0),
        }
    }
}

impl Writer {
    /// Claims the log of memory topic `topic` for the batch being built
    /// (once) and takes its head over from the log; call it before reading
    /// the topic's head. Does nothing for other topics.
    pub(super) fn claim_ram(&mut self, topic: TopicId) {
        if self.ram_pending.contains_key(&topic) {
            return;
        }
        let Some(head) = self.topics.get_mut(&topic) else {
            return;
        };
        let Some(log) = head.ram_log() else {
            return;
        };
        let (claim, now) = log.claim();
        let LogHead {
            first_offset,
            next_offset,
            retained_bytes,
            last_publish,
        } = now;
        head.first_offset = first_offset;
        head.next_offset = next_offset;
        head.retained_bytes = retained_bytes;
        head.last_publish = last_publish;
        self.claims.push(claim);
        self.ram_pending.insert(
            topic,
            RamPending {
                log,
                start: next_offset,
                appended: Vec::new(),
                ids: Vec::new(),
            },
        );
    }

    /// A copy of `topic`'s head, its memory log claimed first (see
    /// [`claim_ram`](Self::claim_ram)).
    pub(super) fn claimed_head(&mut self, topic: TopicId) -> StoreResult<TopicHead> {
        self.claim_ram(topic);
        self.topics
            .get(&topic)
            .cloned()
            .ok_or(StoreError::TopicNotFound(topic))
    }

    /// [`Op::Reserve`](super::Op::Reserve): stores an offset mark
    /// [`RESERVED_OFFSETS`] above the topic's next offset, unless a higher
    /// one is stored; the log hears of it once the batch is written.
    pub(super) fn stage_reserve(&mut self, topic: TopicId, batch: &mut Batch<'_>) {
        let Some(head) = self.topics.get(&topic) else {
            return;
        };
        let Some(ram) = &head.ram else {
            return;
        };
        let log = Arc::clone(&ram.log);
        let mark = head.next_offset.max(log.next_offset()) + RESERVED_OFFSETS;
        if mark > ram.reserved {
            self.undo.push(Undo::Topic(topic, Some(head.clone())));
            let ram = self
                .topics
                .get_mut(&topic)
                .and_then(|head| head.ram.as_mut())
                .expect("looked up above");
            ram.reserved = mark;
            batch.put_reserved_offsets(topic, mark);
        }
        // The mark stored once the batch is written, this one or higher.
        self.reservations.push((log, mark));
    }

    /// [`Writer::stage_append`] for a memory topic: nothing of the messages
    /// is written, but a new offset mark when they pass the reserved one.
    pub(super) fn stage_ram_append(
        &mut self,
        topic: TopicId,
        head: TopicHead,
        messages: &[NewMessage],
        batch: &mut Batch<'_>,
    ) -> Appended {
        let now = codec::truncate_to_micros(SystemTime::now());
        let publish_time = now.max(head.last_publish);
        let mut appended = Appended {
            first_offset: head.next_offset,
            publish_time,
            retained_bytes: head.retained_bytes,
            duplicates: Vec::new(),
        };
        if messages.is_empty() {
            return appended;
        }
        self.undo.push(Undo::Topic(topic, Some(head)));
        let head = self
            .topics
            .get_mut(&topic)
            .expect("looked up by the caller");
        let pending = self
            .ram_pending
            .get_mut(&topic)
            .expect("claimed by the caller");
        let mut offset = appended.first_offset;
        for (index, message) in messages.iter().enumerate() {
            if !message.id.is_empty() && !head.dedup_window.is_zero() {
                let id = id_hash(&message.id);
                let in_batch = self.batch_ids.entry(topic).or_default();
                let earlier = in_batch.get(&id).copied().or_else(|| {
                    pending
                        .log
                        .remembered(&message.id, head.dedup_window, publish_time)
                });
                if let Some(original) = earlier {
                    appended.duplicates.push(Duplicate {
                        index,
                        offset: original,
                    });
                    continue;
                }
                pending
                    .ids
                    .push((message.id.to_string(), offset, publish_time));
                in_batch.insert(id, offset);
            }
            let stored = RamMessage::new(message, offset, publish_time);
            head.retained_bytes += stored.size;
            pending.appended.push(stored);
            offset += 1;
        }
        let stored = offset - appended.first_offset;
        if stored == 0 {
            return appended;
        }
        head.next_offset = offset;
        head.last_publish = publish_time;
        self.appended += stored;
        let ram = head.ram.as_mut().expect("a memory topic");
        if offset > ram.reserved {
            ram.reserved = offset + RESERVED_OFFSETS;
            batch.put_reserved_offsets(topic, ram.reserved);
        }
        let retention = head.retention;
        let first = head.first_offset;
        drop_oldest(head, pending, |head, _| {
            let count = head.next_offset - head.first_offset;
            retention.memory_exceeded(count, head.retained_bytes)
        });
        if head.first_offset > first {
            self.ram_dropped
                .push((topic, head.first_offset, head.retained_bytes));
        }
        appended.retained_bytes = head.retained_bytes;
        appended
    }

    /// [`Store::trim`](crate::storage::Store::trim) of a memory topic:
    /// drops its messages below `before`, then on until at least
    /// `drop_bytes` are gone; returns its first offset and retained bytes.
    pub(super) fn stage_ram_trim(
        &mut self,
        topic: TopicId,
        before: Offset,
        drop_bytes: u64,
    ) -> StoreResult<(Offset, u64)> {
        let head = self.claimed_head(topic)?;
        if head.ram.is_none() {
            return Err(StoreError::Engine {
                context: "trimming a memory topic",
                source: format!("topic {topic:?} keeps its messages on disk").into(),
            });
        }
        let result = (head.first_offset, head.retained_bytes);
        let before = before.min(head.next_offset);
        if before <= head.first_offset && drop_bytes == 0 {
            return Ok(result);
        }
        self.undo.push(Undo::Topic(topic, Some(head)));
        let head = self.topics.get_mut(&topic).expect("looked up above");
        let pending = self.ram_pending.get_mut(&topic).expect("claimed above");
        drop_oldest(head, pending, |head, dropped| {
            head.first_offset < before || dropped < drop_bytes
        });
        Ok((head.first_offset, head.retained_bytes))
    }

    /// Applies the batch's changes to memory topics' logs; the batch was
    /// written. A topic deleted by it is marked so in its log.
    pub(super) fn apply_ram_pending(&mut self) {
        for (topic, pending) in self.ram_pending.drain() {
            let Some(head) = self.topics.get(&topic) else {
                pending.log.delete();
                continue;
            };
            pending.log.apply(LogChange {
                head: LogHead {
                    first_offset: head.first_offset,
                    next_offset: head.next_offset,
                    retained_bytes: head.retained_bytes,
                    last_publish: head.last_publish,
                },
                reserved: head.ram.as_ref().map_or(0, |ram| ram.reserved),
                appended: pending.appended,
                ids: pending.ids,
                window: head.dedup_window,
                retention: head.retention,
            });
        }
    }
}

/// Drops a memory topic's oldest messages while `more(head, dropped so
/// far)` says so and it holds any.
fn drop_oldest(
    head: &mut TopicHead,
    pending: &RamPending,
    mut more: impl FnMut(&TopicHead, u64) -> bool,
) {
    let mut dropped = 0;
    // Those the log holds in one pass (a bounded topic drops about as
    // many as it appends), then those of this batch.
    if head.first_offset < pending.start && more(head, dropped) {
        pending.log.sizes_from(head.first_offset, |offset, size| {
            if offset != head.first_offset || offset >= pending.start {
                return false;
            }
            drop_first(head, size, &mut dropped);
            more(head, dropped)
        });
    }
    while head.first_offset < head.next_offset && more(head, dropped) {
        let size = pending.size_at(head.first_offset);
        drop_first(head, size, &mut dropped);
    }
}

/// Drops a topic's first message, of `size`.
fn drop_first(head: &mut TopicHead, size: u64, dropped: &mut u64) {
    head.retained_bytes = head.retained_bytes.saturating_sub(size);
    head.first_offset += 1;
    *dropped += size;
}
