//! Damaged storage, on the real binary: a write-ahead log cut short by a
//! crash is recovered quietly; a log damaged in the middle and a corrupt
//! table stop the broker with a message naming the file and the repair
//! command; `--repair` keeps what is readable and reports what was lost.
//!
//! Each test publishes synced messages, stops the broker (`kill -9`, so the
//! log is not flushed into tables, or SIGTERM and a restart, which moves
//! the log into a table), damages a file and starts the broker again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, ensure};
use tidings::v1::{PublishMessage, PublishRequest};
use tidings_client::Client;

mod common;

use common::{EXIT_TIMEOUT, ServerProcess, create_topic, read_topic};

const TOPIC: &str = "damage.test";
const PUBLISHES: usize = 10_000;
const PUBLISHERS: usize = 16;

/// Publishes `PUBLISHES` single-message publishes from `PUBLISHERS` tasks
/// (each synced before it is answered); returns the acknowledged payloads
/// by offset.
async fn publish_all(client: &Client) -> anyhow::Result<BTreeMap<u64, String>> {
    create_topic(client, TOPIC).await?;
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|task| {
            let mut publisher = client.publisher_service();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for seq in (task..PUBLISHES).step_by(PUBLISHERS) {
                    let payload = format!("message {seq:05} {}", "x".repeat(64));
                    let request = PublishRequest {
                        topic: TOPIC.into(),
                        messages: vec![PublishMessage {
                            payload: payload.clone().into(),
                            ..Default::default()
                        }],
                    };
                    let offsets = publisher.publish(request).await?.into_inner().offsets;
                    acknowledged.push((offsets[0], payload));
                }
                anyhow::Ok(acknowledged)
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for task in tasks {
        acknowledged.extend(task.await??);
    }
    ensure!(acknowledged.len() == PUBLISHES, "{}", acknowledged.len());
    Ok(acknowledged)
}

/// Every message of the topic: offset → payload.
async fn read_all(client: &Client) -> anyhow::Result<BTreeMap<u64, String>> {
    let stored = read_topic(client, TOPIC).await?;
    let text = |payload: bytes::Bytes| String::from_utf8(payload.to_vec());
    stored
        .into_iter()
        .map(|(offset, payload)| Ok((offset, text(payload)?)))
        .collect()
}

/// The files in `dir` ending in `.{extension}`, in name order.
fn files(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == extension) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The newest write-ahead log, checked to hold the messages (they were
/// not flushed into tables).
fn newest_log(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let log = files(data_dir, "log")?
        .pop()
        .context("no write-ahead log")?;
    let size = std::fs::metadata(&log)?.len();
    ensure!(
        size > (PUBLISHES * 64) as u64,
        "{} holds only {size} bytes: the messages are not in it",
        log.display()
    );
    Ok(log)
}

/// Writes 64 random bytes at `at` in `file`.
fn scribble(file: &Path, at: u64) -> anyhow::Result<()> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let noise: [u8; 64] = rand::random();
    let mut handle = std::fs::OpenOptions::new().write(true).open(file)?;
    handle.seek(SeekFrom::Start(at))?;
    handle.write_all(&noise)?;
    handle.sync_all()?;
    Ok(())
}

/// Runs the binary on `data_dir` until it exits by itself; returns whether
/// it succeeded and what it logged.
async fn run_to_exit(data_dir: &Path, log_dir: &Path) -> anyhow::Result<(bool, String)> {
    let log_path = log_dir.join("failed-start.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait())
        .await
        .context("the broker kept running on damaged storage")??;
    Ok((status.success(), std::fs::read_to_string(&log_path)?))
}

/// Checks that a start on damaged storage failed, naming `file` and the
/// repair command.
fn check_refused(ran: (bool, String), file: &Path) -> anyhow::Result<()> {
    let (succeeded, log) = ran;
    ensure!(!succeeded, "the broker exited successfully; log:\n{log}");
    let name = file.display().to_string();
    ensure!(
        log.contains(&name),
        "the message does not name {name}:\n{log}"
    );
    ensure!(
        log.contains("--repair") && log.contains("restore the data directory"),
        "the message does not say what to do:\n{log}"
    );
    Ok(())
}

/// Starts with `--repair`; checks that every message it reads back is one
/// acknowledged at its offset, and that the loss it logged is what is
/// missing.
async fn repair_and_check(
    data_dir: &Path,
    log_dir: &Path,
    acknowledged: &BTreeMap<u64, String>,
) -> anyhow::Result<()> {
    let server = ServerProcess::start_with(data_dir, log_dir, &["--repair"]).await?;
    let stored = read_all(&server.client().await?).await?;
    for (offset, payload) in &stored {
        ensure!(
            acknowledged.get(offset) == Some(payload),
            "offset {offset} holds {payload:?} after the repair"
        );
    }
    // 64 bytes of damage cost a block or a record, not the whole file.
    ensure!(
        stored.len() > acknowledged.len() / 2,
        "the repair kept only {} of {} messages",
        stored.len(),
        acknowledged.len()
    );
    let lost = acknowledged.len() - stored.len();
    let log = server.log();
    ensure!(
        log.contains(&format!("lost_messages={lost}")),
        "{lost} messages are missing, which the repair does not report:\n{log}"
    );
    eprintln!(
        "repair kept {} of {} messages",
        stored.len(),
        acknowledged.len()
    );
    server.kill_9().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_cut_short_at_its_end_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let acknowledged = publish_all(&server.client().await?).await?;
    server.kill_9().await?;
    // A write the crash cut short: a record's header and part of its body,
    // never acknowledged.
    let log = newest_log(&data_dir)?;
    tear_last_record(&log)?;

    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let stored = read_all(&server.client().await?).await?;
    ensure!(
        stored == acknowledged,
        "{} of {} acknowledged messages are there",
        stored.len(),
        acknowledged.len()
    );
    server.kill_9().await
}

/// Appends to `log` the start of one more record: its header says 200
/// bytes, 100 follow. Fills the block first when the record would not
/// fit, as the writer does.
fn tear_last_record(log: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    const BLOCK: u64 = 32 * 1024;
    let size = std::fs::metadata(log)?.len();
    let left = BLOCK - size % BLOCK;
    let mut torn = Vec::new();
    if left < 7 + 200 {
        torn.resize(usize::try_from(left)?, 0);
    }
    torn.extend([0x5a; 4]);
    torn.extend(200u16.to_le_bytes());
    torn.push(1);
    torn.extend([0x42; 100]);
    let mut file = std::fs::OpenOptions::new().append(true).open(log)?;
    file.write_all(&torn)?;
    file.sync_all()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_inside_the_log_stops_the_broker_until_repaired() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    let acknowledged = publish_all(&server.client().await?).await?;
    server.kill_9().await?;
    let log = newest_log(&data_dir)?;
    scribble(&log, std::fs::metadata(&log)?.len() / 2)?;

    check_refused(run_to_exit(&data_dir, dir.path()).await?, &log)?;
    // Still refused: nothing was dropped by the failed start.
    check_refused(run_to_exit(&data_dir, dir.path()).await?, &log)?;
    repair_and_check(&data_dir, dir.path(), &acknowledged).await?;
    // Repaired for good: a plain start works.
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    server.kill_9().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_table_stops_the_broker_until_repaired() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::start(&data_dir, dir.path()).await?;
    let acknowledged = publish_all(&server.client().await?).await?;
    server.terminate().await?;
    ensure!(server.wait_exit().await?.success(), "{}", server.log());
    // Opening again replays the log into a table.
    let mut server = ServerProcess::start(&data_dir, dir.path()).await?;
    server.terminate().await?;
    ensure!(server.wait_exit().await?.success(), "{}", server.log());
    let mut tables = Vec::new();
    for table in files(&data_dir, "sst")? {
        tables.push((std::fs::metadata(&table)?.len(), table));
    }
    // The largest table holds the messages.
    let (size, table) = tables.into_iter().max().context("no table file")?;
    ensure!(
        size > (PUBLISHES * 16) as u64,
        "{} is small",
        table.display()
    );
    scribble(&table, size / 3)?;

    check_refused(run_to_exit(&data_dir, dir.path()).await?, &table)?;
    repair_and_check(&data_dir, dir.path(), &acknowledged).await?;
    let server = ServerProcess::start(&data_dir, dir.path()).await?;
    server.kill_9().await
}
