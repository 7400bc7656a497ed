//! [`Room`]: the publisher's queue limits. A message takes room (one
//! message and its size in bytes) before it is queued and gives it back,
//! through its [`Permit`], once its future has been answered.
//!
//! Callers that wait for room line up in the order in which they first
//! asked, and a newcomer never takes room ahead of the line. This module
//! neither queues nor sends messages; it only counts.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedMutexGuard};

/// Room for at most `max_messages` messages and `max_bytes` bytes.
#[derive(Debug)]
pub(crate) struct Room {
    max_messages: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    /// Notified whenever room is given back.
    freed: Notify,
    /// Notified when a message found no room.
    full: Notify,
    /// The line of callers waiting for room; its holder is the only one
    /// that waits on `freed`. Tokio's mutex is fair: first come, first
    /// served.
    line: Arc<tokio::sync::Mutex<()>>,
}

/// Room taken, and the turn in line that took it: hold the turn until the
/// message is queued, so that the next in line cannot queue before it.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) permit: Permit,
    pub(crate) turn: OwnedMutexGuard<()>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Used {
    messages: usize,
    bytes: usize,
}

/// One message's share of the [`Room`]; dropping it gives the share back.
#[derive(Debug)]
pub(crate) struct Permit {
    room: Arc<Room>,
    bytes: usize,
}

impl Room {
    /// Room for `max_messages` messages and `max_bytes` bytes (each at
    /// least 1).
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
            full: Notify::new(),
            line: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The most messages the room holds.
    pub(crate) fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The most bytes the room holds.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Room for a message of `size` bytes, now, unless the room is full or
    /// others are waiting for room.
    pub(crate) fn try_take(self: &Arc<Self>, size: usize) -> Option<Granted> {
        let turn = Arc::clone(&self.line).try_lock_owned().ok()?;
        let permit = self.take_if_free(size)?;
        Some(Granted { permit, turn })
    }

    /// Room for a message of `size` bytes, once there is some and everyone
    /// who asked before has been served. Dropping the future leaves the
    /// line.
    pub(crate) async fn take(self: Arc<Self>, size: usize) -> Granted {
        let turn = Arc::clone(&self.line).lock_owned().await;
        loop {
            // Made before looking, so room given back in between wakes it.
            let freed = self.freed.notified();
            if let Some(permit) = self.take_if_free(size) {
                return Granted { permit, turn };
            }
            freed.await;
        }
    }

    /// Resolves when a message has found the room full since the last
    /// time this resolved.
    pub(crate) async fn found_full(&self) {
        self.full.notified().await;
    }

    /// Takes room when it is free. A message larger than the whole room
    /// is counted as filling it, so it still goes once the room is empty.
    fn take_if_free(self: &Arc<Self>, size: usize) -> Option<Permit> {
        let bytes = size.min(self.max_bytes);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.messages >= self.max_messages || used.bytes + bytes > self.max_bytes {
            drop(used);
            self.full.notify_one();
            return None;
        }
        used.messages += 1;
        used.bytes += bytes;
        Some(Permit {
            room: Arc::clone(self),
            bytes,
        })
    }

    /// The messages and bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (usize, usize) {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        (used.messages, used.bytes)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut used = self
                .room
                .used
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            used.messages -= 1;
            used.bytes -= self.bytes;
        }
        self.room.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::FutureExt as _;
    use futures::future::poll_immediate;

    use super::*;

    #[test]
    fn room_is_bounded_by_messages_and_by_bytes() {
        let room = Room::new(2, 100);
        let a = room.try_take(10).expect("room for a").permit;
        let b = room.try_take(10).expect("room for b").permit;
        assert!(room.try_take(10).is_none(), "two messages at most");
        drop(a);
        let c = room.try_take(80).expect("one message left the room").permit;
        assert_eq!(room.used(), (2, 90));
        drop((b, c));
        assert_eq!(room.used(), (0, 0), "dropped permits give room back");

        let big = room.try_take(60).expect("room for 60 bytes").permit;
        assert!(room.try_take(41).is_none(), "101 bytes are too many");
        drop(big);
    }

    #[test]
    fn a_message_larger_than_the_room_goes_alone() {
        let room = Room::new(10, 100);
        let small = room.try_take(1).expect("room").permit;
        assert!(room.try_take(500).is_none(), "it needs the whole room");
        drop(small);
        let huge = room.try_take(500).expect("an empty room takes it");
        assert_eq!(room.used(), (1, 100));
        drop(huge);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_and_newcomers_queue_behind() {
        let room = Room::new(1, 100);
        let held = room.try_take(1).expect("room").permit;
        let mut first = pin!(Arc::clone(&room).take(1));
        let mut second = pin!(Arc::clone(&room).take(1));
        assert!(
            poll_immediate(&mut first).await.is_none(),
            "the room is full"
        );
        assert!(poll_immediate(&mut second).await.is_none());

        drop(held);
        assert!(
            room.try_take(1).is_none(),
            "a newcomer does not overtake the line"
        );
        assert!(
            poll_immediate(&mut second).await.is_none(),
            "first comes first"
        );
        let got = first.now_or_never().expect("first is served");
        assert!(
            poll_immediate(&mut second).await.is_none(),
            "second waits while first holds its turn"
        );
        drop(got.turn);
        assert!(
            poll_immediate(&mut second).await.is_none(),
            "room is full again"
        );
        drop(got.permit);
        let got = second.now_or_never().expect("then second");
        drop(got);
        assert!(room.try_take(1).is_some(), "no one waits any more");
    }

    #[tokio::test]
    async fn leaving_the_line_lets_the_next_one_in() {
        let room = Room::new(1, 100);
        let held = room.try_take(1).expect("room").permit;
        let mut first = Box::pin(Arc::clone(&room).take(1));
        let mut second = pin!(Arc::clone(&room).take(1));
        assert!(poll_immediate(&mut first).await.is_none());
        assert!(poll_immediate(&mut second).await.is_none());
        drop(first);
        drop(held);
        assert!(second.now_or_never().is_some());
    }
}
