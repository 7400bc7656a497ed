//! `tidings bench e2e`: publish-to-receive latency at a fixed rate.
//!
//! Open loop: message i is published at `start + i / rate` whether or not
//! earlier ones were answered, each carrying its send time. By default the
//! messages go through the client's `Publisher`, as an application's do:
//! messages queued together leave in one request. `--unbatched` sends
//! every message in a request of its own instead, and `--publishers N`
//! spreads those requests over N connections, as N independent services
//! sharing the rate. Requests are unary `Publish` calls unless `--stream`
//! puts them on `PublishStream` calls (one per connection; for the
//! `Publisher`, its own). A `Subscriber` on a
//! fresh subscription receives them and acknowledges each; latency is
//! receive time minus send time (one clock: run it on the broker's machine
//! or one with a synchronised clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tidings_client::v1::{PublishMessage, PublishRequest};
use tidings_client::{Client, Publisher, StartPosition, Subscriber, SubscriptionConfig};

use super::report::{self, Progress, ServerUsage};
use super::rpc::{self, Rpc};
use super::{CommonArgs, Context, ensure_topic, storage_of, unique_name};

/// Publishes in flight at most before the publisher waits.
const MAX_IN_FLIGHT: usize = 1000;
/// How long the receiver waits for stragglers after the last publish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `tidings bench e2e`.
#[derive(Debug, clap::Args)]
pub(crate) struct E2eArgs {
    /// Messages per second to publish.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Messages to publish in all.
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Payload size in bytes (at least 8: the send time travels in it).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..))]
    size: u64,
    /// Publish every message in a `Publish` call of its own, instead of
    /// through the client's `Publisher` (which sends messages queued
    /// together in one call).
    #[arg(long)]
    unbatched: bool,
    /// Publish from N publishers, each on its own connection and each
    /// sending one message per request, sharing the rate (implies
    /// --unbatched).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    publishers: Option<u64>,
    /// Send the requests on long-lived `PublishStream` calls instead of as
    /// unary `Publish` calls (the default).
    #[arg(long)]
    stream: bool,
    /// Create the topic as a memory topic (messages in the broker's memory
    /// only, bounded by 64 MiB), to measure latency without the disk.
    #[arg(long)]
    memory: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs the workload and prints its figures.
///
/// # Errors
/// When the broker cannot be reached, a call fails, or messages are
/// missing at the end.
pub(crate) async fn run(ctx: &Context, args: E2eArgs) -> anyhow::Result<()> {
    let size = usize::try_from(args.size)?;
    let client = ctx.connect().await?;
    let topic = args.common.topic.clone();
    ensure_topic(&client, &topic, storage_of(args.memory)).await?;
    let subscription = unique_name("bench-e2e");
    client
        .create_subscription(
            SubscriptionConfig::new(subscription.clone(), topic.clone())
                .start(StartPosition::Latest),
        )
        .await?;
    let subscriber = ctx
        .connect()
        .await?
        .subscriber(subscription.clone())
        .subscribe()
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let receiver = tokio::spawn(receive(subscriber, args.count, Arc::clone(&received)));

    let usage = ServerUsage::read(args.common.server_pid);
    let progress = Progress::start("e2e", Arc::clone(&received), args.count);
    let started = Instant::now();
    let sender = Sender::new(ctx, &client, &args).await?;
    publish_at_rate(&sender, &args, size).await?;
    let latencies = tokio::time::timeout(DRAIN_TIMEOUT, receiver)
        .await
        .map_err(|_| {
            anyhow::anyhow!("messages still missing {DRAIN_TIMEOUT:?} after the last publish")
        })???;
    let elapsed = started.elapsed();
    drop(progress);
    let mode = sender.label(args.stream);
    let name = format!("tidings-e2e target_rate={} publish={mode}", args.rate);
    report::result(&name, args.count, size, elapsed);
    report::latency(
        &format!("tidings-e2e publish={mode} publish->consume"),
        &latencies,
    );
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, args.count);
    }
    client.delete_subscription(&subscription).await?;
    Ok(())
}

/// How the workload publishes.
enum Sender {
    /// Through a `Publisher`, with its default settings but the transport.
    Batched(Publisher),
    /// One message per request, message i from connection i mod N.
    Unbatched { rpcs: Vec<Rpc>, topic: String },
}

impl Sender {
    /// The sender `args` ask for, publishing through `client` (or, with
    /// `--publishers`, through connections of its own).
    async fn new(ctx: &Context, client: &Client, args: &E2eArgs) -> anyhow::Result<Self> {
        let topic = args.common.topic.clone();
        if let Some(publishers) = args.publishers {
            let mut rpcs = Vec::new();
            for _ in 0..publishers {
                rpcs.push(Rpc::new(&ctx.connect().await?, args.stream));
            }
            return Ok(Self::Unbatched { rpcs, topic });
        }
        if args.unbatched {
            let rpcs = vec![Rpc::new(client, args.stream)];
            return Ok(Self::Unbatched { rpcs, topic });
        }
        let publisher = client
            .publisher_builder(topic)
            .publish_stream(args.stream)
            .build();
        Ok(Self::Batched(publisher))
    }

    /// What the `RESULT` and `LATENCY` names say of the sender after
    /// `publish=`.
    fn label(&self, stream: bool) -> String {
        let mode = match self {
            Self::Batched(_) => "batched".to_owned(),
            Self::Unbatched { rpcs, .. } if rpcs.len() == 1 => "unbatched".to_owned(),
            Self::Unbatched { rpcs, .. } => format!("unbatched publishers={}", rpcs.len()),
        };
        format!("{mode}{}", rpc::label(stream))
    }

    /// Publishes message `i`; the future resolves once it is stored.
    fn send(&self, i: u64, payload: Bytes) -> BoxFuture<'static, anyhow::Result<()>> {
        match self {
            Self::Batched(publisher) => {
                publisher.publish(payload).map(|r| Ok(r.map(drop)?)).boxed()
            }
            Self::Unbatched { rpcs, topic } => {
                let request = PublishRequest {
                    topic: topic.clone(),
                    messages: vec![PublishMessage {
                        payload,
                        ..PublishMessage::default()
                    }],
                };
                let rpc = &rpcs[(i % rpcs.len() as u64) as usize];
                rpc.publish(request).map(|r| r.map(drop)).boxed()
            }
        }
    }
}

/// Publishes `args.count` messages on schedule.
async fn publish_at_rate(sender: &Sender, args: &E2eArgs, size: usize) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let mut body = vec![b'x'; size];
    let mut pending = FuturesUnordered::new();
    for i in 0..args.count {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        body[..8].copy_from_slice(&now_nanos().to_le_bytes());
        pending.push(sender.send(i, Bytes::copy_from_slice(&body)));
        // Collect answers that are in without waiting for the others.
        while let Some(Some(answer)) = pending.next().now_or_never() {
            answer?;
        }
        while pending.len() >= MAX_IN_FLIGHT {
            if let Some(answer) = pending.next().await {
                answer?;
            }
        }
    }
    while let Some(answer) = pending.next().await {
        answer?;
    }
    Ok(())
}

/// Receives `count` messages, acknowledging each, and returns their
/// latencies.
async fn receive(
    mut subscriber: Subscriber,
    count: u64,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = report::histogram();
    while received.load(Ordering::Relaxed) < count {
        let Some(delivery) = subscriber.next().await else {
            anyhow::bail!(
                "the stream ended after {} messages",
                received.load(Ordering::Relaxed)
            );
        };
        let delivery = delivery?;
        let sent = delivery
            .payload()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        report::record(
            &mut latencies,
            Duration::from_nanos(now_nanos().saturating_sub(sent)),
        );
        delivery.ack();
        received.fetch_add(1, Ordering::Relaxed);
    }
    subscriber.close().await?;
    Ok(latencies)
}
