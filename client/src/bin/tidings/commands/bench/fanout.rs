//! `tidings bench fanout`: one topic, K subscriptions, every message to
//! each.
//!
//! K fresh subscriptions start at the topic's end, each with one open
//! stream (spread over several connections); then N messages are
//! published, and the clock stops when every subscription has received and
//! acknowledged all N. With a large K this also shows the broker holding
//! that many streams at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings_client::v1::{PublishMessage, PublishRequest};
use tidings_client::{Client, StartPosition, StorageClass, SubscriptionConfig};

use super::report::{self, Progress, ServerUsage};
use super::{CommonArgs, Context, ensure_topic, payload, unique_name};

/// Streams sharing one connection.
const STREAMS_PER_CONNECTION: u64 = 100;
/// Messages per publish request.
const PUBLISH_BATCH: u64 = 100;

/// Flags of `tidings bench fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Subscriptions of the topic, one open stream each.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    subscriptions: u64,
    /// Messages to publish; each subscription receives all of them.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs the workload and prints its figures.
///
/// # Errors
/// When the broker cannot be reached, a call fails, or a stream ends early.
pub(crate) async fn run(ctx: &Context, args: FanoutArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let topic = args.common.topic.clone();
    ensure_topic(&client, &topic, StorageClass::Disk).await?;
    let prefix = unique_name("bench-fanout");
    let total = args.count * args.subscriptions;
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = FuturesUnordered::new();
    let mut connection = client.clone();
    for k in 0..args.subscriptions {
        if k % STREAMS_PER_CONNECTION == 0 {
            connection = ctx.connect().await?;
        }
        let name = format!("{prefix}-{k}");
        connection
            .create_subscription(
                SubscriptionConfig::new(name.clone(), topic.clone()).start(StartPosition::Latest),
            )
            .await?;
        let mut subscriber = connection.subscriber(name).subscribe().await?;
        let (received, count) = (Arc::clone(&received), args.count);
        streams.push(tokio::spawn(async move {
            for got in 0..count {
                let Some(delivery) = subscriber.next().await else {
                    anyhow::bail!("a stream ended after {got} of {count} messages");
                };
                delivery?.ack();
                received.fetch_add(1, Ordering::Relaxed);
            }
            subscriber.close().await?;
            anyhow::Ok(())
        }));
    }
    eprintln!("{} streams open", args.subscriptions);

    let usage = ServerUsage::read(args.common.server_pid);
    let progress = Progress::start("fanout", Arc::clone(&received), total);
    let started = Instant::now();
    publish(&client, &topic, args.count, args.size).await?;
    while let Some(stream) = streams.next().await {
        stream??;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let name = format!("tidings-fanout subscriptions={}", args.subscriptions);
    report::result(&name, total, args.size, elapsed);
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, total);
    }
    for k in 0..args.subscriptions {
        client.delete_subscription(&format!("{prefix}-{k}")).await?;
    }
    Ok(())
}

/// Publishes `count` messages in batches, one request at a time.
async fn publish(client: &Client, topic: &str, count: u64, size: usize) -> anyhow::Result<()> {
    let message = PublishMessage {
        payload: payload(size),
        ..PublishMessage::default()
    };
    let mut service = client.publisher_service();
    let mut sent = 0;
    while sent < count {
        let n = PUBLISH_BATCH.min(count - sent);
        service
            .publish(PublishRequest {
                topic: topic.to_owned(),
                messages: (0..n).map(|_| message.clone()).collect(),
            })
            .await?;
        sent += n;
    }
    Ok(())
}
