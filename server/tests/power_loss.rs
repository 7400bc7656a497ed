//! A simulated power loss under `--sync-interval`: the broker's data
//! directory lives on LazyFS, a FUSE file system that keeps unsynced writes
//! in its own cache and drops them on command. The broker is killed, the
//! unsynced writes are dropped, and a new broker on what is left must still
//! know every topic and subscription whose creation returned OK, and none
//! whose deletion did.
//!
//! It needs a LazyFS binary, named by `TIDINGS_TEST_LAZYFS` (`.ci/run`
//! builds one), `/dev/fuse` and `fusermount3`, as root. Without the
//! variable it says so and passes; with it, any failure to set up fails.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use common::ServerProcess;

/// How long LazyFS may take to mount or to drop its cache.
const LAZYFS_TIMEOUT: Duration = Duration::from_secs(30);

/// A LazyFS mount over a directory of its own.
struct LazyFs {
    binary: PathBuf,
    dir: tempfile::TempDir,
    process: Option<Child>,
    /// Held open for reading, so LazyFS can report a finished command.
    done_rx: Option<mpsc::Receiver<String>>,
}

impl LazyFs {
    fn mount(binary: &Path) -> anyhow::Result<Self> {
        let dir = lazyfs_dir()?;
        for sub in ["root", "mnt"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        for fifo in ["faults.fifo", "done.fifo"] {
            let status = Command::new("mkfifo").arg(dir.path().join(fifo)).status()?;
            ensure!(status.success(), "mkfifo {fifo} failed");
        }
        let config = format!(
            "[faults]\nfifo_path=\"{faults}\"\nfifo_path_completed=\"{done}\"\n\
             [cache]\napply_eviction=false\n\
             [cache.simple]\ncustom_size=\"256mb\"\nblocks_per_page=1\n\
             [filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
            faults = dir.path().join("faults.fifo").display(),
            done = dir.path().join("done.fifo").display(),
        );
        std::fs::write(dir.path().join("lazyfs.toml"), config)?;
        let mut lazyfs = Self {
            binary: binary.to_owned(),
            dir,
            process: None,
            done_rx: None,
        };
        lazyfs.start()?;
        Ok(lazyfs)
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Starts LazyFS and waits until the mount is there.
    fn start(&mut self) -> anyhow::Result<()> {
        // LazyFS opens this FIFO for writing at start and waits for a
        // reader; read-write never blocks on a FIFO.
        let done = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.path().join("done.fifo"))?;
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(done).lines() {
                let Ok(line) = line else { return };
                if done_tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.done_rx = Some(done_rx);
        let root = self.dir.path().join("root");
        // Appended to, so the log of a remount follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lazyfs.log"))?;
        let process = Command::new(&self.binary)
            .arg(self.mnt())
            .arg("--config-path")
            .arg(self.dir.path().join("lazyfs.toml"))
            .args(["-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start LazyFS")?;
        self.process = Some(process);
        let deadline = std::time::Instant::now() + LAZYFS_TIMEOUT;
        while !self.mounted()? {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.try_wait()?
            {
                self.process = None;
                bail!(
                    "LazyFS exited ({status}) before it mounted:\n{}",
                    self.log_tail()
                );
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "LazyFS did not mount within {LAZYFS_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The last lines LazyFS wrote, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("lazyfs.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn mounted(&self) -> anyhow::Result<bool> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let mnt = self.mnt();
        let mnt = mnt.to_string_lossy();
        Ok(mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*mnt)))
    }

    /// Drops every write that was not synced: the power loss.
    fn lose_power(&mut self) -> anyhow::Result<()> {
        let mut faults = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("faults.fifo"))?;
        writeln!(faults, "lazyfs::clear-cache")?;
        drop(faults);
        let done_rx = self.done_rx.as_ref().context("LazyFS is not running")?;
        let line = done_rx
            .recv_timeout(LAZYFS_TIMEOUT)
            .context("LazyFS did not report the cleared cache")?;
        ensure!(line.contains("clear-cache"), "LazyFS answered {line:?}");
        Ok(())
    }

    /// Unmounts and waits for LazyFS to exit.
    fn unmount(&mut self) -> anyhow::Result<()> {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(self.mnt())
            .status()
            .context("run fusermount3")?;
        ensure!(status.success(), "fusermount3 -u failed");
        if let Some(mut process) = self.process.take() {
            // LazyFS ends on unmount (sometimes by aborting); either is fine.
            process.wait()?;
        }
        self.done_rx = None;
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.process.is_some() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(self.mnt())
                .status();
            if let Some(mut process) = self.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
    }
}

/// A directory for LazyFS whose path LazyFS takes as its config path.
///
/// LazyFS ignores `--config-path P` when P contains "-o" in any case (it
/// takes P for a mount option) and falls back to a default config that is
/// not there, so a random name such as `tidings-lazyfs-oeAFgL` made it
/// abort now and then. Names without a dash, and a check of the whole
/// path, keep clear of it.
fn lazyfs_dir() -> anyhow::Result<tempfile::TempDir> {
    for _ in 0..100 {
        let dir = tempfile::Builder::new().prefix("tidingslazyfs").tempdir()?;
        let config = dir.path().join("lazyfs.toml");
        if !config.to_string_lossy().to_lowercase().contains("-o") {
            return Ok(dir);
        }
    }
    bail!("every temporary directory's path holds \"-o\", which LazyFS cannot take");
}

/// Topic and subscription names the broker reports.
async fn catalog(server: &ServerProcess) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let client = server.client().await?;
    let topics = client.list_topics().await?.into_iter().map(|t| t.name);
    let subs = client.list_subscriptions(None).await?;
    Ok((topics.collect(), subs.into_iter().map(|s| s.name).collect()))
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_and_subscription_changes_survive_a_power_loss_under_a_sync_interval()
-> anyhow::Result<()> {
    let Some(binary) = std::env::var_os("TIDINGS_TEST_LAZYFS") else {
        eprintln!("skipped: set TIDINGS_TEST_LAZYFS to a LazyFS binary to run it");
        return Ok(());
    };
    let mut lazyfs = LazyFs::mount(Path::new(&binary))?;
    let logs = tempfile::tempdir()?;
    let data = lazyfs.mnt().join("data");
    // An interval that never comes during the test: nothing is synced but
    // what the broker syncs on purpose.
    let flags = ["--sync-interval", "1h"];
    let server = ServerProcess::start_with(&data, logs.path(), &flags).await?;
    let client = server.client().await?;
    client.create_topic("kept").await?;
    client.create_topic("doomed").await?;
    let config = tidings_client::SubscriptionConfig::new("billing", "kept");
    client.create_subscription(config).await?;
    client.delete_topic("doomed").await?;
    drop(client);
    server.kill_9().await?;
    let lose = tokio::task::spawn_blocking(move || {
        lazyfs.lose_power()?;
        lazyfs.unmount()?;
        lazyfs.start()?;
        anyhow::Ok(lazyfs)
    });
    let lazyfs = lose.await??;

    let server = ServerProcess::start_with(&data, logs.path(), &flags).await?;
    let (topics, subscriptions) = catalog(&server).await?;
    if topics != ["kept"] || subscriptions != ["billing"] {
        bail!(
            "after the power loss the broker knows topics {topics:?} and subscriptions \
             {subscriptions:?}, not [\"kept\"] and [\"billing\"]"
        );
    }
    server.kill_9().await?;
    drop(lazyfs);
    Ok(())
}
