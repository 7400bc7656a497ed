//! Damaged storage: naming the damaged file when the database will not
//! open or a table fails its checksums, verifying every table, and the
//! repair mode.
//!
//! The database opens with RocksDB's `TolerateCorruptedTailRecords`
//! recovery of the write-ahead log (see `open`): a record cut short at the
//! end of the log (a write a crash interrupted, never acknowledged) is
//! dropped, and any other damage in the log fails the open, where the
//! default (point in time) recovery would stop at the damage and silently
//! drop every record after it. RocksDB's error does not say which log it
//! read, so [`damaged`] reads the logs itself: 32 KiB blocks of records,
//! each behind a header of a masked CRC-32C, a length and a type.
//!
//! Nothing here decides what to keep; [`repair`] keeps what RocksDB can
//! read.

use std::path::{Path, PathBuf};

use rocksdb::{DB, DBRecoveryMode, ReadOptions};
use tokio_util::sync::CancellationToken;

use super::{CF_MESSAGES, FAMILIES, column, engine};
use crate::names::TopicName;
use crate::storage::{StorageClass, StoreError, StoreResult, codec};

/// A write-ahead log is written in blocks of this many bytes.
const BLOCK: usize = 32 * 1024;
/// Checksum (4), length (2), type (1).
const HEADER: usize = 7;
/// RocksDB stores `rotate(crc, 15) + MASK_DELTA`.
const MASK_DELTA: u32 = 0xa282_ead8;

/// The error for a damaged file in `dir`, named from RocksDB's error `err`
/// or, when that names none, found by reading the write-ahead logs.
pub(super) fn damaged(dir: &Path, err: &rocksdb::Error) -> StoreError {
    let detail = err.to_string();
    let file = named_file(&detail)
        .or_else(|| damaged_log(dir).map(|(log, _)| log))
        .unwrap_or_else(|| dir.to_path_buf());
    StoreError::Damaged { file, detail }
}

/// Whether `err` says that stored data is damaged.
pub(super) fn is_corruption(err: &rocksdb::Error) -> bool {
    err.kind() == rocksdb::ErrorKind::Corruption
}

/// The table, log or manifest file RocksDB's message names, if any.
fn named_file(message: &str) -> Option<PathBuf> {
    message
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| matches!(c, ':' | ',' | ';' | '(' | ')')))
        .find(|word| word.ends_with(".sst") || word.ends_with(".log") || word.contains("MANIFEST-"))
        .map(PathBuf::from)
}

/// The first write-ahead log in `dir` with a damaged record, and where.
fn damaged_log(dir: &Path) -> Option<(PathBuf, u64)> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    logs.into_iter().find_map(|log| {
        let bytes = std::fs::read(&log).ok()?;
        first_damage(&bytes).map(|offset| (log, offset))
    })
}

/// The offset of the first record of a write-ahead log whose checksum or
/// length is wrong; `None` when every record is whole, but for one cut
/// short at the very end (a torn write).
fn first_damage(log: &[u8]) -> Option<u64> {
    for (index, block) in log.chunks(BLOCK).enumerate() {
        let last = (index + 1) * BLOCK >= log.len();
        let mut at = 0;
        // Fewer bytes than a header are the block's padding (or torn).
        while at + HEADER <= block.len() {
            let stored =
                u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            let length = usize::from(u16::from_le_bytes([block[at + 4], block[at + 5]]));
            let kind = block[at + 6];
            if kind == 0 && length == 0 {
                // Zeros: space the log was given but never written.
                break;
            }
            // Recycled-log records carry the log's number (4 bytes) too.
            let recyclable = (5..=8).contains(&kind) || (kind >= 10 && kind % 2 == 1);
            let end = at + HEADER + if recyclable { 4 } else { 0 } + length;
            if end > block.len() {
                // Past the end of the file: a write cut short. Past the end
                // of a block with more after it: damage.
                return (!last).then_some((index * BLOCK + at) as u64);
            }
            // The checksum covers the type, the log number if any, and the
            // payload.
            if unmask(stored) != crc32c::crc32c(&block[at + 6..end]) {
                return Some((index * BLOCK + at) as u64);
            }
            at = end;
        }
    }
    None
}

fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

/// How many entries are read between looks at the cancellation token.
const CANCEL_EVERY: u64 = 4096;

/// Reads every entry of every column family, checking every block's
/// checksum; returns how many entries it read. Stops early, with what it
/// read so far, once `cancel` is cancelled.
///
/// # Errors
/// [`StoreError::Damaged`] naming the first table that fails.
pub(super) fn verify_tables(db: &DB, dir: &Path, cancel: &CancellationToken) -> StoreResult<u64> {
    let mut entries = 0;
    for family in FAMILIES {
        let mut options = ReadOptions::default();
        options.set_verify_checksums(true);
        options.fill_cache(false);
        // Ranges deleted (retention, deleted topics) may be skipped: they
        // are never served.
        options.set_readahead_size(2 << 20);
        let mut iter = db.raw_iterator_cf_opt(column(db, family)?, options);
        iter.seek_to_first();
        while iter.valid() {
            entries += 1;
            if entries % CANCEL_EVERY == 0 && cancel.is_cancelled() {
                return Ok(entries);
            }
            iter.next();
        }
        iter.status().map_err(|err| match is_corruption(&err) {
            true => damaged(dir, &err),
            false => engine("verifying the tables", err),
        })?;
    }
    Ok(entries)
}

/// What [`repair`] did.
#[derive(Debug, Default)]
pub(super) struct Repaired {
    /// Files RocksDB moved aside (into `lost/`) as unreadable.
    pub(super) lost_files: Vec<PathBuf>,
}

/// Damaged tables a repair sets aside, at most, one after the other.
const MAX_DAMAGED_TABLES: usize = 1000;

/// Makes the database in `dir` open again, keeping what is readable:
/// every whole record of the write-ahead logs (a damaged one is skipped,
/// the records after it kept) is replayed and flushed into tables; then,
/// for each table that fails its checksums, the entries readable around
/// its damaged blocks are kept aside, RocksDB's repair moves the table to
/// `dir/lost`, and the kept entries are written back. Blocks.
///
/// # Errors
/// [`StoreError::Engine`] when RocksDB cannot repair the directory.
pub(super) fn repair(
    dir: &Path,
    open: impl Fn(DBRecoveryMode) -> Result<DB, rocksdb::Error>,
) -> StoreResult<Repaired> {
    let lost_dir = dir.join("lost");
    let lost_before = list(&lost_dir);
    let mut db = match open(DBRecoveryMode::SkipAnyCorruptedRecord) {
        Ok(db) => db,
        Err(err) if is_corruption(&err) => {
            // Damage RocksDB cannot open past: its repair first.
            rocks_repair(dir)?;
            open(DBRecoveryMode::TolerateCorruptedTailRecords)
                .map_err(|e| engine("opening the repaired database", e))?
        }
        Err(err) => return Err(engine("opening the database to repair it", err)),
    };
    // Everything replayed from the logs goes into tables, so that the
    // damaged log is no longer needed.
    flush_all(&db)?;
    for _ in 0..MAX_DAMAGED_TABLES {
        let file = match verify_tables(&db, dir, &CancellationToken::new()) {
            Ok(_) => break,
            Err(StoreError::Damaged { file, detail }) => {
                tracing::warn!(file = %file.display(), detail, "repair: damaged table");
                file
            }
            Err(err) => return Err(err),
        };
        let (kept, entries) = salvage(&db, &file)?;
        drop(db);
        rocks_repair(dir)?;
        db = open(DBRecoveryMode::TolerateCorruptedTailRecords)
            .map_err(|e| engine("opening the repaired database", e))?;
        db.write(kept)
            .map_err(|e| engine("writing back what a damaged table held", e))?;
        flush_all(&db)?;
        tracing::info!(file = %file.display(), entries, "repair: readable entries of a damaged table kept");
    }
    let lost_files = list(&lost_dir)
        .into_iter()
        .filter(|file| !lost_before.contains(file))
        .collect();
    Ok(Repaired { lost_files })
}

/// RocksDB's repair of the closed database in `dir`: it rebuilds the
/// manifest from the tables it can read and moves the others aside.
fn rocks_repair(dir: &Path) -> StoreResult<()> {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(false);
    DB::repair(&options, dir).map_err(|e| engine("repairing the database", e))
}

fn flush_all(db: &DB) -> StoreResult<()> {
    for family in FAMILIES {
        db.flush_cf(column(db, family)?)
            .map_err(|e| engine("flushing for a repair", e))?;
    }
    Ok(())
}

/// The entries readable in the key range of the damaged table `file`:
/// forwards from its first key up to the first damaged block, and
/// backwards from its last key down to the last one. (What lies between
/// two damaged blocks is lost.) Returns them as a batch, and how many.
fn salvage(db: &DB, file: &Path) -> StoreResult<(rocksdb::WriteBatch, u64)> {
    let mut kept = rocksdb::WriteBatch::default();
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let live = db.live_files().map_err(|e| engine("listing tables", e))?;
    let Some(table) = live
        .iter()
        .find(|t| Some(t.name.trim_start_matches('/')) == name.as_deref())
    else {
        return Ok((kept, 0));
    };
    let Some(family) = FAMILIES
        .into_iter()
        .find(|f| *f == table.column_family_name)
    else {
        return Ok((kept, 0));
    };
    let cf = column(db, family)?;
    let (Some(first), Some(last)) = (&table.start_key, &table.end_key) else {
        return Ok((kept, 0));
    };
    let mut entries = 0;
    let mut iter = db.raw_iterator_cf(cf);
    iter.seek(first);
    while let (Some(key), Some(value)) = (iter.key(), iter.value())
        && key <= last.as_slice()
    {
        kept.put_cf(cf, key, value);
        entries += 1;
        iter.next();
    }
    let mut iter = db.raw_iterator_cf(cf);
    iter.seek_for_prev(last);
    while let (Some(key), Some(value)) = (iter.key(), iter.value())
        && key >= first.as_slice()
    {
        kept.put_cf(cf, key, value);
        entries += 1;
        iter.prev();
    }
    Ok((kept, entries))
}

/// Per disk topic: its name, the messages its head says it holds, and
/// those that can be read.
///
/// # Errors
/// [`StoreError`] when the catalog or the messages cannot be read.
pub(super) fn count_messages(db: &DB) -> StoreResult<Vec<(TopicName, u64, u64)>> {
    let catalog = super::load_catalog(db)?;
    let messages = column(db, CF_MESSAGES)?;
    let mut counts = Vec::new();
    for topic in catalog.topics {
        if topic.storage == StorageClass::Memory {
            continue;
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(codec::message_key(topic.id, topic.next_offset));
        options.fill_cache(false);
        let mut iter = db.raw_iterator_cf_opt(messages, options);
        iter.seek(codec::message_key(topic.id, topic.first_offset));
        let mut readable = 0;
        while iter.valid() {
            readable += 1;
            iter.next();
        }
        iter.status().map_err(|e| engine("counting messages", e))?;
        let stored = topic.next_offset - topic.first_offset;
        counts.push((topic.name, stored, readable));
    }
    Ok(counts)
}

/// The files in `dir`, if it exists.
fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `records` full records of `size` bytes each, as RocksDB
    /// writes them.
    fn log_of(records: usize, size: usize) -> Vec<u8> {
        let mut log = Vec::new();
        for i in 0..records {
            let left = BLOCK - log.len() % BLOCK;
            if left < HEADER + size {
                log.resize(log.len() + left, 0);
            }
            let payload = vec![i as u8; size];
            let mut typed = vec![1u8];
            typed.extend(&payload);
            let crc = crc32c::crc32c(&typed)
                .rotate_right(15)
                .wrapping_add(MASK_DELTA);
            log.extend(crc.to_le_bytes());
            log.extend((size as u16).to_le_bytes());
            log.push(1);
            log.extend(payload);
        }
        log
    }

    #[test]
    fn whole_log_has_no_damage() {
        assert_eq!(first_damage(&log_of(1000, 100)), None);
    }

    #[test]
    fn record_cut_short_at_the_end_is_no_damage() {
        let log = log_of(1000, 100);
        assert_eq!(first_damage(&log[..log.len() - 50]), None);
        assert_eq!(first_damage(&log[..log.len() - 105]), None);
    }

    #[test]
    fn changed_bytes_in_the_middle_are_damage() {
        let mut log = log_of(1000, 100);
        let middle = log.len() / 2;
        log[middle] ^= 0xff;
        let found = first_damage(&log).expect("damage found");
        assert!(
            found <= middle as u64 && middle as u64 - found < 107,
            "{found}"
        );
        let mut last = log_of(1000, 100);
        let end = last.len() - 1;
        last[end] ^= 0xff;
        assert!(
            first_damage(&last).is_some(),
            "a whole last record is checked"
        );
    }

    #[test]
    fn named_file_is_read_from_rocksdb_messages() {
        let message = "Corruption: block checksum mismatch: stored = 1, computed = 2, \
                       type = 4  in /data/000008.sst offset 984 size 320";
        assert_eq!(named_file(message), Some(PathBuf::from("/data/000008.sst")));
        assert_eq!(named_file("Corruption: bad record length"), None);
    }
}
