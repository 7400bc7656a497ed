//! `tidings topics ls|create|describe|delete`: manage topics.
//!
//! Thin: one library call per command, then the result printed as a
//! table, lines or JSON.

use clap::Subcommand;
use serde_json::{Value, json};

use super::Context;
use crate::output;

/// The `topics` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// List every topic with its next offset (the number of messages ever
    /// published to it).
    #[command(visible_alias = "list")]
    Ls,

    /// Create a topic.
    #[command(after_long_help = "Example:\n  tidings topics create order.placed")]
    Create {
        /// The new topic's name: ASCII letters, digits, '.', '_' and '-'
        /// (1 to 255 characters), starting with a letter or digit.
        name: String,
    },

    /// Show a topic and its next offset.
    #[command(visible_alias = "get")]
    Describe {
        /// The topic's name.
        name: String,
    },

    /// Delete a topic with all its messages and subscriptions.
    #[command(visible_alias = "rm")]
    Delete {
        /// The topic's name.
        name: String,
    },
}

/// Runs a `topics` command.
///
/// # Errors
/// When the broker cannot be reached or refuses the call (for example
/// NOT_FOUND for an unknown topic).
pub(crate) async fn run(ctx: &Context, command: TopicsCommand) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    match command {
        TopicsCommand::Ls => {
            let topics = client.list_topics().await?;
            ctx.emit(
                || Value::Array(topics.iter().map(output::topic_json).collect()),
                || {
                    if topics.is_empty() {
                        "no topics".to_owned()
                    } else {
                        output::topics_table(&topics)
                    }
                },
            )?;
        }
        TopicsCommand::Create { name } => {
            let topic = client.create_topic(&name).await?;
            ctx.emit(
                || output::topic_json(&topic),
                || format!("created topic \"{}\"", topic.name),
            )?;
        }
        TopicsCommand::Describe { name } => {
            let topic = client.get_topic(&name).await?;
            ctx.emit(|| output::topic_json(&topic), || output::topic_text(&topic))?;
        }
        TopicsCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            ctx.emit(
                || json!({ "name": name, "deleted": true }),
                || format!("deleted topic \"{name}\" with its messages and subscriptions"),
            )?;
        }
    }
    Ok(())
}
