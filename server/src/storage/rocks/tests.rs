//! Tests of [`RocksStore`](super::RocksStore) beyond the shared conformance
//! suite: opening a directory in use, dropping without closing, and a crash
//! under concurrent appends.

use super::*;
use bytes::Bytes;

fn name(s: &str) -> TopicName {
    TopicName::new(s).expect("valid name")
}

fn message(payload: &'static [u8]) -> NewMessage {
    NewMessage {
        payload: Bytes::from_static(payload),
        ..NewMessage::default()
    }
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
    let store = RocksStore::open(dir.path(), SyncPolicy::Interval(Duration::from_secs(60))).await?;
    let topic = store
        .create_topic(&name("t"), TopicSettings::default(), StorageClass::Disk)
        .await?;
    store.append(topic.id, vec![message(b"x")]).await?;
    // `drop` blocks until the writer has synced and let go of the
    // database, so opening again right after must work.
    tokio::task::spawn_blocking(move || drop(store)).await?;
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
    let topic = store
        .create_topic(&name("crash"), TopicSettings::default(), StorageClass::Disk)
        .await?
        .id;
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
fn parse_crash_line(line: &str, topic: &mut Option<TopicId>, acked: &mut Vec<(Offset, String)>) {
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
            0..u64::MAX,
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

#[tokio::test]
async fn a_memory_topic_writes_nothing_per_append_but_its_offset_mark() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), SyncPolicy::Always).await?;
    let topic = store
        .create_topic(&name("m"), TopicSettings::default(), StorageClass::Memory)
        .await?;
    let with_id = |i: u32| NewMessage {
        payload: Bytes::from(format!("payload {i}")),
        id: format!("id-{i}").into(),
        ..NewMessage::default()
    };
    // The first append reserves offsets; the next ones write nothing.
    store.append(topic.id, vec![with_id(0)]).await?;
    let db = lock(&store.db).clone().expect("open");
    let written = db.latest_sequence_number();
    for i in 1..100 {
        store.append(topic.id, vec![with_id(i), with_id(i)]).await?;
    }
    assert_eq!(db.latest_sequence_number(), written, "no write at all");
    drop(db);
    store.close().await?;

    let db = open_database(dir.path(), &dedup::Windows::default())?;
    for family in [CF_MESSAGES, dedup::CF_DEDUP] {
        let stored = db
            .iterator_cf(column(&db, family)?, rocksdb::IteratorMode::Start)
            .count();
        assert_eq!(stored, 0, "nothing in {family}");
    }
    let head = db.get_cf(column(&db, CF_META)?, meta_key(HEAD_PREFIX, topic.id.0))?;
    let (mark, _) = codec::decode_head(&head.expect("a head record"))?;
    assert!(mark >= 100, "the stored mark {mark} is above every offset");
    Ok(())
}
