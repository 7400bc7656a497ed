//! [`MemoryStore`]: the [`Store`] contract held in memory, for fast tests of
//! the broker.
//!
//! One `std::sync::Mutex` guards all state; every method takes it briefly
//! and never across an `.await`. Nothing survives the process, so this store
//! must not be used where durability matters. It is not what memory topics
//! ([`StorageClass::Memory`]) are, but it keeps their rules: they are
//! bounded at each append and emptied by [`MemoryStore::reopen`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;

use super::codec;
use super::{
    Appended, Catalog, Commit, DeadLetters, DeliveryRecord, DeliveryUpdate, DuePosition, Duplicate,
    NewMessage, ReadLimit, StorageClass, Store, StoreError, StoreListener, StoreResult,
    StoredMessage, StoredSubscription, SubscriptionId, SubscriptionRecord, SubscriptionSettings,
    TopicId, TopicRecord, TopicSettings,
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
    listener: Arc<Mutex<Option<Arc<dyn StoreListener>>>>,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<TopicId, TopicData>,
    subscriptions: BTreeMap<SubscriptionId, SubscriptionData>,
    next_topic: u64,
    next_subscription: u64,
}

#[derive(Debug)]
struct TopicData {
    record: TopicRecord,
    messages: BTreeMap<Offset, StoredMessage>,
    /// Remembered ids: the offset stored with each, and when.
    ids: HashMap<String, (Offset, SystemTime)>,
    /// The index of delayed messages.
    delayed: BTreeSet<DuePosition>,
}

#[derive(Debug)]
struct SubscriptionData {
    record: SubscriptionRecord,
    acks: AckState,
    deliveries: BTreeMap<Offset, DeliveryRecord>,
    dead_letters: DeadLetters,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new open handle on this store's data, as after a restart; this
    /// handle and its clones are not reopened, and the new one has no
    /// listener yet. Memory topics lose their messages and ids, as a
    /// restart empties them; their offsets go on where they were.
    pub fn reopen(&self) -> Self {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let memory = state
                .topics
                .values_mut()
                .filter(|t| t.record.storage == StorageClass::Memory);
            for data in memory {
                data.messages.clear();
                data.ids.clear();
                data.record.first_offset = data.record.next_offset;
                data.record.retained_bytes = 0;
            }
        }
        Self {
            state: Arc::clone(&self.state),
            closed: Arc::new(AtomicBool::new(false)),
            listener: Arc::default(),
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

    fn listener(&self) -> Option<Arc<dyn StoreListener>> {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Appends under the lock, telling the listener there, so that it hears
    /// of appends in offset order.
    fn append_locked(
        &self,
        state: &mut State,
        topic: TopicId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Appended> {
        let data = state.topic_mut(topic)?;
        let first_offset = data.record.next_offset;
        let last_time = data.messages.last_key_value().map(|(_, m)| m.publish_time);
        let publish_time = last_time.map_or_else(SystemTime::now, |t| t.max(SystemTime::now()));
        let window = data.record.settings.dedup_window;
        data.ids
            .retain(|_, (_, stored)| *stored + window > publish_time);
        let mut duplicates = Vec::new();
        let mut offset = first_offset;
        for (index, message) in messages.iter().enumerate() {
            if !message.id.is_empty() && !window.is_zero() {
                if let Some(&(original, _)) = data.ids.get(&*message.id) {
                    duplicates.push(Duplicate {
                        index,
                        offset: original,
                    });
                    continue;
                }
                data.ids
                    .insert(message.id.to_string(), (offset, publish_time));
            }
            data.record.retained_bytes += stored_size(message, publish_time);
            let stored = message.stored_at(offset, publish_time);
            if let Some(due) = stored.deliver_at {
                data.delayed.insert(DuePosition { due, offset });
            }
            data.messages.insert(offset, stored);
            offset += 1;
        }
        data.record.next_offset = offset;
        let first_kept = data.record.first_offset;
        if data.record.storage == StorageClass::Memory {
            data.drop_beyond_bound();
        }
        let appended = Appended {
            first_offset,
            publish_time,
            retained_bytes: data.record.retained_bytes,
            duplicates,
        };
        // Told under the lock, so that the listener hears of appends in
        // offset order.
        if let Some(listener) = self.listener() {
            listener.appended(topic, &appended, appended.stored(messages));
            if data.record.first_offset > first_kept {
                let record = &data.record;
                listener.truncated(topic, record.first_offset, record.retained_bytes);
            }
        }
        Ok(appended)
    }
}

/// The size of a message as the disk store keeps it.
fn stored_size(message: &NewMessage, publish_time: SystemTime) -> u64 {
    codec::stored_size(codec::encoded_len(message, publish_time))
}

impl TopicData {
    /// Drops a memory topic's oldest messages until it is within its
    /// bound.
    fn drop_beyond_bound(&mut self) {
        let retention = self.record.settings.retention;
        let record = &mut self.record;
        while record.first_offset < record.next_offset
            && retention.memory_exceeded(
                record.next_offset - record.first_offset,
                record.retained_bytes,
            )
        {
            if let Some(oldest) = self.messages.remove(&record.first_offset) {
                let size = stored_size(&new_message(&oldest), oldest.publish_time);
                record.retained_bytes = record.retained_bytes.saturating_sub(size);
            }
            record.first_offset += 1;
        }
    }
}

fn new_message(message: &StoredMessage) -> NewMessage {
    NewMessage {
        payload: message.payload.clone(),
        key: message.key.clone(),
        attributes: message.attributes.clone(),
        id: message.id.clone(),
        deliver_at: message.deliver_at,
        deliver_after: None,
    }
}

/// Stores delivery state under the lock; updates of subscriptions that no
/// longer exist are ignored.
fn save_locked(state: &mut State, updates: Vec<DeliveryUpdate>) {
    for update in updates {
        let Some(data) = state.subscriptions.get_mut(&update.subscription) else {
            continue;
        };
        data.acks = update.acks;
        for (offset, record) in update.records {
            match record {
                Some(record) => data.deliveries.insert(offset, record),
                None => data.deliveries.remove(&offset),
            };
        }
        if let Some(dead) = update.dead_letters {
            data.dead_letters = dead;
        }
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
        let subscriptions = state
            .subscriptions
            .values()
            .map(|s| StoredSubscription {
                record: s.record.clone(),
                acks: s.acks.clone(),
                deliveries: s.deliveries.iter().map(|(&o, &r)| (o, r)).collect(),
                dead_letters: s.dead_letters.clone(),
            })
            .collect();
        Ok(Catalog {
            topics: state.topics.values().map(|t| t.record.clone()).collect(),
            subscriptions,
        })
    }

    fn set_listener(&self, listener: Arc<dyn StoreListener>) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    async fn create_topic(
        &self,
        name: &TopicName,
        settings: TopicSettings,
        storage: StorageClass,
    ) -> StoreResult<TopicRecord> {
        let mut state = self.lock()?;
        state.next_topic += 1;
        let record = TopicRecord {
            id: TopicId(state.next_topic),
            name: name.clone(),
            first_offset: 0,
            next_offset: 0,
            created: SystemTime::now(),
            settings,
            retained_bytes: 0,
            storage,
        };
        let data = TopicData {
            record: record.clone(),
            messages: BTreeMap::new(),
            ids: HashMap::new(),
            delayed: BTreeSet::new(),
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
        state.subscriptions.retain(|_, s| s.record.topic != topic);
        Ok(())
    }

    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended> {
        let mut state = self.lock()?;
        self.append_locked(&mut state, topic, messages)
    }

    async fn commit(&self, commit: Commit) -> StoreResult<Vec<Appended>> {
        let mut state = self.lock()?;
        if let Some((topic, _)) = commit
            .appends
            .iter()
            .find(|(topic, _)| !state.topics.contains_key(topic))
        {
            return Err(StoreError::TopicNotFound(*topic));
        }
        let appended = commit
            .appends
            .into_iter()
            .map(|(topic, messages)| self.append_locked(&mut state, topic, messages))
            .collect::<StoreResult<Vec<_>>>()?;
        save_locked(&mut state, commit.deliveries);
        Ok(appended)
    }

    async fn trim(&self, topic: TopicId, before: Offset, drop_bytes: u64) -> StoreResult<Offset> {
        let mut state = self.lock()?;
        let data = state.topic_mut(topic)?;
        let mut end = before.min(data.record.next_offset);
        let mut dropped = 0;
        for (&offset, message) in &data.messages {
            if offset >= end && dropped >= drop_bytes {
                break;
            }
            dropped += stored_size(&new_message(message), message.publish_time);
            end = end.max(offset + 1);
        }
        if end <= data.record.first_offset {
            return Ok(data.record.first_offset);
        }
        data.messages = data.messages.split_off(&end);
        data.record.first_offset = end;
        data.record.retained_bytes = data.record.retained_bytes.saturating_sub(dropped);
        if let Some(listener) = self.listener() {
            listener.truncated(topic, end, data.record.retained_bytes);
        }
        Ok(end)
    }

    async fn read(
        &self,
        topic: TopicId,
        range: Range<Offset>,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        let state = self.lock()?;
        let Some(data) = state.topics.get(&topic) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if range.is_empty() {
            return Ok(out);
        }
        let mut bytes = 0;
        for message in data.messages.range(range).map(|(_, m)| m) {
            if out.len() >= limit.max_messages {
                break;
            }
            out.push(message.clone());
            bytes += message.wire_size();
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
            .filter_map(|o| data.messages.get(&o).cloned());
        Ok(found.collect())
    }

    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset> {
        let mut state = self.lock()?;
        let data = state.topic_mut(topic)?;
        let first_at_or_after = data
            .messages
            .values()
            .find(|m| m.publish_time >= time)
            .map(|m| m.offset);
        Ok(first_at_or_after.unwrap_or(data.record.next_offset))
    }

    async fn delayed(
        &self,
        topic: TopicId,
        after: Option<DuePosition>,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<DuePosition>> {
        let state = self.lock()?;
        let Some(data) = state.topics.get(&topic) else {
            return Ok(Vec::new());
        };
        let until = codec::truncate_to_micros(until);
        Ok(data
            .delayed
            .iter()
            .filter(|p| after.is_none_or(|after| **p > after))
            .take_while(|p| p.due <= until)
            .take(limit)
            .copied()
            .collect())
    }

    async fn count_delayed(&self, topic: TopicId, time: SystemTime) -> StoreResult<u64> {
        let state = self.lock()?;
        let Some(data) = state.topics.get(&topic) else {
            return Ok(0);
        };
        let time = codec::truncate_to_micros(time);
        Ok(data.delayed.iter().filter(|p| p.due > time).count() as u64)
    }

    async fn forget_delayed(&self, topic: TopicId, before: SystemTime) -> StoreResult<()> {
        let mut state = self.lock()?;
        if let Some(data) = state.topics.get_mut(&topic) {
            data.delayed.retain(|p| p.due >= before);
        }
        Ok(())
    }

    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        settings: SubscriptionSettings,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord> {
        let mut state = self.lock()?;
        state.topic_mut(topic)?;
        state.next_subscription += 1;
        let record = SubscriptionRecord {
            id: SubscriptionId(state.next_subscription),
            name: name.clone(),
            topic,
            settings,
            created: SystemTime::now(),
        };
        let data = SubscriptionData {
            record: record.clone(),
            acks: initial,
            deliveries: BTreeMap::new(),
            dead_letters: DeadLetters::default(),
        };
        state.subscriptions.insert(record.id, data);
        Ok(record)
    }

    async fn update_topic(&self, record: TopicRecord) -> StoreResult<()> {
        let mut state = self.lock()?;
        state.topic_mut(record.id)?.record.settings = record.settings;
        Ok(())
    }

    async fn reclaim(&self, _topic: TopicId) -> StoreResult<()> {
        Ok(())
    }

    async fn update_subscription(&self, record: SubscriptionRecord) -> StoreResult<()> {
        let mut state = self.lock()?;
        match state.subscriptions.get_mut(&record.id) {
            Some(data) if data.record.topic == record.topic => {
                data.record = record;
                Ok(())
            }
            _ => Err(StoreError::SubscriptionNotFound(record.id)),
        }
    }

    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()> {
        let mut state = self.lock()?;
        match state.subscriptions.remove(&subscription) {
            Some(_) => Ok(()),
            None => Err(StoreError::SubscriptionNotFound(subscription)),
        }
    }

    async fn save_deliveries(&self, updates: Vec<DeliveryUpdate>) -> StoreResult<()> {
        let mut state = self.lock()?;
        save_locked(&mut state, updates);
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
        let topic = store
            .create_topic(&name, TopicSettings::default(), StorageClass::Disk)
            .await
            .expect("created");
        let clone = store.clone();
        store.close().await.expect("closed");
        assert!(matches!(clone.load().await, Err(StoreError::Closed)));
        let reopened = store.reopen();
        let catalog = reopened.load().await.expect("loads");
        assert_eq!(catalog.topics, vec![topic]);
    }
}
