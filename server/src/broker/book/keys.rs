//! The ordering state of an ordered subscription: which message holds
//! each key, which wait behind it, and the bodies of the waiting ones.
//!
//! A message that waits behind its key was read when it was scanned; up
//! to [`QUEUED_BODY_BYTES`] of such messages are kept, so that when the key
//! passes to one it is delivered without being read again. Once that
//! budget is spent, scanning on is only worth it while it finds keys that
//! are free: while the consumers are busy, a scan that found nothing but
//! messages waiting behind held keys (some of them without their body)
//! stalls scanning until a key becomes free or the topic grows. The queues
//! then stay about as deep as the budget, and their messages in memory.

use std::collections::BTreeMap;

use super::{KeyHash, Meta};
use crate::offsets::{Offset, OffsetMap};
use crate::storage::StoredMessage;

/// Bytes of waiting messages kept in memory per ordered subscription.
pub(super) const QUEUED_BODY_BYTES: usize = 4 << 20;
/// Messages waiting behind held keys at which scanning pauses, so that a
/// key held for long cannot make the book grow without bound.
const MAX_QUEUED: usize = 100_000;
/// Leases in flight from which the consumers count as busy. Only then may
/// scanning stall: consumers with little to do (say, behind one failing
/// key) need every free key that scanning on can find.
pub(super) const BUSY_LEASES: usize = 64;

/// What [`Keys::release`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Released {
    /// The message did not hold its key.
    NotHolder,
    /// The key passed to the next message waiting for it.
    PassedTo(Offset, Meta),
    /// No message waited: the key is free.
    Freed,
}

/// The ordering state of an ordered subscription.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// The message holding each key.
    holder: OffsetMap<Offset>,
    /// Messages waiting behind each key's holder, in offset order.
    queued: OffsetMap<BTreeMap<Offset, Meta>>,
    /// The key each queued message waits for.
    pub(super) queued_at: OffsetMap<KeyHash>,
    pub(super) queued_count: usize,
    /// Bodies of messages that waited behind their key, until they are
    /// leased or settled.
    bodies: OffsetMap<StoredMessage>,
    body_bytes: usize,
    /// A message was queued without its body during the current scan.
    body_refused: bool,
    /// The topic's head when the current scan was handed out.
    scan_head: Offset,
    /// Scanning stalled: the topic's head when it did.
    stalled_at: Option<Offset>,
}

impl Keys {
    /// Whether scanning on below `head` may find anything worth queueing,
    /// while the consumers are `busy` or not.
    pub(super) fn may_scan(&self, head: Offset, busy: bool) -> bool {
        self.queued_count < MAX_QUEUED && (!busy || self.stalled_at.is_none_or(|at| head > at))
    }

    /// A scan below `head` was handed out.
    pub(super) fn scan_started(&mut self, head: Offset) {
        self.scan_head = head;
        self.body_refused = false;
    }

    /// A scan came back: it found `found` messages, of which `queued` wait
    /// behind held keys. Scanning stalls (while the consumers are busy)
    /// when all of them wait and some had to leave their body behind.
    pub(super) fn scan_admitted(&mut self, found: usize, queued: usize) {
        if found > 0 && queued == found && self.body_refused {
            self.stalled_at = Some(self.scan_head);
        }
    }

    /// Makes `message` hold its `key` unless another message does, when it
    /// waits behind it (with its body, while the budget allows); returns
    /// whether it holds the key.
    pub(super) fn hold(&mut self, key: KeyHash, message: &StoredMessage, meta: Meta) -> bool {
        let offset = message.offset;
        match self.holder.get(&key) {
            Some(&holder) if holder == offset => true,
            Some(_) => {
                if self
                    .queued
                    .entry(key)
                    .or_default()
                    .insert(offset, meta)
                    .is_none()
                {
                    self.queued_count += 1;
                    self.queued_at.insert(offset, key);
                    self.keep_body(message);
                }
                false
            }
            None => {
                self.holder.insert(key, offset);
                true
            }
        }
    }

    fn keep_body(&mut self, message: &StoredMessage) {
        let size = message.wire_size();
        if self.body_bytes + size > QUEUED_BODY_BYTES {
            self.body_refused = true;
            return;
        }
        if let Some(old) = self.bodies.insert(message.offset, message.clone()) {
            self.body_bytes -= old.wire_size();
        }
        self.body_bytes += size;
    }

    /// Bytes of bodies kept.
    #[cfg(test)]
    pub(super) fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// Drops the body of a settled message, if it was kept.
    pub(super) fn drop_body(&mut self, offset: Offset) {
        if self.bodies.is_empty() {
            return;
        }
        if let Some(body) = self.bodies.remove(&offset) {
            self.body_bytes -= body.wire_size();
        }
    }

    /// Takes the kept bodies of `offsets`, in offset order.
    pub(super) fn take_bodies(
        &mut self,
        offsets: impl Iterator<Item = Offset>,
    ) -> Vec<StoredMessage> {
        if self.bodies.is_empty() {
            return Vec::new();
        }
        let mut taken: Vec<StoredMessage> = offsets
            .filter_map(|offset| self.bodies.remove(&offset))
            .collect();
        self.body_bytes -= taken.iter().map(StoredMessage::wire_size).sum::<usize>();
        taken.sort_unstable_by_key(|m| m.offset);
        taken
    }

    /// Removes `offset` from its key's queue, if it waits in one.
    pub(super) fn unqueue(&mut self, offset: Offset) {
        self.drop_body(offset);
        let Some(key) = self.queued_at.remove(&offset) else {
            return;
        };
        if let Some(queue) = self.queued.get_mut(&key)
            && queue.remove(&offset).is_some()
        {
            self.queued_count -= 1;
            if queue.is_empty() {
                self.queued.remove(&key);
            }
        }
    }

    /// `offset` no longer holds `key`: the next queued message takes it
    /// over, or the key is free.
    pub(super) fn release(&mut self, key: KeyHash, offset: Offset) -> Released {
        if self.holder.get(&key) != Some(&offset) {
            return Released::NotHolder;
        }
        let next = self.queued.get_mut(&key).and_then(BTreeMap::pop_first);
        match next {
            Some((next, meta)) => {
                self.queued_count -= 1;
                self.queued_at.remove(&next);
                if self.queued.get(&key).is_some_and(BTreeMap::is_empty) {
                    self.queued.remove(&key);
                }
                self.holder.insert(key, next);
                Released::PassedTo(next, meta)
            }
            None => {
                self.holder.remove(&key);
                // A free key may be found by scanning on.
                self.stalled_at = None;
                Released::Freed
            }
        }
    }
}
