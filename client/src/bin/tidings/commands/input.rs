//! Where the messages of `tidings pub` come from — its arguments, one
//! whole file, or the lines of standard input — handed out a chunk (one
//! `Publish` request) at a time, in input order.
//!
//! Standard input is read on a thread of its own into one open chunk that
//! the publishing side takes whenever it is ready to send: while a request
//! is in flight, the next chunk fills up to its limits (so batches grow
//! with the load), and an idle publisher takes even a single line (so
//! `tail -f log | tidings pub logs` is not held back). What is buffered is
//! bounded by the chunk's limits. Nothing here talks to the broker.

use std::collections::VecDeque;
use std::io::{BufRead as _, Read as _};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::Notify;

/// How big one chunk (one `Publish` request) may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkLimits {
    /// The most messages in a chunk.
    pub(crate) max_messages: usize,
    /// The most bytes in a chunk, counting `overhead` for each message; a
    /// single larger message makes a chunk of its own.
    pub(crate) max_bytes: usize,
    /// What each message adds besides its payload: key, attributes,
    /// framing.
    pub(crate) overhead: usize,
}

/// Payloads in input order, taken from the input together.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// The payloads.
    pub(crate) payloads: Vec<Bytes>,
    /// Their size as [`ChunkLimits`] counts it.
    bytes: usize,
}

impl Chunk {
    /// Whether `size` more bytes would not fit. An empty chunk takes
    /// anything.
    fn is_full_for(&self, size: usize, limits: ChunkLimits) -> bool {
        !self.payloads.is_empty()
            && (self.payloads.len() >= limits.max_messages || self.bytes + size > limits.max_bytes)
    }

    fn push(&mut self, payload: Bytes, limits: ChunkLimits) {
        self.bytes += payload.len() + limits.overhead;
        self.payloads.push(payload);
    }
}

/// The messages of one `tidings pub`.
#[derive(Debug)]
pub(crate) enum Input {
    /// Known in full up front: the arguments, or one file.
    Listed {
        /// What is left to hand out.
        payloads: VecDeque<Bytes>,
        /// How chunks are cut.
        limits: ChunkLimits,
    },
    /// The lines of standard input.
    Lines(Lines),
}

impl Input {
    /// The MESSAGE arguments.
    pub(crate) fn arguments(messages: Vec<String>, limits: ChunkLimits) -> Self {
        let payloads = messages.into_iter().map(Bytes::from).collect();
        Self::Listed { payloads, limits }
    }

    /// One message: the whole of the file at `path`, or of standard input
    /// for `-`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub(crate) fn file(path: &Path, limits: ChunkLimits) -> anyhow::Result<Self> {
        let content = if path == Path::new("-") {
            let mut content = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut content)
                .context("cannot read standard input")?;
            content
        } else {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        };
        Ok(Self::Listed {
            payloads: VecDeque::from([Bytes::from(content)]),
            limits,
        })
    }

    /// Each line of standard input, read on a thread of its own.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(crate) fn lines(limits: ChunkLimits) -> anyhow::Result<Self> {
        Lines::start(limits).map(Self::Lines)
    }

    /// The next chunk in input order: as much as is at hand, up to the
    /// limits, waiting only when nothing is. `None` once the input is
    /// over.
    pub(crate) async fn next_chunk(&mut self) -> Option<std::io::Result<Chunk>> {
        match self {
            Self::Listed { payloads, limits } => {
                let mut chunk = Chunk::default();
                while let Some(payload) = payloads.front() {
                    if chunk.is_full_for(payload.len() + limits.overhead, *limits) {
                        break;
                    }
                    let payload = payloads.pop_front()?;
                    chunk.push(payload, *limits);
                }
                (!chunk.payloads.is_empty()).then_some(Ok(chunk))
            }
            Self::Lines(lines) => lines.next_chunk().await,
        }
    }

    /// After publishing stopped early: how many messages the input still
    /// held, when it ends within `grace` (a pipe whose writer is done);
    /// `None` when it does not (a terminal, `tail -f`) or cannot be read.
    pub(crate) async fn count_rest(&mut self, grace: Duration) -> Option<u64> {
        let count = async {
            let mut rest: u64 = 0;
            while let Some(chunk) = self.next_chunk().await {
                rest += chunk.ok()?.payloads.len() as u64;
            }
            Some(rest)
        };
        tokio::time::timeout(grace, count).await.ok().flatten()
    }
}

/// The lines of standard input, read on a thread into one open chunk.
#[derive(Debug)]
pub(crate) struct Lines {
    shared: Arc<Shared>,
}

/// What the reading thread and [`Lines`] share.
#[derive(Debug)]
struct Shared {
    state: Mutex<LinesState>,
    /// Wakes the thread when the open chunk was taken.
    room: Condvar,
    /// Wakes the publishing side when a line came or the input ended.
    ready: Notify,
    limits: ChunkLimits,
}

#[derive(Debug, Default)]
struct LinesState {
    open: Chunk,
    /// Set once the input is over: `Ok` at its end, or the read error.
    end: Option<std::io::Result<()>>,
    /// Set when the publishing side is gone: the thread stops.
    gone: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, LinesState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lines {
    fn start(limits: ChunkLimits) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(LinesState::default()),
            room: Condvar::new(),
            ready: Notify::new(),
            limits,
        });
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || read_lines(&reader))
            .context("cannot start a thread to read standard input")?;
        Ok(Self { shared })
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Chunk>> {
        loop {
            {
                let mut state = self.shared.state();
                if !state.open.payloads.is_empty() {
                    let chunk = std::mem::take(&mut state.open);
                    self.shared.room.notify_one();
                    return Some(Ok(chunk));
                }
                match state.end.take() {
                    Some(Ok(())) => {
                        state.end = Some(Ok(()));
                        return None;
                    }
                    Some(Err(err)) => {
                        // Reported once; after it the input is over.
                        state.end = Some(Ok(()));
                        return Some(Err(err));
                    }
                    None => {}
                }
            }
            // A notification sent since the check above is kept as a
            // permit, so this cannot miss it.
            self.shared.ready.notified().await;
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.shared.state().gone = true;
        self.shared.room.notify_one();
    }
}

/// The reading thread: each line without its `\n` (or `\r\n`) into the
/// open chunk, waiting while the chunk is full.
fn read_lines(shared: &Shared) {
    let mut stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let end = loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => break Err(err),
        }
        if !add_line(shared, Bytes::from(strip_newline(line))) {
            return;
        }
    };
    shared.state().end = Some(end);
    shared.ready.notify_one();
}

/// Adds one line to the open chunk once it fits; false when the
/// publishing side is gone.
fn add_line(shared: &Shared, line: Bytes) -> bool {
    let limits = shared.limits;
    let size = line.len() + limits.overhead;
    let mut state = shared.state();
    while state.open.is_full_for(size, limits) && !state.gone {
        state = shared
            .room
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
    }
    if state.gone {
        return false;
    }
    state.open.push(line, limits);
    drop(state);
    shared.ready.notify_one();
    true
}

/// A line without its trailing `\n`, and without the `\r` before it when
/// the input has Windows line endings.
fn strip_newline(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_messages: 3,
        max_bytes: 20,
        overhead: 2,
    };

    fn texts(chunk: &Chunk) -> Vec<&str> {
        chunk
            .payloads
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap_or("<binary>"))
            .collect()
    }

    #[test]
    fn newlines_and_carriage_returns_before_them_are_stripped() {
        assert_eq!(strip_newline(b"a\r\n".to_vec()), b"a");
        assert_eq!(strip_newline(b"a\n".to_vec()), b"a");
        assert_eq!(strip_newline(b"last".to_vec()), b"last");
        assert_eq!(strip_newline(b"a\r".to_vec()), b"a\r", "only before \\n");
        assert_eq!(strip_newline(b"\n".to_vec()), b"");
    }

    #[tokio::test]
    async fn listed_messages_are_cut_by_count_and_bytes_in_order() {
        let messages = [
            "a",
            "b",
            "c",
            "d",
            "0123456789",
            "0123456789abcdefghij",
            "e",
        ];
        let mut input = Input::arguments(messages.map(String::from).to_vec(), LIMITS);
        let mut chunks = Vec::new();
        while let Some(chunk) = input.next_chunk().await {
            chunks.push(texts(&chunk.expect("listed input cannot fail")).join(","));
        }
        // By count (3), then by bytes (20 with 2 a message); a message
        // over the limit goes alone.
        assert_eq!(
            chunks,
            ["a,b,c", "d,0123456789", "0123456789abcdefghij", "e"]
        );
        assert_eq!(input.count_rest(Duration::ZERO).await, Some(0));
    }

    #[tokio::test]
    async fn what_is_left_of_listed_messages_is_counted() {
        let mut input = Input::arguments(vec!["a".into(); 5], LIMITS);
        assert!(input.next_chunk().await.is_some());
        assert_eq!(input.count_rest(Duration::ZERO).await, Some(2));
    }

    #[test]
    fn a_full_chunk_takes_no_more_and_an_empty_one_takes_anything() {
        let mut chunk = Chunk::default();
        assert!(!chunk.is_full_for(1000, LIMITS));
        chunk.push(Bytes::from_static(b"0123456789"), LIMITS);
        assert!(!chunk.is_full_for(8, LIMITS), "12 + 8 = 20 fits");
        assert!(chunk.is_full_for(9, LIMITS));
    }
}
