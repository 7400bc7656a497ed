//! `tidings bench consume`: draining a backlog with per-message acks.
//!
//! A fresh subscription starts at the topic's end; N messages are published
//! (not timed); then S competing streams of the client's `Subscriber`
//! receive them and acknowledge each one (the client batches the acks).
//! The clock stops once every message is received and every ack is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings_client::v1::{PublishMessage, PublishRequest};
use tidings_client::{Client, StartPosition, SubscriptionConfig};
use tokio::sync::watch;

use super::report::{self, Progress, ServerUsage};
use super::{CommonArgs, Context, ensure_topic, payload, unique_name};

/// Messages per request when filling the backlog.
const FILL_BATCH: u64 = 500;
/// Fill requests in flight.
const FILL_IN_FLIGHT: usize = 8;

/// Flags of `tidings bench consume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// Messages in the backlog to drain.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Competing streams on the subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    streams: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Unacknowledged messages each stream may hold.
    #[arg(long, default_value_t = tidings_client::DEFAULT_MAX_OUTSTANDING_MESSAGES)]
    max_outstanding: u32,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs the workload and prints its figures.
///
/// # Errors
/// When the broker cannot be reached, a call fails, or a stream ends early.
pub(crate) async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let topic = &args.common.topic;
    ensure_topic(&client, topic).await?;
    let subscription = unique_name("bench-consume");
    let head = client.get_topic(topic).await?.next_offset;
    client
        .create_subscription(
            SubscriptionConfig::new(subscription.clone(), topic.clone())
                .start(StartPosition::Offset(head)),
        )
        .await?;
    fill(&client, topic, args.count, args.size).await?;

    let received = Arc::new(AtomicU64::new(0));
    let usage = ServerUsage::read(args.common.server_pid);
    let progress = Progress::start("consume", Arc::clone(&received), args.count);
    let started = Instant::now();
    // Set once the last message arrived, so that every stream stops.
    let (all_in_tx, all_in_rx) = watch::channel(false);
    let all_in_tx = Arc::new(all_in_tx);
    let mut streams = FuturesUnordered::new();
    for _ in 0..args.streams {
        let client = ctx.connect().await?;
        let mut subscriber = client
            .subscriber(subscription.clone())
            .max_outstanding_messages(args.max_outstanding)
            .subscribe()
            .await?;
        let (received, count) = (Arc::clone(&received), args.count);
        let (all_in_tx, mut all_in_rx) = (Arc::clone(&all_in_tx), all_in_rx.clone());
        streams.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    delivery = subscriber.next() => delivery,
                    _ = all_in_rx.wait_for(|all_in| *all_in) => break,
                };
                let Some(delivery) = delivery else { break };
                delivery?.ack();
                if received.fetch_add(1, Ordering::Relaxed) + 1 >= count {
                    all_in_tx.send_replace(true);
                }
            }
            subscriber.close().await
        }));
    }
    while let Some(stream) = streams.next().await {
        stream??;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let name = format!("tidings-sub ack=each streams={}", args.streams);
    report::result(&name, received.load(Ordering::Relaxed), args.size, elapsed);
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, args.count);
    }
    let left = client.get_subscription(&subscription).await?;
    client.delete_subscription(&subscription).await?;
    anyhow::ensure!(
        left.backlog == 0,
        "{} messages were left unacknowledged",
        left.backlog
    );
    Ok(())
}

/// Publishes `count` messages of `size` bytes, in large batches.
async fn fill(client: &Client, topic: &str, count: u64, size: usize) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start("fill", Arc::clone(&done), count);
    let message = PublishMessage {
        payload: payload(size),
        ..PublishMessage::default()
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    loop {
        while next < count && pending.len() < FILL_IN_FLIGHT {
            let n = FILL_BATCH.min(count - next);
            next += n;
            let request = PublishRequest {
                topic: topic.to_owned(),
                messages: (0..n).map(|_| message.clone()).collect(),
            };
            let mut service = client.publisher_service();
            pending.push(async move { service.publish(request).await.map(|_| n) });
        }
        match pending.next().await {
            Some(stored) => {
                done.fetch_add(stored?, Ordering::Relaxed);
            }
            None => return Ok(()),
        }
    }
}
