//! [`MemoryStore`]: the [`Store`] contract held in memory, for fast tests of
//! the broker.
//!
//! One `std::sync::Mutex` guards all state; every method takes it briefly
//! and never across an `.await`. Nothing survives the process, so this store
//! must not be used where durability matters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    Appended, Catalog, NewMessage, ReadLimit, Store, StoreError, StoreResult, StoredMessage,
    SubscriptionId, SubscriptionRecord, TopicId, TopicRecord,
};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};

/// An in-memory [`Store`].
///
/// Clones are handles on the same store: closing one closes them all.
/// [`MemoryStore::reopen`] stands in for a restart: it returns a fresh, open
/// handle on the same data, as if the process had closed its store and
/// opened it again.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    closed: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<TopicId, TopicData>,
    subscriptions: BTreeMap<SubscriptionId, (SubscriptionRecord, AckState)>,
    next_topic: u64,
    next_subscription: u64,
}

#[derive(Debug)]
struct TopicData {
    record: TopicRecord,
    /// The message at offset `i` is `messages[i]`.
    messages: Vec<StoredMessage>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new open handle on this store's data, as after a restart; this
    /// handle and its clones are not reopened.
    pub fn reopen(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Locks the state, or fails when this handle is closed.
    fn lock(&self) -> StoreResult<MutexGuard<'_, State>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters to tests; carry on with the data.
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl State {
    fn topic_mut(&mut self, topic: TopicId) -> StoreResult<&mut TopicData> {
        self.topics
            .get_mut(&topic)
            .ok_or(StoreError::TopicNotFound(topic))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self) -> StoreResult<Catalog> {
        let state = self.lock()?;
        Ok(Catalog {
            topics: state.topics.values().map(|t| t.record.clone()).collect(),
            subscriptions: state.subscriptions.values().cloned().collect(),
        })
    }

    async fn create_topic(&self, name: &TopicName) -> StoreResult<TopicRecord> {
        let mut state = self.lock()?;
        state.next_topic += 1;
        let record = TopicRecord {
            id: TopicId(state.next_topic),
            name: name.clone(),
            next_offset: 0,
            created: SystemTime::now(),
        };
        let data = TopicData {
            record: record.clone(),
            messages: Vec::new(),
        };
        state.topics.insert(record.id, data);
        Ok(record)
    }

    async fn delete_topic(&self, topic: TopicId) -> StoreResult<()> {
        let mut state = self.lock()?;
        state
            .topics
            .remove(&topic)
            .ok_or(StoreError::TopicNotFound(topic))?;
        state
            .subscriptions
            .retain(|_, (record, _)| record.topic != topic);
        Ok(())
    }

    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended> {
        let mut state = self.lock()?;
        let data = state.topic_mut(topic)?;
        let first_offset = data.record.next_offset;
        let last_time = data.messages.last().map(|m| m.publish_time);
        let publish_time = last_time.map_or_else(SystemTime::now, |t| t.max(SystemTime::now()));
        let stored = messages
            .into_iter()
            .zip(first_offset..)
            .map(|(m, offset)| StoredMessage {
                offset,
                publish_time,
                payload: m.payload,
                key: m.key,
                attributes: m.attributes,
            });
        data.messages.extend(stored);
        data.record.next_offset = data.messages.len() as Offset;
        Ok(Appended {
            first_offset,
            publish_time,
        })
    }

    async fn read(
        &self,
        topic: TopicId,
        from: Offset,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        let state = self.lock()?;
        let Some(data) = state.topics.get(&topic) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(data.messages.len());
        let mut out = Vec::new();
        let mut bytes = 0;
        for message in data.messages[start..].iter().take(limit.max_messages) {
            out.push(message.clone());
            bytes += message.payload.len();
            if bytes >= limit.max_bytes {
                break;
            }
        }
        Ok(out)
    }

    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>> {
        let state = self.lock()?;
        let Some(data) = state.topics.get(&topic) else {
            return Ok(Vec::new());
        };
        let found = offsets
            .into_iter()
            .filter_map(|o| data.messages.get(usize::try_from(o).ok()?).cloned());
        Ok(found.collect())
    }

    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset> {
        let mut state = self.lock()?;
        let data = state.topic_mut(topic)?;
        let index = data.messages.partition_point(|m| m.publish_time < time);
        Ok(index as Offset)
    }

    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        ack_deadline: Duration,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord> {
        let mut state = self.lock()?;
        state.topic_mut(topic)?;
        state.next_subscription += 1;
        let record = SubscriptionRecord {
            id: SubscriptionId(state.next_subscription),
            name: name.clone(),
            topic,
            ack_deadline,
            created: SystemTime::now(),
        };
        state
            .subscriptions
            .insert(record.id, (record.clone(), initial));
        Ok(record)
    }

    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()> {
        let mut state = self.lock()?;
        match state.subscriptions.remove(&subscription) {
            Some(_) => Ok(()),
            None => Err(StoreError::SubscriptionNotFound(subscription)),
        }
    }

    async fn save_ack_states(&self, states: Vec<(SubscriptionId, AckState)>) -> StoreResult<()> {
        let mut state = self.lock()?;
        for (id, ack_state) in states {
            if let Some((_, stored)) = state.subscriptions.get_mut(&id) {
                *stored = ack_state;
            }
        }
        Ok(())
    }

    async fn close(&self) -> StoreResult<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopen_gives_an_open_handle_on_the_same_data() {
        let store = MemoryStore::new();
        let name = TopicName::new("t").expect("valid name");
        let topic = store.create_topic(&name).await.expect("created");
        let clone = store.clone();
        store.close().await.expect("closed");
        assert!(matches!(clone.load().await, Err(StoreError::Closed)));
        let reopened = store.reopen();
        let catalog = reopened.load().await.expect("loads");
        assert_eq!(catalog.topics, vec![topic]);
    }
}
