//! The syncer thread of [`RocksStore`](super::RocksStore) under
//! [`SyncPolicy::Interval`](super::SyncPolicy::Interval): it syncs the
//! write-ahead log every interval when something was written unsynced since
//! the last sync.
//!
//! It runs beside the writer, not on it, so that a sync (which can take
//! milliseconds) never holds up the writes queued behind it: RocksDB syncs
//! log files that are already written while new writes go on. It writes
//! nothing itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::DB;

use super::Timings;
use crate::latency::LatencyHistogram;

/// Set by the writer after each unsynced write; cleared by each sync.
pub(super) type Unsynced = Arc<AtomicBool>;

/// A running syncer; [`Syncer::stop`] (or dropping it) ends it.
#[derive(Debug)]
pub(super) struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts syncing `db` every `interval` while `unsynced` is set.
    pub(super) fn start(
        db: super::DbSlot,
        interval: Duration,
        unsynced: Unsynced,
        timings: Arc<Timings>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("tidings-syncer".to_owned())
            .spawn(move || run(&db, interval, &unsynced, &timings.sync, &signal))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Ends the thread and waits for it (a sync under way finishes first).
    pub(super) fn stop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *super::lock(stopped) = true;
        wake.notify_all();
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("the syncer thread panicked");
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    slot: &Mutex<Option<Arc<DB>>>,
    interval: Duration,
    unsynced: &AtomicBool,
    took: &LatencyHistogram,
    stop: &(Mutex<bool>, Condvar),
) {
    let (stopped, wake) = stop;
    let mut next = Instant::now() + interval;
    loop {
        {
            let mut guard = super::lock(stopped);
            while !*guard {
                let Some(wait) = next.checked_duration_since(Instant::now()) else {
                    break;
                };
                guard = wake
                    .wait_timeout(guard, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if *guard {
                return;
            }
        }
        next = Instant::now() + interval;
        // Not there while the writer reopens it, or once closed.
        let Some(db) = super::lock(slot).clone() else {
            continue;
        };
        if unsynced.swap(false, Ordering::AcqRel) {
            let started = Instant::now();
            let synced = db.flush_wal(true);
            took.observe(started.elapsed());
            match synced {
                Ok(()) => tracing::trace!("write-ahead log synced"),
                Err(e) => {
                    // Nobody waits on this sync; an operator must see it.
                    tracing::error!(error = %e, "syncing the write-ahead log failed");
                    unsynced.store(true, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsynced_write_is_synced_within_the_interval_and_stop_ends_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(DB::open_default(dir.path()).unwrap());
        let unsynced = Unsynced::default();
        let timings = Arc::new(Timings::default());
        let mut syncer = Syncer::start(
            Arc::new(Mutex::new(Some(Arc::clone(&db)))),
            Duration::from_millis(5),
            Arc::clone(&unsynced),
            Arc::clone(&timings),
        )
        .unwrap();
        db.put(b"k", b"v").unwrap();
        unsynced.store(true, Ordering::Release);
        // The observable event is the flag being cleared by a sync.
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsynced.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "no sync within 10 s");
            std::thread::yield_now();
        }
        syncer.stop();
        assert!(syncer.handle.is_none());
        // Stopping waited for the sync, which was timed.
        assert_eq!(timings.sync.snapshot().count, 1);
    }
}
