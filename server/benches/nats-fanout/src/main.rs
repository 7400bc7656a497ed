//! The NATS JetStream side of `tidings bench fanout`: one stream, K durable
//! pull consumers, each of which receives every message and acknowledges
//! it explicitly.
//!
//!   nats-fanout url=HOST:PORT consumers=K n=N size=S [window=W] [batch=B]
//!
//! The consumers start before anything is published; then one publisher
//! sends N messages of S bytes, W unacknowledged at a time, and the clock
//! stops when every consumer has received and acknowledged all N (and the
//! acknowledgements have left for the server). Prints a `RESULT` line in
//! the format of `tidings bench`, counting deliveries (N × K). Bounded:
//! a consumer that waits 60 s for a message fails the run.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

/// The stream the run creates (and deletes at its end).
const STREAM: &str = "FANOUT";
/// The subject every message is published on.
const SUBJECT: &str = "fanout.x";
/// The longest a consumer waits for its next message.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// What the command line asks for.
struct Args {
    url: String,
    consumers: usize,
    count: u64,
    size: usize,
    window: usize,
    batch: usize,
}

impl Args {
    /// Reads `key=value` arguments; every key has a default but `url`.
    fn parse() -> anyhow::Result<Self> {
        let mut given: HashMap<String, String> = HashMap::new();
        for arg in std::env::args().skip(1) {
            let (key, value) = arg
                .split_once('=')
                .with_context(|| format!("argument {arg:?} is not key=value"))?;
            given.insert(key.to_owned(), value.to_owned());
        }
        let number = |key: &str, default: u64| -> anyhow::Result<u64> {
            given.get(key).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{key}={v} is not a number"))
            })
        };
        Ok(Self {
            url: given.get("url").context("url=HOST:PORT is needed")?.clone(),
            consumers: number("consumers", 100)? as usize,
            count: number("n", 10_000)?,
            size: number("size", 256)? as usize,
            window: number("window", 256)? as usize,
            batch: number("batch", 500)? as usize,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let publishing = async_nats::connect(&args.url).await?;
    let js = jetstream::new(publishing.clone());
    // A stream left by an interrupted run would hold its messages.
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{}.>", STREAM.to_lowercase())],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;

    // The consumers share one connection, as `tidings bench fanout` puts
    // up to 100 streams on one.
    let consuming = async_nats::connect(&args.url).await?;
    let stream = jetstream::new(consuming.clone()).get_stream(STREAM).await?;
    let mut consumers = FuturesUnordered::new();
    for k in 0..args.consumers {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("fanout{k}")),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(args.batch)
            .messages()
            .await?;
        let count = args.count;
        consumers.push(tokio::spawn(async move {
            for got in 0..count {
                let message = tokio::time::timeout(IDLE_LIMIT, messages.next())
                    .await
                    .with_context(|| format!("consumer {k} waited {IDLE_LIMIT:?} after {got}"))?
                    .with_context(|| format!("consumer {k} ended after {got} of {count}"))??;
                message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
            anyhow::Ok(())
        }));
    }
    eprintln!("{} consumers ready", args.consumers);

    let started = Instant::now();
    publish(&js, &args).await?;
    while let Some(consumer) = consumers.next().await {
        consumer??;
    }
    consuming.flush().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let deliveries = args.count * args.consumers as u64;
    println!(
        "RESULT nats-js-fanout consumers={}: msgs={deliveries} size={}B elapsed={elapsed:.3}s \
         rate={:.0} msg/s  {:.1} MB/s",
        args.consumers,
        args.size,
        deliveries as f64 / elapsed,
        deliveries as f64 * args.size as f64 / elapsed / 1e6,
    );
    js.delete_stream(STREAM).await?;
    Ok(())
}

/// Publishes `args.count` messages, `args.window` awaiting their
/// acknowledgement at a time.
async fn publish(js: &jetstream::Context, args: &Args) -> anyhow::Result<()> {
    let payload: bytes::Bytes = (0..args.size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..args.count {
        in_flight.push(js.publish(SUBJECT, payload.clone()).await?.into_future());
        while in_flight.len() >= args.window {
            if let Some(acked) = in_flight.next().await {
                acked?;
            }
        }
    }
    while let Some(acked) = in_flight.next().await {
        acked?;
    }
    Ok(())
}
