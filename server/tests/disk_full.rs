//! A full disk, on the real binary with its data directory on a small
//! tmpfs the test mounts: below `--min-free-disk` publishing is refused
//! while acks and health go on; a disk that really runs out answers errors,
//! keeps every acknowledged message, and recovers once space is freed.
//!
//! Mounting needs root (as CI runs); elsewhere the tests say so and pass
//! without running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tidings::v1::{AckRequest, CommitRequest, DeleteTopicRequest, PublishMessage, PublishRequest};
use tidings_client::Client;
use tonic::Code;

mod common;

use common::{Deliveries, ServerProcess, create_topic, read_topic, subscribe_request};

const TOPIC: &str = "disk.test";
/// How long the broker may take to notice freed space and publish again.
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it; `None` (with the reason printed) when this process is
    /// not root.
    fn mount(size: &str) -> anyhow::Result<Option<Self>> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root, and this test runs as another user");
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .context("run mount")?;
        ensure!(status.success(), "mount -t tmpfs failed with {status}");
        Ok(Some(Self { dir }))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a broker the test failed to stop may still hold it.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the disk is full or `limit` bytes are
/// written; returns how many it wrote.
fn fill(path: &Path, limit: u64) -> anyhow::Result<u64> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < limit {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(28) => break,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(written)
}

fn message(seq: u64) -> PublishMessage {
    PublishMessage {
        payload: format!("{seq:08}{}", "x".repeat(32 * 1024)).into(),
        ..Default::default()
    }
}

/// Publishes one message; its offset, or the status.
async fn publish(client: &Client, seq: u64) -> anyhow::Result<Result<u64, tonic::Status>> {
    publish_to(client, TOPIC, seq).await
}

/// Publishes one message to `topic`; its offset, or the status.
async fn publish_to(
    client: &Client,
    topic: &str,
    seq: u64,
) -> anyhow::Result<Result<u64, tonic::Status>> {
    let request = PublishRequest {
        topic: topic.into(),
        messages: vec![message(seq)],
    };
    match client.publisher_service().publish(request).await {
        Ok(response) => Ok(Ok(response.into_inner().offsets[0])),
        Err(status) => Ok(Err(status)),
    }
}

/// Every message of the topic: offset → the sequence number it carries.
async fn read_all(client: &Client) -> anyhow::Result<BTreeMap<u64, u64>> {
    let mut stored = BTreeMap::new();
    for (offset, payload) in read_topic(client, TOPIC).await? {
        stored.insert(offset, std::str::from_utf8(&payload[..8])?.parse()?);
    }
    Ok(stored)
}

/// Checks that every acknowledged publish is stored where it was put.
async fn check_acknowledged(client: &Client, acked: &BTreeMap<u64, u64>) -> anyhow::Result<()> {
    let stored = read_all(client).await?;
    for (offset, seq) in acked {
        ensure!(
            stored.get(offset) == Some(seq),
            "acknowledged message {seq} at offset {offset} is not there: {:?}",
            stored.get(offset)
        );
    }
    Ok(())
}

/// Publishes until a publish is refused; returns the refusal.
async fn publish_until_refused(
    client: &Client,
    acked: &mut BTreeMap<u64, u64>,
) -> anyhow::Result<tonic::Status> {
    for seq in acked.len() as u64.. {
        match publish(client, seq).await? {
            Ok(offset) => {
                acked.insert(offset, seq);
            }
            Err(status) => return Ok(status),
        }
        ensure!(seq < 100_000, "the disk never filled up");
    }
    unreachable!("the loop returns")
}

/// Retries a publish until it is acknowledged, for at most
/// [`RESUME_TIMEOUT`].
async fn publish_when_space(client: &Client, acked: &mut BTreeMap<u64, u64>) -> anyhow::Result<()> {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    let seq = 1_000_000 + acked.len() as u64;
    loop {
        match publish(client, seq).await? {
            Ok(offset) => {
                acked.insert(offset, seq);
                return Ok(());
            }
            Err(status) if Instant::now() > deadline => {
                bail!("publishing did not resume within {RESUME_TIMEOUT:?}: {status:?}")
            }
            // Polling the broker, not waiting for it: it resumes on its own.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn serving(client: &Client) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(client.channel().clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner()
        .status;
    Ok(status == ServingStatus::Serving as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_that_runs_out_answers_errors_keeps_acknowledged_data_and_recovers()
-> anyhow::Result<()> {
    let Some(disk) = OnTmpfs::mount()? else {
        return Ok(());
    };
    let filler = disk.filler();
    let flags = ["--min-free-disk", "0"];
    let mut server = disk.start(&flags).await?;
    let client = server.client().await?;
    create_topic(&client, TOPIC).await?;
    fill(&filler, 40 << 20)?;

    let mut acked = BTreeMap::new();
    let refused = publish_until_refused(&client, &mut acked).await?;
    eprintln!("{} publishes acknowledged; then {refused:?}", acked.len());
    fill(&filler, u64::MAX)?;
    let again = publish(&client, 0).await?.expect_err("the disk is full");
    for status in [&refused, &again] {
        ensure!(
            matches!(status.code(), Code::ResourceExhausted | Code::Unavailable),
            "{status:?}"
        );
        ensure!(status.message().contains("disk"), "{status:?}");
    }
    ensure!(serving(&client).await?, "health is not SERVING");
    check_acknowledged(&client, &acked).await?;

    std::fs::remove_file(&filler)?;
    publish_when_space(&client, &mut acked).await?;
    check_acknowledged(&client, &acked).await?;
    server.terminate().await?;
    ensure!(server.wait_exit().await?.success(), "{}", server.log());
    let server = disk.start(&flags).await?;
    check_acknowledged(&server.client().await?, &acked).await?;
    server.kill_9().await
}

/// Publishes `count` messages to `topic`.
async fn publish_many(client: &Client, topic: &str, count: u64) -> anyhow::Result<()> {
    for seq in 0..count {
        publish_to(client, topic, seq).await??;
    }
    Ok(())
}

/// A tmpfs of 64 MiB, with a data directory and a filler file on it, and
/// a directory for the broker's logs.
struct OnTmpfs {
    tmpfs: Tmpfs,
    logs: tempfile::TempDir,
}

impl OnTmpfs {
    /// `None` when the tmpfs cannot be mounted here (see [`Tmpfs::mount`]).
    fn mount() -> anyhow::Result<Option<Self>> {
        let Some(tmpfs) = Tmpfs::mount("64m")? else {
            return Ok(None);
        };
        let logs = tempfile::tempdir()?;
        Ok(Some(Self { tmpfs, logs }))
    }

    fn filler(&self) -> PathBuf {
        self.tmpfs.path().join("filler")
    }

    fn free(&self) -> anyhow::Result<u64> {
        let stat = rustix::fs::statvfs(self.tmpfs.path())?;
        Ok(stat.f_bavail * stat.f_frsize)
    }

    /// Starts the broker on the tmpfs with `flags`.
    async fn start(&self, flags: &[&str]) -> anyhow::Result<ServerProcess> {
        let data_dir = self.tmpfs.path().join("data");
        ServerProcess::start_with(&data_dir, self.logs.path(), flags).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn below_min_free_disk_publishes_are_refused_until_a_deleted_topic_frees_space()
-> anyhow::Result<()> {
    let Some(disk) = OnTmpfs::mount()? else {
        return Ok(());
    };
    let filler = disk.filler();
    let server = disk.start(&["--min-free-disk", "32MiB"]).await?;
    let client = server.client().await?;
    create_topic(&client, TOPIC).await?;
    let mut acked = BTreeMap::new();
    for seq in 0..10 {
        acked.insert(publish(&client, seq).await??, seq);
    }
    let mut stream = Deliveries::open(&client, subscribe_request("s", TOPIC)).await?;
    let delivered = stream.next_n(10).await?;
    // 16 MiB in a topic to delete later, then the disk filled to 24 MiB
    // free.
    create_topic(&client, "disk.big").await?;
    publish_many(&client, "disk.big", 500).await?;
    fill(&filler, disk.free()?.saturating_sub(24 << 20))?;

    let refused = publish_until_refused(&client, &mut acked).await?;
    ensure!(refused.code() == Code::ResourceExhausted, "{refused:?}");
    ensure!(
        refused.message().contains("32 MiB") && refused.message().contains("--min-free-disk"),
        "{refused:?}"
    );
    ensure!(serving(&client).await?, "health is not SERVING");
    let ack = |offsets: Vec<u64>| AckRequest {
        subscription: "s".into(),
        offsets,
        ack_ids: Vec::new(),
    };
    client
        .subscriber_service()
        .ack(ack(vec![delivered[0].offset]))
        .await
        .context("an ack below --min-free-disk")?;
    // A commit that publishes is refused; one that only acks goes on.
    let rest: Vec<u64> = delivered[1..].iter().map(|m| m.offset).collect();
    let publishing = CommitRequest {
        publishes: vec![PublishRequest {
            topic: TOPIC.into(),
            messages: vec![message(0)],
        }],
        acks: vec![ack(rest.clone())],
    };
    let refused = client.publisher_service().commit(publishing).await;
    let refused = refused.expect_err("a commit that publishes below --min-free-disk");
    ensure!(refused.code() == Code::ResourceExhausted, "{refused:?}");
    let acking = CommitRequest {
        publishes: Vec::new(),
        acks: vec![ack(rest)],
    };
    client
        .publisher_service()
        .commit(acking)
        .await
        .context("a commit of acks below --min-free-disk")?;
    check_acknowledged(&client, &acked).await?;

    // Deleting works, and gives its space back: publishing resumes by
    // itself, the filler still there.
    let before = disk.free()?;
    client
        .admin_service()
        .delete_topic(DeleteTopicRequest {
            name: "disk.big".into(),
        })
        .await
        .context("DeleteTopic below --min-free-disk")?;
    publish_when_space(&client, &mut acked).await?;
    let after = disk.free()?;
    ensure!(
        after >= before + (8 << 20),
        "{before} bytes free before, {after} after"
    );
    check_acknowledged(&client, &acked).await?;
    server.kill_9().await
}
