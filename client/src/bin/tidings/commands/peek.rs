//! `tidings peek TOPIC`: print a topic's stored messages by offset.
//!
//! It reads the topic itself (the broker's `ReadTopic`), page by page, up
//! to the topic's end as it was at the first read: nothing is leased,
//! acknowledged or counted, so subscriptions and their consumers are not
//! disturbed. It never waits for new messages.

use tidings_client::Client;

use super::Context;
use crate::failure::Failure;
use crate::output::{self, Format, Shown};

/// The most messages asked for in one read (the broker's own cap).
const PAGE: u64 = 1000;

/// Arguments of `tidings peek`.
#[derive(Debug, clap::Args)]
pub(crate) struct PeekArgs {
    /// The topic to look at.
    topic: String,

    /// The offset of the first message to print. Default: the first
    /// message the topic still holds.
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,

    /// Print at most this many messages. Default: every one up to the
    /// topic's end when the command started.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// How to print each message (as `tidings sub` does, without
    /// delivery_attempt). Default: raw, or jsonl with --json.
    #[arg(long, short, value_enum)]
    format: Option<Format>,
}

/// Prints the messages asked for.
///
/// # Errors
/// When the topic does not exist (NOT_FOUND), `--from` lies past its end
/// (OUT_OF_RANGE), the broker cannot be reached, or standard output cannot
/// be written.
pub(crate) async fn run(ctx: &Context, args: PeekArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let format = Format::chosen(args.format, ctx.json);
    let mut offset = args.from.unwrap_or(0);
    let mut left = args.count.unwrap_or(u64::MAX);
    let mut end = None;
    while left > 0 {
        let read = read(&client, &args.topic, offset, left).await?;
        let end = *end.get_or_insert(read.end_offset);
        if let Some(from) = args.from.filter(|&from| from > end) {
            return Err(past_the_end(&args.topic, from, end).into());
        }
        for message in read.messages.iter().take_while(|m| m.offset < end) {
            if left == 0 {
                break;
            }
            output::message(Shown::from(message), format)?;
            left -= 1;
        }
        // Done at the end; and a read that moved nowhere would loop.
        if read.next_offset >= end || read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
    }
    Ok(())
}

/// One page: at most `left` messages (and the broker's cap) from `offset`.
async fn read(
    client: &Client,
    topic: &str,
    offset: u64,
    left: u64,
) -> tidings_client::Result<tidings_client::TopicRead> {
    let max = u32::try_from(left.min(PAGE)).unwrap_or(u32::MAX);
    client.read_topic(topic, offset, max).await
}

/// `--from` beyond the topic's end: nothing there to look at yet.
fn past_the_end(topic: &str, from: u64, end: u64) -> Failure {
    Failure::new(
        tonic::Code::OutOfRange,
        format!(
            "offset {from} is past the end of topic \"{topic}\" (its next offset is {end}); \
             see its offsets with `tidings topics describe {topic}`"
        ),
    )
}
