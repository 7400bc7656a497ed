//! `tidings sub`: receive messages of a subscription, print each, then
//! acknowledge it.
//!
//! A message is acknowledged only after it was written to standard
//! output. With `--no-ack` the messages are held unsettled until the
//! command ends; the end of the stream gives them back, so a later
//! subscriber gets them again. Pending acknowledgements are flushed before
//! the command exits.

use clap::ValueEnum;
use futures::StreamExt as _;
use tidings_client::{Delivery, Subscriber};

use super::Context;
use crate::{output, values};

/// How `tidings sub` prints a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// The payload's bytes as they are, then a newline.
    Raw,
    /// Each message as a pretty-printed JSON object.
    Json,
    /// Each message as a JSON object on one line: offset, key, attributes,
    /// publish_time (RFC 3339), delivery_attempt, and payload (UTF-8) or
    /// payload_base64.
    Jsonl,
}

/// Arguments of `tidings sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeArgs {
    /// The subscription to read.
    subscription: String,

    /// The subscription's topic. When the subscription does not exist it
    /// is created on this topic; without --topic it must exist.
    #[arg(long, short)]
    topic: Option<String>,

    /// Exit (0) after this many messages; without it, run until Ctrl-C.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Do not acknowledge: print the messages, then give them back when
    /// the command ends, so they stay in the backlog.
    #[arg(long)]
    no_ack: bool,

    /// How to print each message. Default: raw, or jsonl with --json.
    #[arg(long, short, value_enum)]
    format: Option<Format>,

    #[command(flatten)]
    new: values::NewSubscriptionArgs,

    /// Flow control: the most unacknowledged messages held at once
    /// (never more than --count).
    #[arg(
        long,
        default_value_t = tidings_client::DEFAULT_MAX_OUTSTANDING_MESSAGES,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    max_outstanding: u32,
}

impl SubscribeArgs {
    /// The flow-control window: no more messages than will be printed, so
    /// that `--count` does not lease (and redeliver) messages it never
    /// prints.
    fn max_outstanding(&self) -> u32 {
        let count = self
            .count
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
        self.max_outstanding.min(count)
    }
}

/// Receives, prints and settles messages until `--count`, Ctrl-C, or a
/// failure.
///
/// # Errors
/// When the subscription cannot be opened (for example NOT_FOUND), the
/// stream fails, it ends before `--count` messages, or acknowledgements
/// cannot be flushed.
pub(crate) async fn run(ctx: &Context, args: SubscribeArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let mut builder = client
        .subscriber(args.subscription.clone())
        .start(args.new.start)
        .max_outstanding_messages(args.max_outstanding());
    if let Some(topic) = &args.topic {
        builder = builder.topic(topic.clone());
    }
    if let Some(deadline) = args.new.ack_deadline {
        builder = builder.ack_deadline(deadline);
    }
    if let Some(count) = args.count {
        // The broker sends no more than will be printed.
        builder = builder.max_messages(u32::try_from(count).unwrap_or(u32::MAX));
    }
    let mut subscriber = builder.subscribe().await?;
    let format = args
        .format
        .unwrap_or(if ctx.json { Format::Jsonl } else { Format::Raw });
    let mut held = Vec::new();
    let received = receive(&mut subscriber, &args, format, &mut held).await;
    let closed = if args.count.is_some() {
        // After --count messages the stream is over, but what it delivered
        // stays leased to us: held (--no-ack) messages go back with a nack.
        drop(held);
        subscriber.close().await
    } else {
        // Ending the open stream hands held messages back at once; nacking
        // them first would have them delivered again to this very stream.
        let closed = subscriber.close().await;
        drop(held);
        closed
    };
    received?;
    closed?;
    Ok(())
}

/// The receive loop: prints and settles each delivery; `--no-ack`
/// deliveries go to `held`.
async fn receive(
    subscriber: &mut Subscriber,
    args: &SubscribeArgs,
    format: Format,
    held: &mut Vec<Delivery>,
) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed: u64 = 0;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
        let item = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = subscriber.next() => item,
        };
        let delivery = match item {
            Some(delivery) => delivery?,
            None => return ended(args, printed),
        };
        if let Err(err) = print(&delivery, format) {
            // Not shown to anyone: give it back.
            delivery.nack();
            return Err(err.into());
        }
        printed += 1;
        if args.no_ack {
            held.push(delivery);
        } else {
            delivery.ack();
        }
    }
}

/// The stream ended without an error: fine when no count was asked for.
fn ended(args: &SubscribeArgs, printed: u64) -> anyhow::Result<()> {
    match args.count {
        Some(count) => anyhow::bail!(
            "the broker ended the stream of subscription \"{}\" after {printed} of {count} messages",
            args.subscription
        ),
        None => Ok(()),
    }
}

/// Writes one delivery to standard output in `format`.
fn print(delivery: &Delivery, format: Format) -> std::io::Result<()> {
    match format {
        Format::Raw => {
            let mut bytes = Vec::with_capacity(delivery.payload().len() + 1);
            bytes.extend_from_slice(delivery.payload());
            bytes.push(b'\n');
            output::write(&bytes)
        }
        Format::Json => output::json(&output::delivery_json(delivery)),
        Format::Jsonl => output::line(&output::delivery_json(delivery).to_string()),
    }
}
