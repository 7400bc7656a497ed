//! `tidings sub`: receive messages of a subscription, print each, then
//! acknowledge it; stop after `--count`, once caught up (`--exit-at-end`),
//! after `--timeout` without a message, or at Ctrl-C.
//!
//! A message is acknowledged only after it was written to standard
//! output. With `--no-ack` the messages are held unsettled until the
//! command ends; the end of the stream gives them back, so a later
//! subscriber gets them again. Pending settlements are flushed before the
//! command exits, and acknowledgements the broker refused (or that were
//! given up) fail the command, however it stopped (Ctrl-C included), with
//! how many and the broker's reason.
//!
//! A command with a goal (`--count`, `--exit-at-end`) that stops short of
//! it fails: exit status 130 for Ctrl-C, 1 otherwise.

use std::time::Duration;

use futures::StreamExt as _;
use tidings_client::{Client, Delivery, Subscriber, SubscriptionConfig};
use tokio::time::{Instant, sleep_until};

use super::Context;
use crate::failure::Failure;
use crate::output::{self, Format, Shown};
use crate::values;

/// Arguments of `tidings sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeArgs {
    /// The subscription to read.
    subscription: String,

    /// The subscription's topic. When the subscription does not exist it
    /// is created on this topic; without --topic it must exist.
    #[arg(long, short)]
    topic: Option<String>,

    /// Exit (0) after this many messages. Without it (and without
    /// --exit-at-end), run until Ctrl-C or --timeout.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Exit (0) once caught up: once every message published before the
    /// command started has been received. Those are the messages the
    /// subscription had not acknowledged then, less those leased to other
    /// consumers; later messages are not printed. On a subscription with a
    /// filter, it exits once every message before that point is
    /// acknowledged (with --no-ack, only at --timeout).
    #[arg(long, short = 'e')]
    exit_at_end: bool,

    /// Exit when no message has arrived for this long (counted from the
    /// start, then from each message), such as 5s or 500ms. Exit status 0,
    /// or 1 when --count or --exit-at-end was not reached.
    #[arg(long, value_parser = values::parse_timeout, value_name = "DURATION")]
    timeout: Option<Duration>,

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

/// How long `--exit-at-end` waits for a quiet stream before it checks
/// whether a filtered subscription is caught up.
const CATCH_UP_CHECK: Duration = Duration::from_millis(200);

/// What the command is to print before it exits, when it has a goal.
#[derive(Debug, Clone, Copy)]
struct Goal {
    /// How many messages.
    messages: u64,
    /// With --exit-at-end: the topic's end when the command started;
    /// messages from it on are not printed.
    end_offset: Option<u64>,
    /// The subscription has a filter, so `messages` counts messages the
    /// broker may turn away: being caught up is read off its ack floor.
    filtered: bool,
}

impl Goal {
    /// `3 of 10 messages`, or `3 of the 10 messages published before the
    /// command started`.
    fn progress(&self, printed: u64) -> String {
        match self.end_offset {
            Some(_) => format!(
                "{printed} of the {} messages published before the command started",
                self.messages
            ),
            None => format!("{printed} of {} messages", self.messages),
        }
    }
}

/// Receives, prints and settles messages until the goal, Ctrl-C, the
/// timeout, or a failure.
///
/// # Errors
/// When the subscription cannot be opened (for example NOT_FOUND), the
/// stream fails, the command stops short of its goal, or settlements
/// cannot be flushed.
pub(crate) async fn run(ctx: &Context, args: SubscribeArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let goal = goal(&client, &args).await?;
    if goal.is_some_and(|goal| goal.messages == 0) {
        return Ok(());
    }
    let mut subscriber = subscribe(&client, &args, goal).await?;
    let mut receiver = Receiver {
        client: &client,
        args: &args,
        goal,
        format: Format::chosen(args.format, ctx.json),
        printed: 0,
        received: 0,
        held: Vec::new(),
    };
    let stop = receiver.receive(&mut subscriber).await;
    // After as many deliveries as the stream was asked for, it is over.
    let stream_over = goal.is_some_and(|goal| receiver.received >= goal.messages);
    let closed = close(subscriber, std::mem::take(&mut receiver.held), stream_over).await;
    let stop = stop?;
    if let Err(err) = closed {
        return Err(close_failure(err, args.no_ack).into());
    }
    receiver.outcome(stop)
}

/// What the command reports when the settlements it made were not all
/// stored: how many, and the broker's reason.
fn close_failure(err: tidings_client::Error, no_ack: bool) -> Failure {
    let (what, consequence) = if no_ack {
        (
            "the printed messages could not be given back",
            "they come again once their ack deadline passes",
        )
    } else {
        (
            "acknowledgements were not stored",
            "so printed messages may be delivered again",
        )
    };
    match err {
        tidings_client::Error::Unsettled {
            refused,
            given_up,
            cause,
        } => {
            let mut counts = Vec::new();
            if refused > 0 {
                counts.push(format!("{refused} refused by the broker"));
            }
            if given_up > 0 {
                counts.push(format!("{given_up} given up after retries"));
            }
            let counts = counts.join(", ");
            Failure::from_client(format!("{what} ({counts}), {consequence}"), *cause)
        }
        err => Failure::from_client(format!("{what}, {consequence}"), err),
    }
}

/// The goal of the command: `--count`, and with `--exit-at-end` the
/// messages published before it started, whichever is fewer.
async fn goal(client: &Client, args: &SubscribeArgs) -> anyhow::Result<Option<Goal>> {
    let caught_up = if args.exit_at_end {
        Some(catch_up_point(client, args).await?)
    } else {
        None
    };
    Ok(match (args.count, caught_up) {
        (None, None) => None,
        (Some(count), None) => Some(Goal {
            messages: count,
            end_offset: None,
            filtered: false,
        }),
        (count, Some(point)) => Some(Goal {
            messages: count.map_or(point.expected, |count| count.min(point.expected)),
            end_offset: Some(point.end_offset),
            filtered: point.filtered,
        }),
    })
}

/// Where `--exit-at-end` stops.
struct CatchUpPoint {
    /// Messages the subscription has for this command (unacknowledged,
    /// and not leased to another consumer); an upper bound with a filter.
    expected: u64,
    /// The topic's end, read after them so that every one lies below it.
    end_offset: u64,
    /// The subscription has a filter.
    filtered: bool,
}

/// For `--exit-at-end`: where the command is caught up. Creates the
/// subscription first when `--topic` allows, so that its figures exist.
async fn catch_up_point(client: &Client, args: &SubscribeArgs) -> anyhow::Result<CatchUpPoint> {
    let sub = match (
        client.get_subscription(&args.subscription).await,
        &args.topic,
    ) {
        (Ok(sub), _) => sub,
        (Err(err), Some(topic)) if err.code() == tonic::Code::NotFound => {
            let mut config = SubscriptionConfig::new(args.subscription.clone(), topic.clone())
                .start(args.new.start);
            if let Some(deadline) = args.new.ack_deadline {
                config = config.ack_deadline(deadline);
            }
            match client.create_subscription(config).await {
                Ok(sub) => sub,
                // Made by someone else meanwhile.
                Err(err) if err.code() == tonic::Code::AlreadyExists => {
                    client.get_subscription(&args.subscription).await?
                }
                Err(err) => return Err(err.into()),
            }
        }
        (Err(err), _) => return Err(err.into()),
    };
    let end_offset = client.get_topic(&sub.topic).await?.next_offset;
    Ok(CatchUpPoint {
        expected: sub.backlog.saturating_sub(sub.in_flight),
        end_offset,
        filtered: !sub.filter.is_empty(),
    })
}

/// Opens the stream, asking the broker for no more messages than the goal.
async fn subscribe(
    client: &Client,
    args: &SubscribeArgs,
    goal: Option<Goal>,
) -> anyhow::Result<Subscriber> {
    let limit = goal.map(|goal| u32::try_from(goal.messages).unwrap_or(u32::MAX));
    // No more messages leased than will be printed, so that the command
    // does not take (and have redelivered) messages it never prints.
    let max_outstanding = args.max_outstanding.min(limit.unwrap_or(u32::MAX));
    let mut builder = client
        .subscriber(args.subscription.clone())
        .start(args.new.start)
        .max_outstanding_messages(max_outstanding);
    if let Some(topic) = &args.topic {
        builder = builder.topic(topic.clone());
    }
    if let Some(deadline) = args.new.ack_deadline {
        builder = builder.ack_deadline(deadline);
    }
    if let Some(limit) = limit {
        builder = builder.max_messages(limit);
    }
    Ok(builder.subscribe().await?)
}

/// Ends the stream and flushes settlements; `held` (`--no-ack`)
/// deliveries go back to the subscription.
async fn close(
    subscriber: Subscriber,
    held: Vec<Delivery>,
    stream_over: bool,
) -> tidings_client::Result<()> {
    if stream_over {
        // The stream is over, but what it delivered stays leased to us:
        // held messages go back with a nack.
        drop(held);
        subscriber.close().await
    } else {
        // Ending the open stream hands held messages back at once; nacking
        // them first would have them delivered again to this very stream.
        let closed = subscriber.close().await;
        drop(held);
        closed
    }
}

/// Why the receive loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The goal was reached.
    Done,
    /// Ctrl-C.
    Interrupted,
    /// No message came for `--timeout`.
    Idle,
    /// The stream ended without an error.
    Ended,
}

/// The receive loop and what it counted.
struct Receiver<'a> {
    client: &'a Client,
    args: &'a SubscribeArgs,
    goal: Option<Goal>,
    format: Format,
    /// Messages printed.
    printed: u64,
    /// Deliveries taken from the stream, printed or not.
    received: u64,
    /// Deliveries not to be acknowledged: `--no-ack`, or published after
    /// the command started.
    held: Vec<Delivery>,
}

impl Receiver<'_> {
    /// Prints and settles each delivery until the loop has to stop.
    async fn receive(&mut self, subscriber: &mut Subscriber) -> anyhow::Result<Stop> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let idle_after = self.args.timeout;
        let mut idle_at = idle_after.map(|timeout| Instant::now() + timeout);
        // A filtered subscription's backlog counts messages the broker
        // will turn away: whether it is caught up is read off its figures
        // whenever the stream falls quiet.
        let filtered_end = self
            .goal
            .filter(|goal| goal.filtered)
            .and_then(|goal| goal.end_offset);
        let mut check_at = filtered_end.map(|_| Instant::now() + CATCH_UP_CHECK);
        loop {
            if self.goal.is_some_and(|goal| self.printed >= goal.messages) {
                return Ok(Stop::Done);
            }
            let item = tokio::select! {
                _ = &mut ctrl_c => return Ok(Stop::Interrupted),
                () = sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                    return Ok(Stop::Idle);
                }
                () = sleep_until(check_at.unwrap_or_else(Instant::now)), if check_at.is_some() => {
                    if let Some(end) = filtered_end
                        && self.caught_up(subscriber, end).await?
                    {
                        return Ok(Stop::Done);
                    }
                    check_at = Some(Instant::now() + CATCH_UP_CHECK);
                    continue;
                }
                item = subscriber.next() => item,
            };
            check_at = check_at.map(|_| Instant::now() + CATCH_UP_CHECK);
            let Some(delivery) = item else {
                return Ok(Stop::Ended);
            };
            let delivery = delivery?;
            self.received += 1;
            let end_offset = self.goal.and_then(|goal| goal.end_offset);
            if end_offset.is_some_and(|end| delivery.offset() >= end) {
                // Published after the command started: everything before
                // it that was to come has come. Not printed; it goes back.
                self.held.push(delivery);
                return Ok(Stop::Done);
            }
            if let Err(err) = output::message(Shown::from(&delivery), self.format) {
                // Not shown to anyone: give it back.
                delivery.nack();
                return Err(err.into());
            }
            self.printed += 1;
            idle_at = idle_after.map(|timeout| Instant::now() + timeout);
            if self.args.no_ack {
                self.held.push(delivery);
            } else {
                delivery.ack();
            }
        }
    }

    /// Whether every message below `end` is acknowledged, once the acks
    /// sent so far are stored.
    async fn caught_up(&self, subscriber: &Subscriber, end: u64) -> anyhow::Result<bool> {
        subscriber.flush().await?;
        let sub = self
            .client
            .get_subscription(&self.args.subscription)
            .await?;
        Ok(sub.ack_floor >= end)
    }

    /// Whether stopping this way is a success: stopping short of a goal is
    /// not.
    fn outcome(&self, stop: Stop) -> anyhow::Result<()> {
        let Some(goal) = self.goal.filter(|_| stop != Stop::Done) else {
            return Ok(());
        };
        let progress = goal.progress(self.printed);
        let failure = match stop {
            Stop::Done => return Ok(()),
            Stop::Interrupted => Failure::interrupted(format!("interrupted after {progress}")),
            Stop::Idle => Failure::new(
                tonic::Code::DeadlineExceeded,
                format!(
                    "received {progress}; none came for {}",
                    humantime::format_duration(self.args.timeout.unwrap_or_default())
                ),
            ),
            Stop::Ended => Failure::new(
                tonic::Code::Aborted,
                format!(
                    "the broker ended the stream of subscription \"{}\" after {progress}",
                    self.args.subscription
                ),
            ),
        };
        Err(failure.into())
    }
}
