//! An append-only journal of JSON lines: the durable memory of the order
//! service and of the notifier.
//!
//! [`Journal::append`] returns once the record is synced to disk. A crash
//! can leave the last line torn (half written); [`Journal::open`] drops such
//! a line, which no caller was ever told was stored. The journal never
//! rewrites what it stored and does not interpret records; after a failed
//! write it refuses further appends (restart the service to recover).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened, read or written.
    #[error("cannot use journal {}; check the --data-dir and the disk", path.display())]
    Io {
        /// The journal file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line before the last one does not hold a record.
    #[error("journal {} is corrupt at line {line}; restore it from a backup or move it away to start empty", path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// Why the line does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// An earlier append failed, so the file may end in a partial line.
    #[error("journal {} failed earlier and takes no more records; restart the service", path.display())]
    Broken {
        /// The journal file.
        path: PathBuf,
    },
}

/// An append-only file of JSON records of type `T`, one per line. Cloning is
/// cheap; clones append to the same file, one record at a time.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    broken: Arc<AtomicBool>,
    records: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Journal<T> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            broken: Arc::clone(&self.broken),
            records: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Journal<T> {
    /// Opens the journal at `path`, creating it (and its directory) when
    /// missing, and returns it with the records it holds, oldest first.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the file cannot be opened or read,
    /// [`JournalError::Corrupt`] when a line other than the last one does
    /// not parse.
    pub async fn open(path: impl Into<PathBuf>) -> Result<(Self, Vec<T>), JournalError> {
        let path = path.into();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_file(&path))
        };
        let (file, records) = opened.await.map_err(|err| JournalError::Io {
            path: path.clone(),
            source: std::io::Error::other(err),
        })??;
        let journal = Self {
            path,
            file: Arc::new(Mutex::new(file)),
            broken: Arc::new(AtomicBool::new(false)),
            records: PhantomData,
        };
        Ok((journal, records))
    }

    /// Appends `record` and syncs it to disk.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the write or the sync fails; from then on
    /// [`JournalError::Broken`].
    pub async fn append(&self, record: &T) -> Result<(), JournalError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(JournalError::Broken {
                path: self.path.clone(),
            });
        }
        let mut line = serde_json::to_vec(record).map_err(|err| self.io_error(err.into()))?;
        line.push(b'\n');
        let file = Arc::clone(&self.file);
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result);
        written.map_err(|source| {
            self.broken.store(true, Ordering::Release);
            self.io_error(source)
        })
    }

    fn io_error(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Opens (or creates) the file, reads its records and cuts a torn tail.
fn open_file<T: DeserializeOwned>(path: &Path) -> Result<(File, Vec<T>), JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    if !existed {
        // Make the new file's directory entry durable too.
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let (records, kept) = parse(&bytes).map_err(|(line, source)| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        source,
    })?;
    if kept < bytes.len() {
        warn!(journal = %path.display(), dropped_bytes = bytes.len() - kept, "dropping a torn last line");
        file.set_len(kept as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok((file, records))
}

/// Parses complete lines; returns the records and how many bytes they span.
/// A last line that is unterminated or does not parse is torn and left out;
/// an earlier line that does not parse is an error (its 1-based number).
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Vec<T>, usize), (usize, serde_json::Error)> {
    let mut records = Vec::new();
    let mut start = 0;
    for (index, line) in bytes.split_inclusive(|&byte| byte == b'\n').enumerate() {
        let is_last = start + line.len() == bytes.len();
        let Some(body) = line.strip_suffix(b"\n") else {
            break; // unterminated: torn
        };
        match serde_json::from_slice(body) {
            Ok(record) => records.push(record),
            Err(_) if is_last => break,
            Err(err) => return Err((index + 1, err)),
        }
        start += line.len();
    }
    Ok((records, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_numbers(text: &str) -> Result<(Vec<u32>, usize), usize> {
        parse::<u32>(text.as_bytes()).map_err(|(line, _)| line)
    }

    #[test]
    fn torn_last_line_is_dropped() {
        assert_eq!(parse_numbers("1\n2\n3"), Ok((vec![1, 2], 4)));
        assert_eq!(parse_numbers("1\n2\n{\"x\n"), Ok((vec![1, 2], 4)));
        assert_eq!(parse_numbers("1\n2\n"), Ok((vec![1, 2], 4)));
        assert_eq!(parse_numbers(""), Ok((vec![], 0)));
    }

    #[test]
    fn corrupt_middle_line_is_an_error() {
        assert_eq!(parse_numbers("1\nxx\n3\n"), Err(2));
    }

    #[tokio::test]
    async fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("j.jsonl");
        let (journal, records) = Journal::<u32>::open(&path).await.expect("open");
        assert!(records.is_empty());
        journal.append(&7).await.expect("append");
        journal.append(&8).await.expect("append");
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"12").expect("tear");
        drop(file);

        let (journal, records) = Journal::<u32>::open(&path).await.expect("reopen");
        assert_eq!(records, vec![7, 8]);
        journal.append(&9).await.expect("append after a torn tail");
        let (_, records) = Journal::<u32>::open(&path).await.expect("reopen");
        assert_eq!(records, vec![7, 8, 9]);
    }
}
