//! A [`Store`] for broker tests that stands in for a real one's timing: a
//! [`MemoryStore`] whose writes wait at a gate and then complete on a task
//! of their own — as the RocksDB writer thread completes a write whether or
//! not its caller still waits — and which logs the reads it serves.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};
use crate::storage::{
    Appended, Catalog, Commit, DeliveryUpdate, DuePosition, MemoryStore, NewMessage, ReadLimit,
    StorageClass, Store, StoreListener, StoreResult, StoredMessage, SubscriptionId,
    SubscriptionRecord, SubscriptionSettings, TopicId, TopicRecord, TopicSettings,
};

/// A read the store served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Read {
    Range(Range<Offset>, ReadLimit),
    Offsets(Vec<Offset>),
}

#[derive(Clone)]
pub(super) struct TestStore {
    pub(super) inner: MemoryStore,
    /// Writes wait for a permit; starts open.
    gate: Arc<Semaphore>,
    gated: Arc<std::sync::atomic::AtomicBool>,
    /// Notified when a write reaches the gate.
    pub(super) arrived: Arc<Notify>,
    reads: Arc<Mutex<Vec<Read>>>,
    /// What the store held right after each commit, as a crash at that
    /// moment would find it.
    committed: Arc<Mutex<Vec<Catalog>>>,
}

impl TestStore {
    pub(super) fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            gate: Arc::new(Semaphore::new(0)),
            gated: Arc::default(),
            arrived: Arc::new(Notify::new()),
            reads: Arc::default(),
            committed: Arc::default(),
        }
    }

    /// What the store held right after each commit.
    pub(super) fn committed(&self) -> Vec<Catalog> {
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, writes wait until [`TestStore::open_gate`].
    pub(super) fn close_gate(&self) {
        self.gate.forget_permits(self.gate.available_permits());
        self.gated.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets every waiting and later write through.
    pub(super) fn open_gate(&self) {
        self.gated.store(false, std::sync::atomic::Ordering::SeqCst);
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub(super) fn reads(&self) -> Vec<Read> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a write on a task of its own once the gate lets it through,
    /// and waits for it: dropping the caller does not stop the write.
    async fn write<T: Send + 'static>(
        &self,
        write: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        let gated = self.gated.load(std::sync::atomic::Ordering::SeqCst);
        let (gate, arrived) = (Arc::clone(&self.gate), Arc::clone(&self.arrived));
        let task = tokio::spawn(async move {
            if gated {
                arrived.notify_one();
                // Used up, not handed back: a later closing of the gate
                // must not find it.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            write.await
        });
        task.await.expect("the write task ran")
    }
}

#[async_trait]
impl Store for TestStore {
    async fn load(&self) -> StoreResult<Catalog> {
        self.inner.load().await
    }

    fn set_listener(&self, listener: Arc<dyn StoreListener>) {
        self.inner.set_listener(listener);
    }

    async fn create_topic(
        &self,
        name: &TopicName,
        settings: TopicSettings,
        storage: StorageClass,
    ) -> StoreResult<TopicRecord> {
        let (inner, name) = (self.inner.clone(), name.clone());
        self.write(async move { inner.create_topic(&name, settings, storage).await })
            .await
    }

    async fn update_topic(&self, record: TopicRecord) -> StoreResult<()> {
        let inner = self.inner.clone();
        self.write(async move { inner.update_topic(record).await })
            .await
    }

    async fn reclaim(&self, topic: TopicId) -> StoreResult<()> {
        self.inner.reclaim(topic).await
    }

    async fn delete_topic(&self, topic: TopicId) -> StoreResult<()> {
        let inner = self.inner.clone();
        self.write(async move { inner.delete_topic(topic).await })
            .await
    }

    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended> {
        let inner = self.inner.clone();
        self.write(async move { inner.append(topic, messages).await })
            .await
    }

    async fn trim(&self, topic: TopicId, before: Offset, drop_bytes: u64) -> StoreResult<Offset> {
        let inner = self.inner.clone();
        self.write(async move { inner.trim(topic, before, drop_bytes).await })
            .await
    }

    async fn read(
        &self,
        topic: TopicId,
        range: Range<Offset>,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        let read = Read::Range(range.clone(), limit);
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(read);
        self.inner.read(topic, range, limit).await
    }

    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>> {
        let read = Read::Offsets(offsets.clone());
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(read);
        self.inner.read_offsets(topic, offsets).await
    }

    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset> {
        self.inner.offset_at_time(topic, time).await
    }

    async fn delayed(
        &self,
        topic: TopicId,
        after: Option<DuePosition>,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<DuePosition>> {
        self.inner.delayed(topic, after, until, limit).await
    }

    async fn count_delayed(&self, topic: TopicId, time: SystemTime) -> StoreResult<u64> {
        self.inner.count_delayed(topic, time).await
    }

    async fn forget_delayed(&self, topic: TopicId, before: SystemTime) -> StoreResult<()> {
        self.inner.forget_delayed(topic, before).await
    }

    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        settings: SubscriptionSettings,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord> {
        let (inner, name) = (self.inner.clone(), name.clone());
        self.write(async move {
            inner
                .create_subscription(&name, topic, settings, initial)
                .await
        })
        .await
    }

    async fn update_subscription(&self, record: SubscriptionRecord) -> StoreResult<()> {
        let inner = self.inner.clone();
        self.write(async move { inner.update_subscription(record).await })
            .await
    }

    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()> {
        let inner = self.inner.clone();
        self.write(async move { inner.delete_subscription(subscription).await })
            .await
    }

    async fn save_deliveries(&self, updates: Vec<DeliveryUpdate>) -> StoreResult<()> {
        self.inner.save_deliveries(updates).await
    }

    async fn commit(&self, commit: Commit) -> StoreResult<Vec<Appended>> {
        let (inner, committed) = (self.inner.clone(), Arc::clone(&self.committed));
        self.write(async move {
            let appended = inner.commit(commit).await?;
            let snapshot = inner.load().await?;
            committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(snapshot);
            Ok(appended)
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        self.inner.close().await
    }
}
