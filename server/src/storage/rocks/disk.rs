//! The disk of the data directory: its free space, for `--min-free-disk`,
//! and what a write that found it full answers.
//!
//! A thread looks at the free space (`statvfs`) every [`POLL`] and keeps
//! the verdict in an atomic, so a publish never makes a system call to
//! learn it. Only appends are refused below the minimum: acks, reads and
//! deletions (which free space) go on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dedup::Windows;
use super::open::open_database;
use super::{DbSlot, engine, lock};
use crate::storage::{StoreError, StoreResult};

/// How often the free space is looked at.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// What the watching thread shares with the store.
#[derive(Debug)]
struct FreeSpace {
    /// Less than `min` is free.
    low: AtomicBool,
    /// Bytes free at the last look.
    free: AtomicU64,
    min: u64,
    path: PathBuf,
}

/// Watches the free space of the disk of a directory until dropped.
#[derive(Debug)]
pub(super) struct DiskWatch {
    space: Arc<FreeSpace>,
    stop_tx: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DiskWatch {
    /// Looks at the free space of `path`'s disk now and then every
    /// [`POLL`] on a thread of its own; below `min` bytes it is low.
    ///
    /// # Errors
    /// When the free space cannot be read, or the thread not started.
    pub(super) fn start(path: &Path, min: u64) -> std::io::Result<Self> {
        let space = Arc::new(FreeSpace {
            low: AtomicBool::new(false),
            free: AtomicU64::new(0),
            min,
            path: path.to_path_buf(),
        });
        space.look()?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let watched = Arc::clone(&space);
        let thread = std::thread::Builder::new()
            .name("tidings-disk".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(POLL) {
                    if let Err(err) = watched.look() {
                        tracing::warn!(error = %err, "cannot read the free disk space");
                    }
                }
            })?;
        Ok(Self {
            space,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The error for an append while the disk is low; `None` when it is
    /// not.
    pub(super) fn refusal(&self) -> Option<StoreError> {
        let space = &self.space;
        space
            .low
            .load(Ordering::Relaxed)
            .then(|| StoreError::NoSpace {
                detail: format!(
                    "the disk of the data directory {} has {} free, less than --min-free-disk \
                 ({}); publishing resumes by itself once space is freed: delete topics or \
                 old messages, or give the disk more space",
                    space.path.display(),
                    bytes(space.free.load(Ordering::Relaxed)),
                    bytes(space.min),
                ),
            })
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        drop(self.stop_tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the disk watching thread panicked");
        }
    }
}

impl FreeSpace {
    fn look(&self) -> std::io::Result<()> {
        let stat = rustix::fs::statvfs(&self.path)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    min = self.min,
                    "free disk space is low: publishes are refused"
                );
            } else {
                tracing::info!(
                    free,
                    min = self.min,
                    "free disk space is back: publishing resumes"
                );
            }
        }
        Ok(())
    }
}

/// `n` bytes, in the largest binary unit that divides them.
fn bytes(n: u64) -> String {
    match n {
        0 => "0 bytes".to_owned(),
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n => format!("{n} bytes"),
    }
}

/// Whether RocksDB failed for want of disk space.
pub(super) fn is_no_space(err: &rocksdb::Error) -> bool {
    let text = err.to_string();
    text.contains("No space left") || text.contains("NoSpace")
}

/// Free space a reopen needs beyond the size of the write-ahead logs,
/// which it replays into tables.
const REOPEN_ROOM: u64 = 16 << 20;

/// Whether the disk of `path` has room to reopen the database there.
pub(super) fn room_to_reopen(path: &Path) -> bool {
    let wal: u64 = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let is_log = entry.path().extension().is_some_and(|ext| ext == "log");
            is_log
                .then(|| entry.metadata().ok().map(|m| m.len()))
                .flatten()
        })
        .sum();
    match rustix::fs::statvfs(path) {
        Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize) >= wal + REOPEN_ROOM,
        Err(_) => false,
    }
}

/// How long a reopen waits for readers to let go of the database.
const READERS_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the database in `slot` and opens it again from `path`: the way
/// out of RocksDB's stopped state after a write found the disk full, which
/// the library cannot resume in place. Its recovery keeps every write that
/// was acknowledged and drops the record the full disk cut short. Readers
/// meanwhile find no database and see `Closed`. Blocks.
///
/// # Errors
/// When readers hold on to the database too long (it is put back), or it
/// cannot be opened (the slot stays empty; the next try opens it).
pub(super) fn reopen(slot: &DbSlot, path: &Path, windows: &Windows) -> StoreResult<()> {
    let Some(old) = lock(slot).take() else {
        return reopen_into(slot, path, windows);
    };
    let deadline = Instant::now() + READERS_TIMEOUT;
    // Readers hold a handle for one short read each; none takes a new one.
    while Arc::strong_count(&old) > 1 {
        if Instant::now() > deadline {
            *lock(slot) = Some(old);
            return Err(engine(
                "reopening the database",
                "readers did not let go of it",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
    reopen_into(slot, path, windows)
}

fn reopen_into(slot: &DbSlot, path: &Path, windows: &Windows) -> StoreResult<()> {
    let db = open_database(path, windows)?;
    *lock(slot) = Some(Arc::new(db));
    Ok(())
}

/// The error callers get for a write RocksDB failed: [`StoreError::NoSpace`]
/// when the disk is full, else an engine error.
pub(super) fn write_failed(err: &rocksdb::Error) -> StoreError {
    let text = err.to_string();
    if is_no_space(err) {
        StoreError::NoSpace {
            detail: format!(
                "the disk of the data directory is full ({text}); writes fail until space is \
                 freed: delete topics or old messages, or give the disk more space"
            ),
        }
    } else {
        engine("writing a batch", err.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(32 << 20), "32 MiB");
        assert_eq!(bytes(3 << 19), "1.5 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }

    #[test]
    fn below_the_minimum_appends_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let watch = DiskWatch::start(dir.path(), u64::MAX)?;
        let refusal = watch.refusal().map(|e| e.to_string()).unwrap_or_default();
        assert!(refusal.contains("--min-free-disk"), "{refusal}");
        assert!(DiskWatch::start(dir.path(), 0)?.refusal().is_none());
        Ok(())
    }
}
