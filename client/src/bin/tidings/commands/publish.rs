//! `tidings pub`: publish the arguments, or the lines of standard input,
//! to a topic and print their offsets.
//!
//! Messages go through the library's batching `Publisher`; offsets are
//! printed in input order as soon as each message is stored, so that a
//! long-running pipe (`tail -f log | tidings pub logs`) shows progress.
//! The number of messages awaiting their offset is bounded.

use std::io::BufRead as _;

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream::{self, BoxStream, FuturesOrdered};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::json;
use tidings_client::{Message, Publisher};
use tokio::sync::mpsc;

use super::Context;
use crate::{output, values};

/// The most messages queued for publishing whose offset is not known yet.
const MAX_PENDING: usize = 10_000;

/// Lines of standard input buffered between the reading thread and the
/// publisher.
const STDIN_BUFFER: usize = 1024;

/// Arguments of `tidings pub`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The topic to publish to; it must exist (unless the broker creates
    /// topics on first use).
    topic: String,

    /// The messages to publish, one per argument. Without any, each line
    /// of standard input is one message.
    #[arg(value_name = "MESSAGE")]
    messages: Vec<String>,

    /// A key for every message, such as an order id; delivered with it.
    #[arg(long, short)]
    key: Option<String>,

    /// An attribute for every message, as NAME=VALUE; repeat for several.
    #[arg(
        long = "attr",
        short,
        value_name = "NAME=VALUE",
        value_parser = values::parse_attribute
    )]
    attributes: Vec<(String, String)>,
}

impl PublishArgs {
    /// A message with `payload` and the key and attributes of the flags.
    fn message(&self, payload: Bytes) -> Message {
        let mut message = Message::new(payload);
        if let Some(key) = &self.key {
            message = message.with_key(key.clone());
        }
        for (name, value) in &self.attributes {
            message = message.with_attribute(name.clone(), value.clone());
        }
        message
    }
}

/// Publishes the messages and prints their offsets.
///
/// # Errors
/// When the broker cannot be reached, refuses a batch (for example
/// NOT_FOUND for an unknown topic), or standard input cannot be read.
pub(crate) async fn run(ctx: &Context, mut args: PublishArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let publisher = client.publisher(args.topic.clone());
    let payloads = payloads(std::mem::take(&mut args.messages))?;
    let offsets = publish_all(ctx, &args, &publisher, payloads).await;
    // Everything queued has been awaited above; closing only makes sure
    // nothing is left behind when publishing stopped early.
    let closed = publisher.close().await;
    let offsets = offsets?;
    closed?;
    if ctx.json {
        output::json(&json!({ "topic": args.topic, "offsets": offsets }))?;
    }
    Ok(())
}

/// The payloads to publish: the arguments, or else the lines of standard
/// input.
fn payloads(messages: Vec<String>) -> anyhow::Result<BoxStream<'static, anyhow::Result<Bytes>>> {
    if !messages.is_empty() {
        return Ok(stream::iter(messages.into_iter().map(|m| Ok(Bytes::from(m)))).boxed());
    }
    let lines_rx = stdin_lines()?;
    let lines = stream::unfold(lines_rx, |mut lines_rx| async move {
        let line = lines_rx.recv().await?;
        Some((line, lines_rx))
    });
    Ok(lines
        .map_ok(Bytes::from)
        .map_err(|err| anyhow::Error::new(err).context("cannot read standard input"))
        .boxed())
}

/// Reads standard input on a thread of its own (reading it blocks), one
/// line at a time without its newline, into a bounded channel.
fn stdin_lines() -> anyhow::Result<mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    let (lines_tx, lines_rx) = mpsc::channel(STDIN_BUFFER);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().split(b'\n') {
                let failed = line.is_err();
                if lines_tx.blocking_send(line).is_err() || failed {
                    return;
                }
            }
        })
        .context("cannot start a thread to read standard input")?;
    Ok(lines_rx)
}

/// Queues every payload on `publisher` and returns the offsets in input
/// order, printing each as it arrives (unless printing JSON at the end).
/// Stops at the first failure.
async fn publish_all(
    ctx: &Context,
    args: &PublishArgs,
    publisher: &Publisher,
    mut payloads: BoxStream<'static, anyhow::Result<Bytes>>,
) -> anyhow::Result<Vec<u64>> {
    let mut pending = FuturesOrdered::new();
    let mut offsets = Vec::new();
    let mut input_done = false;
    loop {
        tokio::select! {
            // Offsets first: they free room for more input.
            biased;
            Some(stored) = pending.next(), if !pending.is_empty() => {
                let offset: u64 = stored?;
                if !ctx.json {
                    output::line(&offset.to_string())?;
                }
                offsets.push(offset);
            }
            payload = payloads.next(), if !input_done && pending.len() < MAX_PENDING => {
                match payload {
                    Some(payload) => pending.push_back(publisher.publish(args.message(payload?))),
                    None => input_done = true,
                }
            }
            else => break,
        }
    }
    Ok(offsets)
}
