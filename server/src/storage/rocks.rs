//! [`RocksStore`]: the [`Store`] contract on an embedded RocksDB database.
//!
//! Layout, in three fixed column families:
//!
//! - `messages`: topic id ‖ offset (big-endian) → a codec-encoded message;
//! - `subscriptions`: subscription id → its ack state;
//! - `meta`: `T`‖id → topic record, `H`‖id → the topic's head (its
//!   `next_offset`), `S`‖id → subscription record, `NT` / `NS` → the last
//!   topic / subscription id handed out.
//!
//! All writes go through one writer thread (see `writer`), which batches the
//! requests waiting for it into one `WriteBatch`: group commit. A topic's
//! head is written in the same batch as its messages, so after a crash the
//! head is exactly past the last stored message and no offset is handed out
//! twice. Reads (see `read`) run on `spawn_blocking` straight on the database, with
//! short-lived iterators. This is the only module that names RocksDB; it
//! knows nothing of leases, streams or gRPC.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Env,
    Options,
};
use tokio::sync::{Semaphore, oneshot};

use super::{
    Appended, Catalog, NewMessage, ReadLimit, Store, StoreError, StoreResult, StoredMessage,
    SubscriptionId, SubscriptionRecord, TopicId, TopicRecord,
};
use crate::names::{SubscriptionName, TopicName};
use crate::offsets::{AckState, Offset};

mod batch;
mod read;
mod syncer;
mod writer;

use read::{find_offset_at_time, load_catalog, publish_time_at, read_at_offsets, read_messages};

use writer::{NewSubscription, Op, Request};

/// When appended messages are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write batch holding appends is synced before its callers get
    /// `Ok`: appends survive a power loss.
    Always,
    /// Writes are acknowledged once in the operating system's cache (they
    /// survive a crash of the process) and synced at this interval when
    /// something was written since the last sync; a power loss can lose the
    /// last interval's appends.
    Interval(Duration),
}

const CF_MESSAGES: &str = "messages";
const CF_SUBSCRIPTIONS: &str = "subscriptions";
const CF_META: &str = "meta";

const TOPIC_PREFIX: u8 = b'T';
const HEAD_PREFIX: u8 = b'H';
const SUBSCRIPTION_PREFIX: u8 = b'S';
const LAST_TOPIC_ID_KEY: &[u8] = b"NT";
const LAST_SUBSCRIPTION_ID_KEY: &[u8] = b"NS";

/// Requests that may wait for the writer at once; callers beyond this wait
/// for a permit instead of growing the queue.
const MAX_QUEUED_REQUESTS: usize = 4096;
/// Memory shared by the block caches of all column families.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

fn meta_key(prefix: u8, id: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn engine(
    context: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Engine {
        context,
        source: source.into(),
    }
}

/// A column family the database was opened with.
fn column<'a>(db: &'a DB, name: &'static str) -> StoreResult<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| {
        engine(
            "finding a column family",
            format!("column family {name:?} is missing"),
        )
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain handles that a panic cannot leave torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`Store`] on RocksDB, with group commit.
///
/// Call [`Store::close`] before dropping it: that syncs the write-ahead log,
/// stops the writer thread and releases the database off the async threads.
/// A store dropped without closing does the same in `drop`, blocking the
/// dropping thread until the writer has stopped, so that the database is
/// never released behind the process's back while it exits.
#[derive(Debug)]
pub struct RocksStore {
    /// `None` once closed.
    db: Mutex<Option<Arc<DB>>>,
    requests_tx: std::sync::mpsc::Sender<Request>,
    /// One permit per request queued for or being handled by the writer.
    permits: Arc<Semaphore>,
    writer: Mutex<Option<JoinHandle<u64>>>,
    /// Syncs the log every interval under [`SyncPolicy::Interval`].
    syncer: Mutex<Option<syncer::Syncer>>,
}

impl RocksStore {
    /// Opens (or creates) the database in the directory `path` and starts
    /// its writer thread. The blocking work runs on `spawn_blocking`.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when RocksDB cannot open the directory (it is
    /// in use by another process, say); [`StoreError::Corrupt`] when its
    /// metadata cannot be decoded.
    pub async fn open(path: &Path, policy: SyncPolicy) -> StoreResult<RocksStore> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, policy))
            .await
            .map_err(|e| engine("opening the database", e))?
    }

    fn open_blocking(path: &Path, policy: SyncPolicy) -> StoreResult<RocksStore> {
        let db = open_database(path)?;
        let db = Arc::new(db);
        let unsynced = syncer::Unsynced::default();
        let writer = writer::Writer::recover(Arc::clone(&db), policy, Arc::clone(&unsynced))?;
        let syncer = match policy {
            SyncPolicy::Always => None,
            SyncPolicy::Interval(interval) => Some(
                syncer::Syncer::start(Arc::clone(&db), interval, unsynced)
                    .map_err(|e| engine("starting the syncer thread", e))?,
            ),
        };
        let (requests_tx, requests_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("tidings-writer".to_owned())
            .spawn(move || writer.run(requests_rx))
            .map_err(|e| engine("starting the writer thread", e))?;
        tracing::info!(path = %path.display(), ?policy, "storage opened");
        Ok(RocksStore {
            db: Mutex::new(Some(db)),
            requests_tx,
            permits: Arc::new(Semaphore::new(MAX_QUEUED_REQUESTS)),
            writer: Mutex::new(Some(handle)),
            syncer: Mutex::new(syncer),
        })
    }

    /// Sends `op` to the writer and waits for its answer.
    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op,
    ) -> StoreResult<T> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            op: op(reply_tx),
            permit: Some(permit),
        };
        self.requests_tx
            .send(request)
            .map_err(|_| StoreError::Closed)?;
        // The writer drops the reply unanswered only when it is closing.
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `read` on a blocking thread with the database.
    async fn read_with<T: Send + 'static>(
        &self,
        context: &'static str,
        read: impl FnOnce(&DB) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let db = lock(&self.db).clone().ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|e| engine(context, e))?
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        let Some(writer) = lock(&self.writer).take() else {
            return;
        };
        let (reply_tx, _reply_rx) = oneshot::channel();
        let request = Request {
            op: Op::Close { reply: reply_tx },
            permit: None,
        };
        // A send fails only when the writer has stopped already.
        let _ = self.requests_tx.send(request);
        if writer.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
        lock(&self.syncer).take();
        lock(&self.db).take();
    }
}

/// Opens the database with the column families and options of this
/// layout, creating what is missing. Blocks.
fn open_database(path: &Path) -> StoreResult<DB> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options.set_max_background_jobs(2);
    db_options.set_keep_log_file_num(5);
    // Bound the write-ahead log kept alive by a rarely written column
    // family (meta), which would otherwise never be flushed.
    db_options.set_max_total_wal_size(256 << 20);
    db_options.set_env(&background_env()?);
    let families = [CF_MESSAGES, CF_SUBSCRIPTIONS, CF_META]
        .map(|name| ColumnFamilyDescriptor::new(name, column_options(&cache)));
    DB::open_cf_descriptors(&db_options, path, families)
        .map_err(|e| engine("opening the database", e))
}

/// The environment whose flush and compaction threads run at the lowest CPU
/// priority: when they compete with the broker's own threads for the
/// cores, a delivery waits on them for less. Measured on two cores, a
/// memtable flush during `bench e2e` raised p99.9 latency to 2–6 ms; at the
/// lowest priority it stayed at 1.2–2.4 ms, and publishing was no slower.
fn background_env() -> StoreResult<Env> {
    let mut env = Env::new().map_err(|e| engine("creating the storage environment", e))?;
    env.lower_thread_pool_cpu_priority();
    env.lower_high_priority_thread_pool_cpu_priority();
    Ok(env)
}

fn column_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks live in the block cache too, so memory stays
    // within the cache however many table files a long backlog makes. Level
    // 0's stay pinned: reads of recent messages, the common catch-up, need
    // them most.
    // Draining a backlog of 10 million messages peaked at 221 MiB instead
    // of 250 MiB, at the same speed.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_block_based_table_factory(&table);
    options
}

#[async_trait]
impl Store for RocksStore {
    async fn load(&self) -> StoreResult<Catalog> {
        self.read_with("loading the catalog", load_catalog).await
    }

    async fn create_topic(&self, name: &TopicName) -> StoreResult<TopicRecord> {
        let name = name.clone();
        self.submit(|reply| Op::CreateTopic { name, reply }).await
    }

    async fn delete_topic(&self, topic: TopicId) -> StoreResult<()> {
        self.submit(|reply| Op::DeleteTopic { topic, reply }).await
    }

    async fn append(&self, topic: TopicId, messages: Vec<NewMessage>) -> StoreResult<Appended> {
        self.submit(|reply| Op::Append {
            topic,
            messages,
            reply,
        })
        .await
    }

    async fn read(
        &self,
        topic: TopicId,
        from: Offset,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.read_with("reading messages", move |db| {
            read_messages(db, topic, from, limit)
        })
        .await
    }

    async fn read_offsets(
        &self,
        topic: TopicId,
        offsets: Vec<Offset>,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.read_with("reading messages", move |db| {
            read_at_offsets(db, topic, offsets)
        })
        .await
    }

    async fn offset_at_time(&self, topic: TopicId, time: SystemTime) -> StoreResult<Offset> {
        self.read_with("finding an offset by time", move |db| {
            find_offset_at_time(db, topic, time)
        })
        .await
    }

    async fn create_subscription(
        &self,
        name: &SubscriptionName,
        topic: TopicId,
        ack_deadline: Duration,
        initial: AckState,
    ) -> StoreResult<SubscriptionRecord> {
        let name = name.clone();
        let new = NewSubscription {
            name,
            topic,
            ack_deadline,
            initial,
        };
        self.submit(|reply| Op::CreateSubscription { new, reply })
            .await
    }

    async fn delete_subscription(&self, subscription: SubscriptionId) -> StoreResult<()> {
        self.submit(|reply| Op::DeleteSubscription {
            subscription,
            reply,
        })
        .await
    }

    async fn save_ack_states(&self, states: Vec<(SubscriptionId, AckState)>) -> StoreResult<()> {
        self.submit(|reply| Op::SaveAckStates { states, reply })
            .await
    }

    async fn close(&self) -> StoreResult<()> {
        // Refuse new requests; those already queued are written first.
        self.permits.close();
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            op: Op::Close { reply: reply_tx },
            permit: None,
        };
        let synced = match self.requests_tx.send(request) {
            // No answer means another close got there first.
            Ok(()) => reply_rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let writer = lock(&self.writer).take();
        let syncer = lock(&self.syncer).take();
        let db = lock(&self.db).take();
        // Joining and releasing the database all block.
        tokio::task::spawn_blocking(move || {
            let joined = writer.map(JoinHandle::join).transpose();
            drop(syncer);
            drop(db);
            joined
                .map(drop)
                .map_err(|_| engine("stopping the writer", "the writer thread panicked"))
        })
        .await
        .map_err(|e| engine("stopping the writer", e))??;
        if synced.is_ok() {
            tracing::info!("storage closed");
        }
        synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn name(s: &str) -> TopicName {
        TopicName::new(s).expect("valid name")
    }

    /// The nice values of this process's threads named `name`.
    #[cfg(target_os = "linux")]
    fn nice_of_threads(name: &str) -> anyhow::Result<Vec<i64>> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            let task = task?.path();
            // Threads of other tests come and go meanwhile: skip any that
            // is gone by the time it is read.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("stat")),
            ) else {
                continue;
            };
            if comm.trim() != name {
                continue;
            }
            // Fields after the parenthesised name start at field 3; nice is
            // field 19.
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let field = after_name.split_whitespace().nth(16);
            nice.push(field.unwrap_or_default().parse()?);
        }
        Ok(nice)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn flushes_run_at_the_lowest_cpu_priority() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = open_database(dir.path())?;
        let messages = column(&db, CF_MESSAGES)?;
        db.put_cf(messages, b"k", b"v")?;
        // A pool thread takes on the priority when it starts a job.
        db.flush_cf(messages)?;
        let nice = nice_of_threads("rocksdb:high")?;
        assert!(nice.contains(&19), "no flush thread at nice 19: {nice:?}");
        Ok(())
    }

    fn message(payload: &'static [u8]) -> NewMessage {
        NewMessage {
            payload: Bytes::from_static(payload),
            ..NewMessage::default()
        }
    }

    async fn append_and_reopen(policy: SyncPolicy) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open(dir.path(), policy).await?;
        let topic = store.create_topic(&name("t")).await?;
        let appended = store
            .append(topic.id, vec![message(b"a"), message(b"b")])
            .await?;
        assert_eq!(appended.first_offset, 0);
        store.close().await?;
        let store = RocksStore::open(dir.path(), policy).await?;
        let catalog = store.load().await?;
        assert_eq!(catalog.topics[0].next_offset, 2);
        let read = store.read_offsets(topic.id, vec![0, 1]).await?;
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].payload, Bytes::from_static(b"b"));
        store.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn always_policy_keeps_appends_across_reopen() -> anyhow::Result<()> {
        append_and_reopen(SyncPolicy::Always).await
    }

    #[tokio::test]
    async fn interval_policy_keeps_appends_across_reopen() -> anyhow::Result<()> {
        append_and_reopen(SyncPolicy::Interval(Duration::from_millis(5))).await
    }

    #[tokio::test]
    async fn second_open_of_a_directory_in_use_fails_cleanly() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open(dir.path(), SyncPolicy::Always).await?;
        let second = RocksStore::open(dir.path(), SyncPolicy::Always).await;
        assert!(
            matches!(second, Err(StoreError::Engine { .. })),
            "{second:?}"
        );
        store.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn dropped_store_without_close_loses_no_acknowledged_append() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store =
            RocksStore::open(dir.path(), SyncPolicy::Interval(Duration::from_secs(60))).await?;
        let topic = store.create_topic(&name("t")).await?;
        store.append(topic.id, vec![message(b"x")]).await?;
        let writer = lock(&store.writer).take();
        drop(store);
        // The writer sees its queue closed, syncs and lets go of the
        // database; wait for that before opening again.
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await?
                .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        }
        let store = RocksStore::open(dir.path(), SyncPolicy::Always).await?;
        let appended = store.append(topic.id, vec![message(b"y")]).await?;
        assert_eq!(appended.first_offset, 1, "the head survived");
        store.close().await?;
        Ok(())
    }

    /// Set in the child process of the crash test: where its store lives.
    const CRASH_DIR_ENV: &str = "TIDINGS_TEST_CRASH_DIR";
    const CRASH_BATCH: usize = 3;

    /// The child of `kill_9_during_appends_loses_no_acknowledged_append`:
    /// appends from several tasks and prints every acknowledged batch
    /// until it is killed. Does nothing when run on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run as a child process by the crash test"]
    async fn crash_child_appends_until_killed() -> anyhow::Result<()> {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return Ok(());
        };
        // No sync for an hour: only the write itself protects an append.
        let policy = SyncPolicy::Interval(Duration::from_secs(3600));
        let store = Arc::new(RocksStore::open(Path::new(&dir), policy).await?);
        let topic = store.create_topic(&name("crash")).await?.id;
        println!("crash-topic {}", topic.0);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..4 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                for seq in 0.. {
                    let tag = format!("{task}-{seq}");
                    let batch = (0..CRASH_BATCH)
                        .map(|i| NewMessage {
                            payload: Bytes::from(format!("{tag}-{i}")),
                            ..NewMessage::default()
                        })
                        .collect();
                    let appended = store.append(topic, batch).await?;
                    println!("crash-acked {} {tag}", appended.first_offset);
                }
                anyhow::Ok(())
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        Ok(())
    }

    /// Parses the child's output into the topic and the acknowledged
    /// batches (first offset, tag). A marker may follow the test harness's
    /// own words on a line.
    fn parse_crash_line(
        line: &str,
        topic: &mut Option<TopicId>,
        acked: &mut Vec<(Offset, String)>,
    ) {
        if let Some((_, id)) = line.split_once("crash-topic ") {
            *topic = id.trim().parse().ok().map(TopicId);
        } else if let Some((_, rest)) = line.split_once("crash-acked ")
            && let Some((offset, tag)) = rest.trim().split_once(' ')
            && let Ok(offset) = offset.parse()
        {
            acked.push((offset, tag.to_owned()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_during_appends_loses_no_acknowledged_append() -> anyhow::Result<()> {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "storage::rocks::tests::crash_child_appends_until_killed",
            ])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut topic, mut acked) = (None, Vec::new());
        tokio::time::timeout(Duration::from_secs(60), async {
            while acked.len() < 300 {
                let line = lines.next_line().await?;
                let line = line.ok_or_else(|| anyhow::anyhow!("the child ended early"))?;
                parse_crash_line(&line, &mut topic, &mut acked);
            }
            anyhow::Ok(())
        })
        .await??;
        child.kill().await?; // SIGKILL, amid appends in flight.
        while let Some(line) = lines.next_line().await? {
            parse_crash_line(&line, &mut topic, &mut acked);
        }
        let topic = topic.ok_or_else(|| anyhow::anyhow!("the child named no topic"))?;

        let store = RocksStore::open(dir.path(), SyncPolicy::Always).await?;
        let catalog = store.load().await?;
        let head = catalog.topics.first().map(|t| t.next_offset);
        let head = head.ok_or_else(|| anyhow::anyhow!("the topic was lost"))?;
        let stored = store
            .read(
                topic,
                0,
                ReadLimit {
                    max_messages: usize::MAX,
                    max_bytes: usize::MAX,
                },
            )
            .await?;
        assert_eq!(stored.len() as u64, head, "no holes below the head");
        for (first, tag) in &acked {
            for i in 0..CRASH_BATCH {
                let offset = first + i as u64;
                let message = stored.get(offset as usize);
                let payload = message.map(|m| m.payload.clone());
                assert_eq!(
                    payload,
                    Some(Bytes::from(format!("{tag}-{i}"))),
                    "offset {offset}"
                );
            }
        }
        let appended = store.append(topic, vec![message(b"after")]).await?;
        assert_eq!(appended.first_offset, head, "no offset is handed out twice");
        store.close().await?;
        Ok(())
    }
}
