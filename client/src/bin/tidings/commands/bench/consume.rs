//! `tidings bench consume`: draining a backlog with per-message acks.
//!
//! A fresh subscription starts at the topic's end; N messages are published
//! (not timed); then S competing streams of the client's `Subscriber`
//! receive them and acknowledge each one (the client batches the acks).
//! The clock stops once every message is received and every ack is stored.
//!
//! Three variants shape the backlog and the subscription (see `backlog`):
//! `--ordered-keys` (ordering on, keys round-robin; each key's order is
//! checked), `--poison-keys` (some keys always nacked, with a retry policy;
//! the clock stops once every other message is acknowledged) and
//! `--filter` (the clock stops once the broker has settled the whole
//! backlog, delivered or filtered out).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings_client::{
    Client, RetryPolicy, StartPosition, StorageClass, Subscriber, SubscriptionConfig,
};
use tokio::sync::watch;

use super::backlog::{KeyOrder, Shape};
use super::report::{self, Progress, ServerUsage};
use super::{CommonArgs, Context, ensure_topic, unique_name};
use crate::values;

/// How often a filtered run asks the broker whether the backlog is settled.
const SETTLED_POLL: Duration = Duration::from_millis(2);

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
    /// How long each stream's acks gather before they are sent together
    /// (the client's default: 5ms, or 1ms with ordering, where it is part
    /// of every key's turn: a key's next message goes once the broker has
    /// the ack).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    ack_flush_interval: Option<Duration>,
    /// Give the messages N distinct keys, round-robin, and create the
    /// subscription with message ordering on. The run fails if a key's
    /// messages arrive out of order.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    ordered_keys: Option<u64>,
    /// Nack every message of N of the keys, always; the subscription gets
    /// a retry policy (--min-backoff, --max-backoff). The rate counts the
    /// other keys' messages, and the run ends once they are all acked.
    #[arg(
        long,
        value_name = "N",
        requires = "ordered_keys",
        conflicts_with = "filter"
    )]
    poison_keys: Option<u64>,
    /// With --poison-keys: the retry policy's first wait.
    #[arg(long, value_parser = values::parse_backoff, value_name = "DURATION", default_value = "100ms")]
    min_backoff: Duration,
    /// With --poison-keys: the retry policy's longest wait.
    #[arg(long, value_parser = values::parse_backoff, value_name = "DURATION", default_value = "1s")]
    max_backoff: Duration,
    /// Create the subscription with this filter. Messages carry the
    /// attribute `pick`, "yes" on --match-percent of them and "no" on the
    /// rest, so `attributes.pick = "yes"` selects that share. Both the
    /// delivered and the scanned (whole backlog) rates are reported.
    #[arg(long, value_name = "EXPRESSION")]
    filter: Option<String>,
    /// With --filter: the share of messages with `pick = "yes"`, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    match_percent: u64,
    #[command(flatten)]
    common: CommonArgs,
}

impl ConsumeArgs {
    /// The backlog these flags ask for.
    fn shape(&self) -> Shape {
        Shape {
            count: self.count,
            keys: self.ordered_keys,
            poison: self.poison_keys.unwrap_or(0),
            match_percent: self.filter.as_ref().map(|_| self.match_percent),
        }
    }

    /// The subscription these flags ask for, starting at `head`.
    fn subscription(&self, name: &str, head: u64) -> SubscriptionConfig {
        let mut config = SubscriptionConfig::new(name, &self.common.topic)
            .start(StartPosition::Offset(head))
            .enable_message_ordering(self.ordered_keys.is_some());
        if self.poison_keys.is_some() {
            config = config.retry_policy(RetryPolicy::new(self.min_backoff, self.max_backoff));
        }
        if let Some(filter) = &self.filter {
            config = config.filter(filter.clone());
        }
        config
    }

    /// The `RESULT` line's name: the baseline's, plus the variant.
    fn name(&self) -> String {
        let mut name = format!("tidings-sub ack=each streams={}", self.streams);
        if let Some(keys) = self.ordered_keys {
            name += &format!(" ordered-keys={keys}");
        }
        if let Some(poison) = self.poison_keys {
            name += &format!(" poison-keys={poison} healthy");
        }
        if self.filter.is_some() {
            name += &format!(" filter={}%", self.match_percent);
        }
        name
    }
}

/// What every stream shares: which messages to refuse, how many to count,
/// and the signal that ends the run.
struct Drain {
    shape: Shape,
    /// Acknowledged messages so far (poison messages are not counted).
    received: Arc<AtomicU64>,
    /// The count at which the streams stop; `u64::MAX` when the end comes
    /// from the broker (a filtered run).
    target: u64,
    /// Each key's order, when keys are on.
    order: Option<KeyOrder>,
    all_in_tx: watch::Sender<bool>,
}

/// Runs the workload and prints its figures.
///
/// # Errors
/// When the broker cannot be reached, a call fails, a stream ends early,
/// or a key's messages arrive out of order.
pub(crate) async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    let shape = args.shape();
    if let (Some(keys), Some(poison)) = (args.ordered_keys, args.poison_keys) {
        anyhow::ensure!(poison < keys, "--poison-keys must leave a healthy key");
    }
    let client = ctx.connect().await?;
    let topic = &args.common.topic;
    ensure_topic(&client, topic, StorageClass::Disk).await?;
    let subscription = unique_name("bench-consume");
    let head = client.get_topic(topic).await?.next_offset;
    client
        .create_subscription(args.subscription(&subscription, head))
        .await?;
    shape.fill(&client, topic, args.size).await?;

    let healthy = shape.count - shape.poison_messages();
    let expected = healthy.min(shape.picked_messages());
    let received = Arc::new(AtomicU64::new(0));
    let (all_in_tx, all_in_rx) = watch::channel(false);
    let drain = Arc::new(Drain {
        shape,
        received: Arc::clone(&received),
        target: if args.filter.is_some() {
            u64::MAX
        } else {
            healthy
        },
        order: args.ordered_keys.map(KeyOrder::new),
        all_in_tx,
    });
    let usage = ServerUsage::read(args.common.server_pid);
    let progress = Progress::start("consume", Arc::clone(&received), expected);
    let started = Instant::now();
    let mut streams = FuturesUnordered::new();
    for _ in 0..args.streams {
        let mut subscriber = ctx
            .connect()
            .await?
            .subscriber(subscription.clone())
            .max_outstanding_messages(args.max_outstanding);
        if let Some(interval) = args.ack_flush_interval {
            subscriber = subscriber.ack_flush_interval(interval);
        }
        let subscriber = subscriber.subscribe().await?;
        let (drain, all_in_rx) = (Arc::clone(&drain), all_in_rx.clone());
        streams.push(tokio::spawn(consume(subscriber, drain, all_in_rx)));
    }
    let mut elapsed = None;
    if args.filter.is_some() {
        // The streams cannot tell when the broker has filtered out the
        // last message; the broker's backlog can.
        elapsed = tokio::select! {
            settled = settled(&client, &subscription, started) => Some(settled?),
            Some(stream) = streams.next() => {
                stream??;
                anyhow::bail!("a stream ended before the backlog was settled");
            }
        };
        drain.all_in_tx.send_replace(true);
    }
    while let Some(stream) = streams.next().await {
        stream??;
    }
    let elapsed = elapsed.unwrap_or_else(|| started.elapsed());
    drop(progress);
    let name = args.name();
    let received = received.load(Ordering::Relaxed);
    if args.filter.is_some() {
        report::result(&format!("{name} delivered"), received, args.size, elapsed);
        report::result(&format!("{name} scanned"), shape.count, args.size, elapsed);
    } else {
        report::result(&name, received, args.size, elapsed);
    }
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, healthy);
    }
    let left = client.get_subscription(&subscription).await?;
    client.delete_subscription(&subscription).await?;
    anyhow::ensure!(
        left.backlog == shape.poison_messages(),
        "{} messages were left unacknowledged, {} of them healthy",
        left.backlog,
        left.backlog.saturating_sub(shape.poison_messages()),
    );
    Ok(())
}

/// One stream: acknowledges every message (nacks a poison key's), until
/// the run is over.
async fn consume(
    mut subscriber: Subscriber,
    drain: Arc<Drain>,
    mut all_in_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let delivery = tokio::select! {
            delivery = subscriber.next() => delivery,
            _ = all_in_rx.wait_for(|all_in| *all_in) => break,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery?;
        if drain.shape.is_poison(delivery.key()) {
            delivery.nack();
            continue;
        }
        if let Some(order) = &drain.order {
            order.see(delivery.key(), delivery.offset())?;
        }
        delivery.ack();
        if drain.received.fetch_add(1, Ordering::Relaxed) + 1 >= drain.target {
            drain.all_in_tx.send_replace(true);
        }
    }
    Ok(subscriber.close().await?)
}

/// Waits until `subscription` has nothing left to acknowledge; returns the
/// time since `started`.
async fn settled(
    client: &Client,
    subscription: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if client.get_subscription(subscription).await?.backlog == 0 {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(SETTLED_POLL).await;
    }
}
