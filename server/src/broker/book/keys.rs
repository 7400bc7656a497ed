//! The ordering state of an ordered subscription: which message holds
//! each key, and which wait behind it.

use std::collections::BTreeMap;

use super::{KeyHash, Meta};
use crate::offsets::{Offset, OffsetMap};

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
}

impl Keys {
    /// Makes `offset` hold `key` unless another message does; returns
    /// whether it holds it.
    pub(super) fn hold(&mut self, key: KeyHash, offset: Offset, meta: Meta) -> bool {
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
                }
                false
            }
            None => {
                self.holder.insert(key, offset);
                true
            }
        }
    }

    /// Removes `offset` from its key's queue, if it waits in one.
    pub(super) fn unqueue(&mut self, offset: Offset) {
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
    /// over and is returned.
    pub(super) fn release(&mut self, key: KeyHash, offset: Offset) -> Option<(Offset, Meta)> {
        if self.holder.get(&key) != Some(&offset) {
            return None;
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
                Some((next, meta))
            }
            None => {
                self.holder.remove(&key);
                None
            }
        }
    }
}
