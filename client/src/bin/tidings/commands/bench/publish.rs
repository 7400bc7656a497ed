//! `tidings bench publish`: durable publishing throughput.
//!
//! P publishers, each on its own connection (as independent services
//! publish), keep W requests of B messages in flight between them until N
//! messages are stored: unary `Publish` calls, or with `--stream` requests
//! on one `PublishStream` call per publisher. Every request's latency (sent
//! to acknowledged) goes into a histogram. With `--ids` every message
//! carries a unique 36-byte id, so the broker checks and remembers each
//! one: the cost of idempotent publishing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tidings_client::v1::{PublishMessage, PublishRequest};

use super::report::{self, Progress, ServerUsage};
use super::rpc::{self, Rpc};
use super::{CommonArgs, Context, ensure_topic, payload, storage_of};

/// Flags of `tidings bench publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// Messages to publish in all.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages per `Publish` request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Requests in flight in all, spread evenly over the publishers.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
    /// Publishers, each with its own connection, like independent
    /// services; at most --in-flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    publishers: u64,
    /// Send the requests on one long-lived `PublishStream` call per
    /// publisher instead of as unary `Publish` calls (the default).
    #[arg(long)]
    stream: bool,
    /// Give every message a unique id (36 bytes, like a UUID), which the
    /// broker deduplicates by.
    #[arg(long)]
    ids: bool,
    /// Publish every message with this delivery delay (such as 1h), so
    /// that it waits in the broker.
    #[arg(long, value_parser = crate::values::parse_delay, value_name = "DURATION")]
    delay: Option<std::time::Duration>,
    /// Create the topic as a memory topic (messages in the broker's memory
    /// only, bounded by 64 MiB), to measure publishing without the disk.
    #[arg(long)]
    memory: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs the workload and prints its figures.
///
/// # Errors
/// When the broker cannot be reached or a publish fails.
pub(crate) async fn run(ctx: &Context, args: PublishArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.publishers <= args.in_flight,
        "--publishers {} needs at least as many requests in flight (--in-flight {}): each \
         publisher keeps at least one",
        args.publishers,
        args.in_flight
    );
    let client = ctx.connect().await?;
    ensure_topic(&client, &args.common.topic, storage_of(args.memory)).await?;
    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        publishers.push(ctx.connect().await?);
    }
    let usage = ServerUsage::read(args.common.server_pid);
    let progress = Progress::start("publish", Arc::clone(&done), args.count);
    let started = Instant::now();
    // Ids unique to this run, so that a run against a topic that
    // remembers an earlier run's ids stores every message.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let tasks: Vec<_> = publishers
        .into_iter()
        .zip(0..)
        .map(|(client, n)| {
            let work = Work {
                rpc: Rpc::new(&client, args.stream),
                topic: args.common.topic.clone(),
                payload: payload(args.size),
                batch: args.batch,
                in_flight: share(args.in_flight, args.publishers, n),
                count: args.count,
                ids: args.ids.then_some(run),
                delay: args
                    .delay
                    .and_then(|d| prost_types::Duration::try_from(d).ok()),
                claimed: Arc::clone(&claimed),
                done: Arc::clone(&done),
            };
            tokio::spawn(work.run())
        })
        .collect();
    let mut latencies = report::histogram();
    for task in tasks {
        latencies.add(task.await??)?;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let name = format!(
        "tidings-pub batch={} in_flight={} publishers={}{}{}",
        args.batch,
        args.in_flight,
        args.publishers,
        if args.ids { " ids" } else { "" },
        rpc::label(args.stream),
    );
    report::result(&name, args.count, args.size, elapsed);
    report::latency(
        &format!("tidings-pub{} publish->ack", rpc::label(args.stream)),
        &latencies,
    );
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, args.count);
    }
    Ok(())
}

/// Message `n`'s id in run `run`: 36 characters, `{run:016x}-{n:019}`,
/// written digit by digit. Through `format!` it cost the load generator,
/// which shares the machine with the broker, a tenth of a microsecond a
/// message: enough to move the rate it measures.
fn message_id(run: u64, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'0'; 36];
    id[16] = b'-';
    let (mut run, mut n) = (run, n);
    for digit in id[..16].iter_mut().rev() {
        *digit = HEX[(run & 0xf) as usize];
        run >>= 4;
    }
    for digit in id[17..].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // ASCII throughout: the check is the quick one, not the lossy
    // conversion's walk over the characters.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// Publisher `n`'s share of `total` requests in flight over `publishers`:
/// the same for each, the first ones taking one more of what is left.
fn share(total: u64, publishers: u64, n: u64) -> u64 {
    total / publishers + u64::from(n < total % publishers)
}

/// One publisher's share of the work.
struct Work {
    rpc: Rpc,
    topic: String,
    payload: bytes::Bytes,
    batch: u64,
    in_flight: u64,
    count: u64,
    /// The run's id prefix, when messages carry ids.
    ids: Option<u64>,
    /// Every message's delivery delay.
    delay: Option<prost_types::Duration>,
    /// Messages claimed by any publisher so far.
    claimed: Arc<AtomicU64>,
    /// Messages stored so far.
    done: Arc<AtomicU64>,
}

impl Work {
    /// Claims the next request's worth of messages: the number of its
    /// first and how many; `None` when all are claimed.
    fn claim(&self) -> Option<(u64, u64)> {
        let start = self.claimed.fetch_add(self.batch, Ordering::Relaxed);
        (start < self.count).then(|| (start, self.batch.min(self.count - start)))
    }

    fn request(&self, first: u64, messages: u64) -> PublishRequest {
        let message = |n: u64| PublishMessage {
            payload: self.payload.clone(),
            id: self.ids.map(|run| message_id(run, n)).unwrap_or_default(),
            deliver_after: self.delay,
            ..PublishMessage::default()
        };
        PublishRequest {
            topic: self.topic.clone(),
            messages: (first..first + messages).map(message).collect(),
        }
    }

    async fn run(self) -> anyhow::Result<Histogram<u64>> {
        let mut latencies = report::histogram();
        let mut pending = FuturesUnordered::new();
        loop {
            while (pending.len() as u64) < self.in_flight {
                let Some((first, messages)) = self.claim() else {
                    break;
                };
                let answer = self.rpc.publish(self.request(first, messages));
                pending.push(async move {
                    let sent = Instant::now();
                    let duplicate = answer.await?;
                    anyhow::Ok((messages, sent, duplicate))
                });
            }
            let Some(answer) = pending.next().await else {
                return Ok(latencies);
            };
            let (messages, sent, duplicate) = answer?;
            anyhow::ensure!(!duplicate, "the broker took a unique id for a duplicate");
            report::record(&mut latencies, sent.elapsed());
            self.done.fetch_add(messages, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_requests_in_flight_are_spread_over_the_publishers() {
        let shares: Vec<u64> = (0..4).map(|n| super::share(10, 4, n)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(super::share(256, 1, 0), 256);
    }

    #[test]
    fn a_message_id_is_the_run_in_hex_and_the_number_in_decimal() {
        for (run, n) in [
            (0, 0),
            (0xdead_beef, 42),
            (u64::MAX, 9_999_999_999_999_999_999),
        ] {
            assert_eq!(super::message_id(run, n), format!("{run:016x}-{n:019}"));
        }
    }
}
