//! A live topic: its identity, its durable head, and the signal that it was
//! deleted. Messages themselves stay in storage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::TopicInfo;
use crate::names::TopicName;
use crate::offsets::Offset;
use crate::storage::{TopicId, TopicRecord};

/// The size assumed for a message before any was published.
const INITIAL_SIZE_ESTIMATE: usize = 1024;

pub(super) struct Topic {
    pub(super) id: TopicId,
    pub(super) name: TopicName,
    pub(super) created: SystemTime,
    /// The next offset: every offset below it is durable and readable.
    /// Streams wait on it for new messages.
    head_tx: watch::Sender<Offset>,
    /// A running estimate of message size, to size storage reads.
    size_estimate: AtomicUsize,
    /// Cancelled when the topic is deleted; subscriptions' tokens are its
    /// children.
    pub(super) deleted: CancellationToken,
}

impl Topic {
    pub(super) fn new(record: &TopicRecord) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            created: record.created,
            head_tx: watch::Sender::new(record.next_offset),
            size_estimate: AtomicUsize::new(INITIAL_SIZE_ESTIMATE),
            deleted: CancellationToken::new(),
        }
    }

    pub(super) fn head(&self) -> Offset {
        *self.head_tx.borrow()
    }

    /// Moves the head up to `to` (never down: appends complete in any
    /// order, and each completion implies every earlier offset is durable).
    pub(super) fn advance_head(&self, to: Offset) {
        self.head_tx.send_if_modified(|head| {
            let moved = to > *head;
            if moved {
                *head = to;
            }
            moved
        });
    }

    pub(super) fn watch_head(&self) -> watch::Receiver<Offset> {
        self.head_tx.subscribe()
    }

    /// Folds the mean size of a published batch into the estimate.
    pub(super) fn observe_size(&self, mean: usize) {
        let old = self.size_estimate.load(Ordering::Relaxed);
        self.size_estimate
            .store((old * 7 + mean.max(1)) / 8, Ordering::Relaxed);
    }

    pub(super) fn size_estimate(&self) -> usize {
        self.size_estimate.load(Ordering::Relaxed).max(1)
    }

    pub(super) fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            next_offset: self.head(),
            created: self.created,
        }
    }
}
