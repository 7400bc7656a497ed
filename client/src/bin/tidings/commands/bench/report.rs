//! Figures of a run: the `RESULT` and `LATENCY` lines, the progress line,
//! and the broker's CPU time and peak memory.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

/// Prints `RESULT <name>: msgs=N size=SB elapsed=X.XXXs rate=R msg/s  M.M MB/s`.
pub(super) fn result(name: &str, msgs: u64, size: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "RESULT {name}: msgs={msgs} size={size}B elapsed={secs:.3}s rate={:.0} msg/s  {:.1} MB/s",
        msgs as f64 / secs,
        msgs as f64 * size as f64 / secs / 1e6,
    );
}

/// Prints `LATENCY <name> (us): n=… p50=… p90=… p99=… p99.9=… max=… mean=…`.
pub(super) fn latency(name: &str, histogram: &Histogram<u64>) {
    println!(
        "LATENCY {name} (us): n={} p50={} p90={} p99={} p99.9={} max={} mean={:.1}",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        histogram.mean(),
    );
}

/// A histogram of microseconds, from 1 µs to an hour, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("the bounds are valid")
}

/// Records `elapsed` in microseconds, clamped into the histogram's range.
pub(super) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// What a workload of one call per message measures: its name in the
/// `RESULT` line and the `LATENCY` line, how many calls, their payload size,
/// and how many at once.
pub(super) struct CallLoop<'a> {
    pub(super) name: &'a str,
    pub(super) latency_name: &'a str,
    pub(super) progress: &'static str,
    pub(super) count: u64,
    pub(super) size: usize,
    pub(super) in_flight: u64,
    pub(super) server_pid: Option<u32>,
}

impl CallLoop<'_> {
    /// Makes the calls `call(0)`, `call(1)`, … up to the count, at most
    /// `in_flight` at once, each timed from its start to its answer; then
    /// prints the `RESULT`, `LATENCY` and (with a pid) `SERVER` lines.
    ///
    /// # Errors
    /// The first call that failed.
    pub(super) async fn run<F, Fut>(&self, mut call: F) -> anyhow::Result<()>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let usage = ServerUsage::read(self.server_pid);
        let done = Arc::new(AtomicU64::new(0));
        let progress = Progress::start(self.progress, Arc::clone(&done), self.count);
        let mut latencies = histogram();
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        let started = Instant::now();
        loop {
            while next < self.count && (pending.len() as u64) < self.in_flight {
                let answer = call(next);
                next += 1;
                pending.push(async move {
                    let sent = Instant::now();
                    answer.await.map(|()| sent.elapsed())
                });
            }
            let Some(answer) = pending.next().await else {
                break;
            };
            record(&mut latencies, answer?);
            done.fetch_add(1, Ordering::Relaxed);
        }
        let elapsed = started.elapsed();
        drop(progress);
        result(self.name, self.count, self.size, elapsed);
        latency(self.latency_name, &latencies);
        if let Some((pid, before)) = usage {
            before.report_since(pid, self.name, self.count);
        }
        Ok(())
    }
}

/// A progress line on standard error, once a second, until dropped.
pub(super) struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Reports `done` out of `total` under `name`.
    pub(super) fn start(name: &'static str, done: Arc<AtomicU64>, total: u64) -> Self {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                let rate = now as f64 / started.elapsed().as_secs_f64();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{name}: {now}/{total} msgs, {rate:.0} msg/s   ");
                let _ = err.flush();
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        eprintln!();
    }
}

/// CPU time and peak memory of the broker's process, read from /proc.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerUsage {
    cpu: Duration,
}

/// Clock ticks per second in /proc/PID/stat (100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

impl ServerUsage {
    /// Reads the current CPU time of `pid`; `None` when /proc has no such
    /// process.
    pub(super) fn read(pid: Option<u32>) -> Option<(u32, Self)> {
        let pid = pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((
            pid,
            Self {
                cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
            },
        ))
    }

    /// Prints the CPU time since `self` per million messages, and the peak
    /// resident memory so far.
    pub(super) fn report_since(self, pid: u32, name: &str, msgs: u64) {
        let Some((_, now)) = Self::read(Some(pid)) else {
            return;
        };
        let cpu = now.cpu.saturating_sub(self.cpu).as_secs_f64();
        let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        println!(
            "SERVER {name}: cpu={cpu:.2}s cpu_per_million={:.2}s peak_rss={:.1}MiB",
            cpu * 1e6 / msgs.max(1) as f64,
            peak as f64 / 1024.0,
        );
    }
}
