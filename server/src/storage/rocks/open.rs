//! Opening the database: the column families of the layout and the options
//! the broker runs them with.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, Env,
    Options,
};

use super::dedup::{self, CF_DEDUP, Windows};
use super::delays::CF_DELAYS;
use super::{CF_MESSAGES, CF_META, CF_SUBSCRIPTIONS, damage, engine};
use crate::storage::StoreResult;

/// Memory shared by the block caches of all column families.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// The most write-ahead log kept alive before the column families that
/// hold its oldest file are flushed. Every publish writes its topic's head
/// into the rarely flushed `meta` family, so every log file holds some of
/// it and, without this bound, none could be deleted. A start after a
/// crash replays all of it: 256 MiB (about a million messages of 256 B)
/// took 5.4 s to replay on two busy cores, a quarter of it well under the
/// 2 s a start should take. The price is a small flush of `meta` and
/// `subscriptions` per 64 MiB written, which compaction merges.
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// Opens the database with the column families and options of this
/// layout, creating what is missing. Blocks. The `dedup` family forgets
/// ids past the windows in `windows`.
///
/// A record cut short at the end of the write-ahead log (a write a crash
/// interrupted) is dropped; any other damage fails.
///
/// # Errors
/// [`StoreError::Damaged`](crate::storage::StoreError::Damaged) naming the
/// damaged file; [`StoreError::Engine`](crate::storage::StoreError::Engine)
/// when RocksDB fails otherwise.
pub(super) fn open_database(path: &Path, windows: &Windows) -> StoreResult<DB> {
    open_with_recovery(path, windows, DBRecoveryMode::TolerateCorruptedTailRecords).map_err(|e| {
        if damage::is_corruption(&e) {
            damage::damaged(path, &e)
        } else {
            engine("opening the database", e)
        }
    })
}

/// [`open_database`] with the write-ahead log recovered in `mode`;
/// RocksDB's error as it is.
pub(super) fn open_with_recovery(
    path: &Path,
    windows: &Windows,
    mode: DBRecoveryMode,
) -> Result<DB, rocksdb::Error> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options.set_max_background_jobs(2);
    db_options.set_keep_log_file_num(5);
    db_options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    db_options.set_env(&background_env()?);
    // Stop at any damage the log shows, but for a torn last record (see
    // `damage`); checks of every file's size and metadata at open.
    db_options.set_wal_recovery_mode(mode);
    db_options.set_paranoid_checks(true);
    let mut families: Vec<_> = [CF_MESSAGES, CF_SUBSCRIPTIONS, CF_META, CF_DELAYS]
        .map(|name| ColumnFamilyDescriptor::new(name, column_options(&cache, true)))
        .into();
    // Nothing looks remembered ids up by key (the writer keeps them in
    // memory; a start reads them back in order), so no bloom filters; and
    // hashes do not compress. Both only cost: the memtable's filter a
    // tenth of its size, the flushes time.
    let mut ids = column_options(&cache, false);
    ids.set_compression_type(DBCompressionType::None);
    ids.set_compaction_filter(
        "forget-expired-ids",
        dedup::compaction_filter(windows.clone()),
    );
    ids.set_periodic_compaction_seconds(dedup::PERIODIC_COMPACTION.as_secs());
    families.push(ColumnFamilyDescriptor::new(CF_DEDUP, ids));
    DB::open_cf_descriptors(&db_options, path, families)
}

/// The environment whose flush and compaction threads run at the lowest CPU
/// priority: when they compete with the broker's own threads for the
/// cores, a delivery waits on them for less. Measured on two cores, a
/// memtable flush during `bench e2e` raised p99.9 latency to 2–6 ms; at the
/// lowest priority it stayed at 1.2–2.4 ms, and publishing was no slower.
fn background_env() -> Result<Env, rocksdb::Error> {
    let mut env = Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_high_priority_thread_pool_cpu_priority();
    Ok(env)
}

/// A column family's options; `bloom`: whether its table files carry bloom
/// filters, for lookups by key.
fn column_options(cache: &Cache, bloom: bool) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if bloom {
        table.set_bloom_filter(10.0, false);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rocks::{CF_MESSAGES, column};

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

    /// The bytes of the write-ahead log files in `dir`.
    fn log_bytes(dir: &Path) -> anyhow::Result<u64> {
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                bytes += entry.metadata()?.len();
            }
        }
        Ok(bytes)
    }

    #[test]
    fn the_write_ahead_log_a_restart_replays_stays_within_its_bound() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = open_database(dir.path(), &Windows::default())?;
        let (messages, meta) = (column(&db, CF_MESSAGES)?, column(&db, CF_META)?);
        // Batches as the writer's: messages, and the topic's head in meta.
        let value = vec![7u8; 64 << 10];
        let mut offset = 0u64;
        while offset * (value.len() as u64) < 3 * MAX_TOTAL_WAL_BYTES {
            let mut batch = rocksdb::WriteBatch::default();
            for _ in 0..16 {
                batch.put_cf(messages, offset.to_be_bytes(), &value);
                offset += 1;
            }
            batch.put_cf(meta, b"head", offset.to_be_bytes());
            db.write(batch)?;
        }
        // The flushes the bound asks for run in the background, and a log
        // file goes once they are done: on a loaded machine that can take a
        // while, so wait for it (with the old bound of 256 MiB it never
        // happens: the head in meta keeps every file alive).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            db.wait_for_compact(&rocksdb::WaitForCompactOptions::default())?;
            let kept = log_bytes(dir.path())?;
            // Two full files at most: the one that crossed the bound (it
            // ends with the write that crossed it) and the current one.
            if kept <= 2 * MAX_TOTAL_WAL_BYTES + MAX_TOTAL_WAL_BYTES / 4 {
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{kept} bytes of log kept a minute after writing {} bytes",
                offset * value.len() as u64
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn flushes_run_at_the_lowest_cpu_priority() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = open_database(dir.path(), &Windows::default())?;
        let messages = column(&db, CF_MESSAGES)?;
        db.put_cf(messages, b"k", b"v")?;
        // A pool thread takes on the priority when it starts a job.
        db.flush_cf(messages)?;
        let nice = nice_of_threads("rocksdb:high")?;
        assert!(nice.contains(&19), "no flush thread at nice 19: {nice:?}");
        Ok(())
    }
}
