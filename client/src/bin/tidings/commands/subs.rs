//! `tidings subs ls|create|describe|delete`: manage subscriptions.
//!
//! Thin: one library call per command, then the result printed as a
//! table, lines or JSON. Receiving messages is `tidings sub`, elsewhere.

use clap::Subcommand;
use serde_json::{Value, json};
use tidings_client::{Client, SubscriptionConfig};

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
        tidings subs create audit --topic orders --start latest --ack-deadline 2m")]
    Create {
        /// The new subscription's name; the same grammar as topic names.
        name: String,

        /// The topic to subscribe to; it must exist.
        #[arg(long, short)]
        topic: String,

        #[command(flatten)]
        new: values::NewSubscriptionArgs,
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
        SubsCommand::Create { name, topic, new } => {
            let mut config = SubscriptionConfig::new(name, topic).start(new.start);
            if let Some(deadline) = new.ack_deadline {
                config = config.ack_deadline(deadline);
            }
            create(ctx, &client, config).await?;
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
