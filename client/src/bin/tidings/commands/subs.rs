//! `tidings subs ls|create|update|seek|redrive|describe|delete`: manage
//! subscriptions.
//!
//! Thin: one library call per command, then the result printed as a
//! table, lines or JSON. Receiving messages is `tidings sub`, elsewhere.

use clap::Subcommand;
use serde_json::{Value, json};
use std::time::Duration;

use tidings_client::{
    Client, DeadLetterPolicy, PushConfig, RetryPolicy, StartPosition, SubscriptionConfig,
    SubscriptionUpdate,
};

use super::Context;
use crate::{output, values};

/// The `subs` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum SubsCommand {
    /// List subscriptions with their backlog and messages in flight.
    #[command(visible_alias = "list")]
    Ls {
        /// Only the subscriptions of this topic.
        #[arg(long, short)]
        topic: Option<String>,
    },

    /// Create a subscription on a topic.
    #[command(after_long_help = "Examples:\n  \
        tidings subs create billing --topic orders\n  \
        tidings subs create audit --topic orders --start latest --ack-deadline 2m\n  \
        tidings subs create eu-orders --topic orders --filter 'attributes.region = \"eu\"'\n  \
        tidings subs create notify --topic orders --push-endpoint http://localhost:9000/hook")]
    Create {
        /// The new subscription's name; the same grammar as topic names.
        name: String,

        /// The topic to subscribe to; it must exist.
        #[arg(long, short)]
        topic: String,

        #[command(flatten)]
        new: values::NewSubscriptionArgs,

        #[command(flatten)]
        backoff: BackoffArgs,

        /// Deliver the messages of each key in order, one at a time across
        /// all consumers; a failure holds back only its key. Fixed at
        /// creation.
        #[arg(long)]
        ordered: bool,

        #[command(flatten)]
        dead_letter: DeadLetterArgs,

        /// Deliver only messages whose attributes match, in Pub/Sub's
        /// syntax: attributes.NAME = "v", !=, attributes:NAME,
        /// hasPrefix(attributes.NAME, "p"), NOT, AND, OR, parentheses.
        /// The others are acknowledged without delivery.
        #[arg(long, value_name = "EXPRESSION")]
        filter: Option<String>,

        /// Deliver no message before its publish time plus this, such as
        /// 30s or 10m (at most 30d).
        #[arg(long, value_parser = values::parse_delay, value_name = "DURATION")]
        delivery_delay: Option<Duration>,

        #[command(flatten)]
        push: PushArgs,
    },

    /// Change a subscription's ack deadline or filter; its open streams
    /// follow without reconnecting.
    #[command(after_long_help = "Examples:\n  \
        tidings subs update billing --ack-deadline 1m\n  \
        tidings subs update eu-orders --filter 'attributes.region = \"eu\" OR attributes:vip'\n  \
        tidings subs update eu-orders --filter ''   (removes the filter)")]
    Update {
        /// The subscription's name.
        name: String,

        /// The new ack deadline (30, 45s, 2m; 1 s to 10 min), for leases
        /// granted from now on.
        #[arg(long, value_parser = values::parse_ack_deadline, value_name = "DURATION")]
        ack_deadline: Option<Duration>,

        /// The new filter; an empty one removes it. Applies to every
        /// message not yet delivered.
        #[arg(long, value_name = "EXPRESSION")]
        filter: Option<String>,

        #[command(flatten)]
        backoff: BackoffArgs,

        /// Remove the retry policy: failed deliveries come again at once.
        #[arg(long, conflicts_with_all = ["min_backoff", "max_backoff"])]
        no_backoff: bool,

        #[command(flatten)]
        dead_letter: DeadLetterArgs,

        /// Remove the dead-letter policy: failing messages are retried for
        /// ever.
        #[arg(long, conflicts_with_all = ["dead_letter_topic", "max_delivery_attempts"])]
        no_dead_letter: bool,

        /// The new delivery delay, such as 30s (at most 30d); 0 removes
        /// it. Applies to every message not yet delivered.
        #[arg(long, value_parser = values::parse_delay, value_name = "DURATION")]
        delivery_delay: Option<Duration>,

        #[command(flatten)]
        push: PushArgs,

        /// Stop pushing: consumers subscribe to it again.
        #[arg(long, conflicts_with_all = ["push_endpoint", "push_header", "push_max_outstanding"])]
        no_push: bool,
    },

    /// Bring dead-lettered messages back to a subscription: all of them, or
    /// those of the source offsets given (their tidings.source_offset).
    #[command(after_long_help = "Examples:\n  \
        tidings subs redrive billing\n  \
        tidings subs redrive billing 1042 1043")]
    Redrive {
        /// The subscription's name.
        name: String,

        /// Source offsets to bring back; none for all.
        offsets: Vec<u64>,
    },

    /// Move a subscription: every message from the position on is
    /// delivered again, every one before it counts as acknowledged.
    #[command(after_long_help = "Examples:\n  \
        tidings subs seek billing --to earliest      (replay everything retained)\n  \
        tidings subs seek billing --to latest        (skip the backlog)\n  \
        tidings subs seek billing --to 1200\n  \
        tidings subs seek billing --to 2024-05-01T12:00:00Z")]
    Seek {
        /// The subscription's name.
        name: String,

        /// Where to: earliest, latest, an offset such as 42, or an RFC 3339
        /// time (the first message published at or after it).
        #[arg(long, value_parser = values::parse_start, value_name = "earliest|latest|OFFSET|TIME")]
        to: StartPosition,
    },

    /// Show a subscription with its live figures: backlog, messages in
    /// flight, ack floor, open streams.
    #[command(visible_alias = "get")]
    Describe {
        /// The subscription's name.
        name: String,
    },

    /// Delete a subscription; its open streams end.
    #[command(visible_alias = "rm")]
    Delete {
        /// The subscription's name.
        name: String,
    },
}

/// The retry policy's flags.
#[derive(Debug, clap::Args)]
pub(crate) struct BackoffArgs {
    /// Retry policy: the wait before the first redelivery of a message
    /// whose delivery failed (nack, expired lease), doubling with each
    /// failure; 0 to 10m. Default with --max-backoff alone: 10s.
    #[arg(long, value_parser = values::parse_backoff, value_name = "DURATION")]
    min_backoff: Option<Duration>,

    /// Retry policy: the longest wait before a redelivery; 0 to 10m.
    /// Default with --min-backoff alone: 10m.
    #[arg(long, value_parser = values::parse_backoff, value_name = "DURATION")]
    max_backoff: Option<Duration>,
}

impl BackoffArgs {
    /// The policy the flags give over `current` (unset flags keep its
    /// values, or take the defaults); `None` when no flag is given.
    fn policy(&self, current: Option<RetryPolicy>) -> Option<RetryPolicy> {
        if self.min_backoff.is_none() && self.max_backoff.is_none() {
            return None;
        }
        let current = current.unwrap_or(RetryPolicy::new(
            Duration::from_secs(10),
            Duration::from_secs(600),
        ));
        Some(RetryPolicy::new(
            self.min_backoff.unwrap_or(current.minimum_backoff),
            self.max_backoff.unwrap_or(current.maximum_backoff),
        ))
    }
}

/// The dead-letter policy's flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadLetterArgs {
    /// Move messages that fail --max-delivery-attempts deliveries (or are
    /// rejected) to this topic, with where they came from in tidings.*
    /// attributes. It must exist.
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,

    /// Failed deliveries before a message is moved, 2 to 100. Default
    /// with --dead-letter-topic: 5.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100), value_name = "N")]
    max_delivery_attempts: Option<u32>,
}

impl DeadLetterArgs {
    /// The policy the flags give over `current`; `None` when no flag is
    /// given.
    fn policy(
        &self,
        current: Option<DeadLetterPolicy>,
    ) -> anyhow::Result<Option<DeadLetterPolicy>> {
        if self.dead_letter_topic.is_none() && self.max_delivery_attempts.is_none() {
            return Ok(None);
        }
        let topic = match (&self.dead_letter_topic, &current) {
            (Some(topic), _) => topic.clone(),
            (None, Some(current)) => current.topic.clone(),
            (None, None) => anyhow::bail!(
                "--max-delivery-attempts needs a dead-letter topic: give --dead-letter-topic"
            ),
        };
        let attempts = self
            .max_delivery_attempts
            .or(current.map(|c| c.max_delivery_attempts))
            .unwrap_or(5);
        Ok(Some(DeadLetterPolicy::new(topic, attempts)))
    }
}

/// The push flags.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// Push: the broker POSTs each message as JSON to this http(s) URL; a
    /// 2xx answer acknowledges it, anything else is retried (1s doubling
    /// to 1m unless a retry policy says) and dead-lettered by the policy.
    #[arg(long, value_name = "URL")]
    push_endpoint: Option<String>,

    /// Push: a header for every POST, as 'NAME: VALUE'; repeatable. Given
    /// on update, the headers replace the old ones.
    #[arg(long, value_parser = values::parse_header, value_name = "'NAME: VALUE'")]
    push_header: Vec<(String, String)>,

    /// Push: the most POSTs in flight at once, 1 to 1000 (default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    push_max_outstanding: Option<u32>,
}

impl PushArgs {
    fn given(&self) -> bool {
        self.push_endpoint.is_some()
            || !self.push_header.is_empty()
            || self.push_max_outstanding.is_some()
    }

    /// The configuration the flags give over `current` (unset flags keep
    /// its values); `None` when no flag is given.
    fn config(&self, current: Option<PushConfig>) -> anyhow::Result<Option<PushConfig>> {
        if !self.given() {
            return Ok(None);
        }
        let mut config = match (&self.push_endpoint, current) {
            (Some(endpoint), Some(current)) => PushConfig {
                endpoint: endpoint.clone(),
                ..current
            },
            (Some(endpoint), None) => PushConfig::new(endpoint.clone()),
            (None, Some(current)) => current,
            (None, None) => anyhow::bail!(
                "--push-header and --push-max-outstanding need an endpoint: give --push-endpoint"
            ),
        };
        if !self.push_header.is_empty() {
            config.headers = self.push_header.iter().cloned().collect();
        }
        if let Some(max) = self.push_max_outstanding {
            config.max_outstanding = Some(max);
        }
        Ok(Some(config))
    }
}

/// Creates a subscription and prints it.
async fn create(ctx: &Context, client: &Client, config: SubscriptionConfig) -> anyhow::Result<()> {
    let sub = client.create_subscription(config).await?;
    ctx.emit(
        || output::subscription_json(&sub),
        || {
            format!(
                "created subscription \"{}\" on topic \"{}\"",
                sub.name, sub.topic
            )
        },
    )?;
    Ok(())
}

/// Runs a `subs` command.
///
/// # Errors
/// When the broker cannot be reached or refuses the call (for example
/// NOT_FOUND for an unknown subscription or topic).
pub(crate) async fn run(ctx: &Context, command: SubsCommand) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    match command {
        SubsCommand::Ls { topic } => {
            let subs = client.list_subscriptions(topic.as_deref()).await?;
            ctx.emit(
                || Value::Array(subs.iter().map(output::subscription_json).collect()),
                || {
                    if subs.is_empty() {
                        "no subscriptions".to_owned()
                    } else {
                        output::subscriptions_table(&subs)
                    }
                },
            )?;
        }
        SubsCommand::Create {
            name,
            topic,
            new,
            backoff,
            ordered,
            dead_letter,
            filter,
            delivery_delay,
            push,
        } => {
            let mut config = SubscriptionConfig::new(name, topic).start(new.start);
            if let Some(deadline) = new.ack_deadline {
                config = config.ack_deadline(deadline);
            }
            if let Some(filter) = filter {
                config = config.filter(filter);
            }
            if let Some(policy) = backoff.policy(None) {
                config = config.retry_policy(policy);
            }
            config = config.enable_message_ordering(ordered);
            if let Some(policy) = dead_letter.policy(None)? {
                config = config.dead_letter_policy(policy);
            }
            if let Some(delay) = delivery_delay {
                config = config.delivery_delay(delay);
            }
            if let Some(push) = push.config(None)? {
                config = config.push_config(push);
            }
            create(ctx, &client, config).await?;
        }
        SubsCommand::Update {
            name,
            ack_deadline,
            filter,
            backoff,
            no_backoff,
            dead_letter,
            no_dead_letter,
            delivery_delay,
            push,
            no_push,
        } => {
            let changes_retry = backoff.min_backoff.is_some() || backoff.max_backoff.is_some();
            let changes_dead_letter = dead_letter.dead_letter_topic.is_some()
                || dead_letter.max_delivery_attempts.is_some();
            // One flag alone keeps the other values as they are.
            let current = if changes_retry || changes_dead_letter || push.given() {
                Some(client.get_subscription(&name).await?)
            } else {
                None
            };
            let retry_policy = if no_backoff {
                Some(None)
            } else if changes_retry {
                Some(backoff.policy(current.as_ref().and_then(|c| c.retry_policy)))
            } else {
                None
            };
            let push_config = if no_push {
                Some(None)
            } else if push.given() {
                Some(push.config(current.as_ref().and_then(|c| c.push_config.clone()))?)
            } else {
                None
            };
            let dead_letter_policy = if no_dead_letter {
                Some(None)
            } else if changes_dead_letter {
                Some(dead_letter.policy(current.and_then(|c| c.dead_letter_policy))?)
            } else {
                None
            };
            let update = SubscriptionUpdate {
                ack_deadline,
                filter,
                retry_policy,
                dead_letter_policy,
                delivery_delay,
                push_config,
            };
            if update.ack_deadline.is_none()
                && update.filter.is_none()
                && update.retry_policy.is_none()
                && update.dead_letter_policy.is_none()
                && update.delivery_delay.is_none()
                && update.push_config.is_none()
            {
                anyhow::bail!(
                    "nothing to change: give --ack-deadline, --filter (an empty one removes it), \
                     --min-backoff, --max-backoff, --no-backoff, --dead-letter-topic, \
                     --max-delivery-attempts, --no-dead-letter, --delivery-delay, \
                     --push-endpoint, --push-header, --push-max-outstanding or --no-push"
                );
            }
            let sub = client.update_subscription(&name, update).await?;
            ctx.emit(
                || output::subscription_json(&sub),
                || output::subscription_text(&sub),
            )?;
        }
        SubsCommand::Redrive { name, offsets } => {
            let redriven = client.redrive(&name, &offsets).await?;
            ctx.emit(
                || json!({ "name": name, "redriven": redriven }),
                || {
                    format!(
                        "brought {redriven} dead-lettered messages back to subscription \"{name}\""
                    )
                },
            )?;
        }
        SubsCommand::Seek { name, to } => {
            client.seek(&name, to).await?;
            let sub = client.get_subscription(&name).await?;
            ctx.emit(
                || output::subscription_json(&sub),
                || {
                    format!(
                        "moved subscription \"{name}\": {} messages to deliver from offset {}",
                        sub.backlog, sub.ack_floor
                    )
                },
            )?;
        }
        SubsCommand::Describe { name } => {
            let sub = client.get_subscription(&name).await?;
            ctx.emit(
                || output::subscription_json(&sub),
                || output::subscription_text(&sub),
            )?;
        }
        SubsCommand::Delete { name } => {
            client.delete_subscription(&name).await?;
            ctx.emit(
                || json!({ "name": name, "deleted": true }),
                || format!("deleted subscription \"{name}\""),
            )?;
        }
    }
    Ok(())
}
