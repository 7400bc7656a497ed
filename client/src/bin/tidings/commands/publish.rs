//! `tidings pub`: publish the arguments, the lines of standard input, or
//! one whole file to a topic, and print the offsets.
//!
//! Messages are stored in input order: the input is cut into chunks (see
//! `input.rs`), each sent as one `Publish` request — which the broker
//! stores atomically and contiguously — and the next is sent only once the
//! previous one is stored. One request in flight is what keeps the order
//! (with several, a later batch can be stored before an earlier one); the
//! chunks grow while a request is in flight, which keeps throughput up.
//! The library's `Publisher` is not used: it keeps several batches in
//! flight, and after a failed batch it still sends the ones queued behind
//! it, where this command must stop at the first failure and say exactly
//! what was stored.
//!
//! Offsets are printed as each chunk is stored, so that a long-running
//! pipe (`tail -f log | tidings pub logs`) shows progress.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tidings_client::v1::PublishMessage;
use tidings_client::{Client, Error as ClientError, Message, Published};

use super::Context;
use super::input::{Chunk, ChunkLimits, Input};
use crate::failure::Failure;
use crate::{output, values};

/// The most messages in one request.
const MAX_CHUNK_MESSAGES: usize = 5000;

/// The most bytes in one request, well under the broker's smallest
/// request limit (4 MiB); a single larger message is sent alone.
const MAX_CHUNK_BYTES: usize = 1 << 20;

/// How long, after a failure, the rest of standard input may take to end
/// so that the message can say how many messages it held.
const COUNT_REST_GRACE: Duration = Duration::from_secs(1);

/// Arguments of `tidings pub`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The topic to publish to; it must exist (unless the broker creates
    /// topics on first use).
    topic: String,

    /// The messages to publish, one per argument. Without any, each line
    /// of standard input is one message.
    #[arg(value_name = "MESSAGE", conflicts_with = "file")]
    messages: Vec<String>,

    /// Publish the whole content of this file as one message, whatever it
    /// holds (several lines, binary data); `-` reads standard input to its
    /// end.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,

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

    /// An idempotency key (at most 256 bytes): while the topic remembers
    /// it (its dedup window, 2m unless set), publishing a message with the
    /// same id again stores nothing and prints the original's offset,
    /// marked "duplicate". One MESSAGE or --file gets ID itself; several
    /// MESSAGEs or the lines of standard input get ID-1, ID-2, … in input
    /// order, so running the same command on the same input again stores
    /// nothing twice.
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Deliver the messages on no subscription before this long after
    /// they are stored, such as 30s or 10m (at most 30d).
    #[arg(long, value_parser = values::parse_delay, value_name = "DURATION")]
    delay: Option<Duration>,

    /// Whether `--id` is numbered per message: the input may hold more
    /// than one. Set by [`PublishArgs::input`].
    #[arg(skip)]
    numbers_ids: bool,
}

impl PublishArgs {
    /// The `number`-th message (from 1, in input order) with `payload` and
    /// the key, attributes and id of the flags.
    fn message(&self, number: u64, payload: bytes::Bytes) -> PublishMessage {
        let mut message = Message::new(payload);
        if let Some(key) = &self.key {
            message = message.with_key(key.clone());
        }
        for (name, value) in &self.attributes {
            message = message.with_attribute(name.clone(), value.clone());
        }
        if let Some(delay) = self.delay.filter(|d| !d.is_zero()) {
            message = message.with_delay(delay);
        }
        if let Some(id) = &self.id {
            message = message.with_id(if self.numbers_ids {
                format!("{id}-{number}")
            } else {
                id.clone()
            });
        }
        message.into()
    }

    /// How the input is cut into requests: a message's key, attributes
    /// and id count towards the request's size too.
    fn limits(&self) -> ChunkLimits {
        let key = self.key.as_ref().map_or(0, String::len);
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.len() + 16)
            .sum();
        ChunkLimits {
            max_messages: MAX_CHUNK_MESSAGES,
            max_bytes: MAX_CHUNK_BYTES,
            // An id, numbered per message, takes up to 21 digits and a dash.
            overhead: key + attributes + self.id.as_ref().map_or(0, |id| id.len() + 22) + 16,
        }
    }

    /// Where the messages come from.
    fn input(&mut self) -> anyhow::Result<Input> {
        let limits = self.limits();
        if let Some(path) = &self.file {
            return Input::file(path, limits);
        }
        self.numbers_ids = self.messages.len() != 1;
        if self.messages.is_empty() {
            return Input::lines(limits);
        }
        Ok(Input::arguments(std::mem::take(&mut self.messages), limits))
    }
}

/// Publishes the messages in input order and prints their offsets.
///
/// # Errors
/// When the broker cannot be reached, refuses a request (for example
/// NOT_FOUND for an unknown topic), goes away, or the input cannot be
/// read; once anything was stored, the error says how much.
pub(crate) async fn run(ctx: &Context, mut args: PublishArgs) -> anyhow::Result<()> {
    let mut input = args.input()?;
    let client = ctx.connect().await?;
    let mut published = Vec::new();
    let outcome = publish_all(ctx, &client, &args, &mut input, &mut published).await;
    let offsets = published;
    if ctx.json {
        // What was stored is printed even when publishing stopped early.
        let (numbers, duplicates): (Vec<u64>, Vec<bool>) =
            offsets.iter().map(|p| (p.offset, p.duplicate)).unzip();
        output::json(&json!({
            "topic": args.topic,
            "offsets": numbers,
            "duplicates": duplicates,
        }))?;
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(Stop::Output(err)) => Err(err.into()),
        Err(Stop::Input(err)) => {
            let stored = offsets.len() as u64;
            let err = anyhow::Error::new(err).context("cannot read standard input");
            if stored == 0 {
                return Err(err);
            }
            Err(err.context(format!("stored {stored} messages")))
        }
        Err(Stop::Refused { sent, error }) => {
            let rest = input.count_rest(COUNT_REST_GRACE).await;
            Err(stopped(offsets.len() as u64, sent, rest, error))
        }
    }
}

/// Why publishing stopped early.
enum Stop {
    /// Standard output could not be written.
    Output(std::io::Error),
    /// The input could not be read.
    Input(std::io::Error),
    /// A request failed; `sent` is what it held.
    Refused { sent: Sent, error: ClientError },
}

/// The messages of the request that failed: their number in the input
/// (1-based) and how many.
#[derive(Debug, Clone, Copy)]
struct Sent {
    first: u64,
    count: u64,
}

/// Sends chunk after chunk, one request at a time, printing the offsets
/// of each (unless printing JSON at the end; a duplicate's is followed by
/// "duplicate") and collecting them.
async fn publish_all(
    ctx: &Context,
    client: &Client,
    args: &PublishArgs,
    input: &mut Input,
    offsets: &mut Vec<Published>,
) -> Result<(), Stop> {
    while let Some(chunk) = input.next_chunk().await {
        let chunk = chunk.map_err(Stop::Input)?;
        let sent = Sent {
            first: offsets.len() as u64 + 1,
            count: chunk.payloads.len() as u64,
        };
        let stored = publish_chunk(client, args, sent.first, chunk)
            .await
            .map_err(|error| Stop::Refused { sent, error })?;
        if !ctx.json {
            let text: String = stored
                .iter()
                .map(|p| match p.duplicate {
                    false => format!("{}\n", p.offset),
                    true => format!("{} duplicate\n", p.offset),
                })
                .collect();
            output::write(text.as_bytes()).map_err(Stop::Output)?;
        }
        offsets.extend(stored);
    }
    Ok(())
}

/// One `Publish` request of a chunk whose first message is the `first`-th
/// of the input.
async fn publish_chunk(
    client: &Client,
    args: &PublishArgs,
    first: u64,
    chunk: Chunk,
) -> Result<Vec<Published>, ClientError> {
    let messages = chunk
        .payloads
        .into_iter()
        .zip(first..)
        .map(|(payload, number)| args.message(number, payload))
        .collect();
    client.publish_batch(&args.topic, messages).await
}

/// The failure of a `pub` that stopped at a failed request, saying what was
/// stored: `stored` messages before it, the request `sent`, and `rest`
/// messages after it when the input's end is known.
fn stopped(stored: u64, sent: Sent, rest: Option<u64>, error: ClientError) -> anyhow::Error {
    let error = renumber(error, sent.first);
    let in_doubt = may_have_been_stored(&error);
    if stored == 0 && !in_doubt {
        // Nothing was stored: the reason alone says it all.
        return error.into();
    }
    let read = stored + sent.count;
    let total = match rest {
        Some(rest) => format!("{}", read + rest),
        None => format!("at least {read}"),
    };
    let mut message = format!("stored {stored} of {total} messages");
    if in_doubt {
        let last = sent.first + sent.count - 1;
        message.push_str(&format!(
            " (messages {} to {last} were sent but not confirmed: they may have been stored too)",
            sent.first
        ));
    }
    message.push_str(if went_away(&error) {
        ", then the broker went away"
    } else {
        ", then stopped"
    });
    Failure::from_client(message, error).into()
}

/// The broker numbers a refused message by its place in the request
/// (`message 3 is … bytes`); the input's numbering (`message 1203`, line
/// 1203 of standard input) is what the user can find.
fn renumber(error: ClientError, first: u64) -> ClientError {
    let Some(status) = error
        .status()
        .filter(|s| s.code() == tonic::Code::InvalidArgument)
    else {
        return error;
    };
    let Some(rest) = status.message().strip_prefix("message ") else {
        return error;
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Ok(index) = rest[..digits].parse::<u64>() else {
        return error;
    };
    let message = format!("message {}{}", first + index, &rest[digits..]);
    ClientError::Status(tonic::Status::new(status.code(), message))
}

/// Whether the broker went away (rather than answering with a refusal).
fn went_away(error: &ClientError) -> bool {
    error.code() == tonic::Code::Unavailable
        || error
            .status()
            .is_some_and(|s| std::error::Error::source(s).is_some())
}

/// Whether a failed request may still have been stored: its answer was
/// lost on the way (a transport failure once it was sent). A refusal the
/// broker sent, or a connection that was never made, stored nothing.
fn may_have_been_stored(error: &ClientError) -> bool {
    let Some(status) = error.status() else {
        return false;
    };
    let mut cause = std::error::Error::source(status);
    if cause.is_none() {
        // The broker's own answer; or, with DEADLINE_EXCEEDED, a request
        // given up on while it may have been in progress.
        return status.code() == tonic::Code::DeadlineExceeded;
    }
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return false;
        }
        cause = err.source();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> ClientError {
        ClientError::Status(tonic::Status::new(code, message))
    }

    #[test]
    fn refused_messages_are_numbered_as_in_the_input() {
        let err = renumber(
            status(
                tonic::Code::InvalidArgument,
                "message 3 is 9 bytes; the limit is 5",
            ),
            1201,
        );
        assert_eq!(
            err.status().map(tonic::Status::message),
            Some("message 1204 is 9 bytes; the limit is 5")
        );
        let other = renumber(
            status(tonic::Code::NotFound, "topic \"t\" does not exist"),
            9,
        );
        assert_eq!(
            other.status().map(tonic::Status::message),
            Some("topic \"t\" does not exist")
        );
    }

    #[test]
    fn a_refusal_before_anything_was_stored_is_the_reason_alone() {
        let sent = Sent { first: 1, count: 2 };
        let failure = stopped(0, sent, Some(0), status(tonic::Code::NotFound, "gone"));
        assert!(failure.downcast_ref::<ClientError>().is_some(), "{failure}");
    }

    #[test]
    fn a_stop_after_some_were_stored_counts_them() {
        let sent = Sent {
            first: 1201,
            count: 300,
        };
        let refused = stopped(
            1200,
            sent,
            Some(500),
            status(tonic::Code::InvalidArgument, "bad"),
        );
        assert_eq!(
            refused.to_string(),
            "stored 1200 of 2000 messages, then stopped"
        );
        let gone = stopped(
            1200,
            sent,
            None,
            status(tonic::Code::Unavailable, "shutting down"),
        );
        assert_eq!(
            gone.to_string(),
            "stored 1200 of at least 1500 messages, then the broker went away"
        );
    }

    #[test]
    fn a_lost_answer_may_have_been_stored_a_refused_connection_not() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost = ClientError::Status(tonic::Status::from_error(Box::new(reset)));
        assert!(may_have_been_stored(&lost));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let never = ClientError::Status(tonic::Status::from_error(Box::new(refused)));
        assert!(!may_have_been_stored(&never));
        assert!(!may_have_been_stored(&status(tonic::Code::NotFound, "no")));
        let sent = Sent { first: 5, count: 2 };
        assert_eq!(
            stopped(4, sent, Some(0), lost).to_string(),
            "stored 4 of 6 messages (messages 5 to 6 were sent but not confirmed: they may \
             have been stored too), then the broker went away"
        );
    }
}
