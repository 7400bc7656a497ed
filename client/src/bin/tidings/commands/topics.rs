//! `tidings topics ls|create|update|describe|delete`: manage topics.
//!
//! Thin: one library call per command, then the result printed as a
//! table, lines or JSON.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use tidings_client::{Retention, StorageClass, TopicConfig, TopicUpdate};

use super::Context;
use crate::{output, values};

/// The `topics` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// List every topic with its next offset (the number of messages ever
    /// published to it), the messages it retains and its retention.
    #[command(visible_alias = "list")]
    Ls,

    /// Create a topic.
    #[command(
        long_about = "Create a topic.\n\n\
            Without a retention flag the topic gets the broker's default retention (the \
            broker's --retention-max-age, 7 days unless set). With any of them the topic gets \
            exactly the policy given: a limit not given is no limit.",
        after_long_help = "Examples:\n  \
            tidings topics create order.placed\n  \
            tidings topics create clicks --retention 24h --max-messages 1000000\n  \
            tidings topics create jobs --retention 7d --discard-acked\n  \
            tidings topics create audit --keep-forever   (never deletes a message)\n  \
            tidings topics create payments --dedup-window 10m\n  \
            tidings topics create prices --memory --max-bytes 16MiB"
    )]
    Create {
        /// The new topic's name: ASCII letters, digits, '.', '_' and '-'
        /// (1 to 255 characters), starting with a letter or digit.
        name: String,

        #[command(flatten)]
        retention: RetentionArgs,

        /// How long published message ids are remembered: a message whose
        /// id was stored less than this long ago is not stored again (see
        /// `tidings pub --id`). Such as 10m or 1d, at most 7d; 0 turns
        /// deduplication off. Default: the broker's, 2m.
        #[arg(long, value_parser = values::parse_dedup_window, value_name = "DURATION")]
        dedup_window: Option<Duration>,

        /// Keep the topic's messages in the broker's memory only: publishing
        /// writes no message to disk, and a restart or crash of the broker
        /// loses them all (the topic, its subscriptions and its offsets
        /// stay). It holds at most --max-bytes (64MiB when not given): each
        /// publish beyond it drops the oldest messages at once. Cannot be
        /// changed later.
        #[arg(long)]
        memory: bool,
    },

    /// Change a topic's retention or dedup window: only what is given
    /// changes, and the broker applies it within seconds.
    #[command(after_long_help = "Examples:\n  \
        tidings topics update clicks --retention 48h\n  \
        tidings topics update clicks --max-messages 0   (removes the count limit)\n  \
        tidings topics update jobs --discard-acked false\n  \
        tidings topics update payments --dedup-window 1h")]
    Update {
        /// The topic's name.
        name: String,

        #[command(flatten)]
        change: RetentionChangeArgs,
    },

    /// Show a topic: its offsets, the messages it retains and its
    /// retention.
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

/// The retention flags of `topics create`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    /// Delete messages older than this (since they were published), such
    /// as 24h or 7d; at least 1s, or 0 for no age limit.
    #[arg(long, value_parser = values::parse_retention_age, value_name = "DURATION")]
    retention: Option<Duration>,

    /// Keep at most this many messages: the oldest beyond it are deleted.
    /// 0 for no limit.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,

    /// Delete a message once every subscription of the topic has
    /// acknowledged it. Nothing is deleted while the topic has no
    /// subscription.
    #[arg(long)]
    discard_acked: bool,

    /// No age limit, as --retention 0. Alone, the topic keeps every
    /// message for ever.
    #[arg(long, conflicts_with = "retention")]
    keep_forever: bool,

    /// Keep at most this many bytes of messages (as the topic's retained
    /// bytes count them), such as 10GiB or 500MB: the oldest beyond it are
    /// deleted. 0 for no limit.
    #[arg(long, value_parser = values::parse_size, value_name = "SIZE")]
    max_bytes: Option<u64>,
}

impl RetentionArgs {
    /// The policy the flags give, a limit not given being no limit;
    /// `None` (the broker's default) when no flag is given.
    fn policy(&self) -> Option<Retention> {
        if self.retention.is_none()
            && self.max_messages.is_none()
            && self.max_bytes.is_none()
            && !self.discard_acked
            && !self.keep_forever
        {
            return None;
        }
        let mut policy = Retention::unlimited().discard_acked(self.discard_acked);
        if let Some(age) = self.retention {
            policy = policy.max_age(age);
        }
        if let Some(max_messages) = self.max_messages {
            policy = policy.max_messages(max_messages);
        }
        if let Some(max_bytes) = self.max_bytes {
            policy = policy.max_bytes(max_bytes);
        }
        Some(policy)
    }
}

/// The flags of `topics update`: each one given changes its limit alone.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionChangeArgs {
    /// The new age limit, such as 24h or 7d (at least 1s); 0 removes it.
    #[arg(long, value_parser = values::parse_retention_age, value_name = "DURATION")]
    retention: Option<Duration>,

    /// The new limit on the number of messages kept; 0 removes it.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,

    /// The new limit on the bytes of messages kept, such as 10GiB; 0
    /// removes it.
    #[arg(long, value_parser = values::parse_size, value_name = "SIZE")]
    max_bytes: Option<u64>,

    /// Whether to delete a message once every subscription of the topic
    /// has acknowledged it.
    #[arg(long, value_name = "true|false", value_parser = clap::value_parser!(bool))]
    discard_acked: Option<bool>,

    /// The new dedup window, such as 10m (at most 7d); 0 turns
    /// deduplication off.
    #[arg(long, value_parser = values::parse_dedup_window, value_name = "DURATION")]
    dedup_window: Option<Duration>,
}

impl RetentionChangeArgs {
    /// The update the flags give.
    ///
    /// # Errors
    /// When no flag is given: there is nothing to change.
    fn update(&self) -> anyhow::Result<TopicUpdate> {
        let update = TopicUpdate {
            retention: None,
            max_age: self.retention.map(|age| Some(age).filter(|a| !a.is_zero())),
            max_messages: self.max_messages.map(|n| Some(n).filter(|&n| n != 0)),
            max_bytes: self.max_bytes.map(|n| Some(n).filter(|&n| n != 0)),
            discard_acked: self.discard_acked,
            dedup_window: self.dedup_window,
        };
        if update == TopicUpdate::default() {
            anyhow::bail!(
                "nothing to change: give --retention (0 removes the age limit), \
                 --max-messages or --max-bytes (0 removes the limit), \
                 --discard-acked true|false or --dedup-window"
            );
        }
        Ok(update)
    }
}

/// Runs a `topics` command.
///
/// # Errors
/// When the broker cannot be reached or refuses the call (for example
/// NOT_FOUND for an unknown topic), or `topics update` is given nothing to
/// change (checked before connecting).
pub(crate) async fn run(ctx: &Context, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Ls => {
            let topics = ctx.connect().await?.list_topics().await?;
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
        TopicsCommand::Create {
            name,
            retention,
            dedup_window,
            memory,
        } => {
            let config = create_config(name, &retention, dedup_window, memory);
            let topic = ctx.connect().await?.create_topic_with(config).await?;
            ctx.emit(
                || output::topic_json(&topic),
                || format!("created topic \"{}\"", topic.name),
            )?;
        }
        TopicsCommand::Update { name, change } => {
            let update = change.update()?;
            let topic = ctx.connect().await?.update_topic(&name, update).await?;
            ctx.emit(|| output::topic_json(&topic), || output::topic_text(&topic))?;
        }
        TopicsCommand::Describe { name } => {
            let topic = ctx.connect().await?.get_topic(&name).await?;
            ctx.emit(|| output::topic_json(&topic), || output::topic_text(&topic))?;
        }
        TopicsCommand::Delete { name } => {
            ctx.connect().await?.delete_topic(&name).await?;
            ctx.emit(
                || json!({ "name": name, "deleted": true }),
                || format!("deleted topic \"{name}\" with its messages and subscriptions"),
            )?;
        }
    }
    Ok(())
}

/// The topic `topics create` asks for.
fn create_config(
    name: String,
    retention: &RetentionArgs,
    dedup_window: Option<Duration>,
    memory: bool,
) -> TopicConfig {
    let mut config = TopicConfig::new(name);
    config.retention = retention.policy();
    config.dedup_window = dedup_window;
    if memory {
        config.storage = StorageClass::Memory;
    }
    config
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    /// `tidings topics ARGS…` parsed.
    fn parse(args: &[&str]) -> Result<TopicsCommand, clap::Error> {
        let cli = Cli::try_parse_from(["tidings", "topics"].iter().chain(args))?;
        match cli.command {
            Command::Topics(command) => Ok(command),
            other => panic!("parsed as another command: {other:?}"),
        }
    }

    fn create_policy(args: &[&str]) -> Option<Retention> {
        match parse(args) {
            Ok(TopicsCommand::Create { retention, .. }) => retention.policy(),
            other => panic!("not a topics create: {other:?}"),
        }
    }

    fn update_of(args: &[&str]) -> anyhow::Result<TopicUpdate> {
        match parse(args) {
            Ok(TopicsCommand::Update { change, .. }) => change.update(),
            other => panic!("not a topics update: {other:?}"),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn create_of(args: &[&str]) -> TopicConfig {
        match parse(args) {
            Ok(TopicsCommand::Create {
                name,
                retention,
                dedup_window,
                memory,
            }) => create_config(name, &retention, dedup_window, memory),
            other => panic!("not a topics create: {other:?}"),
        }
    }

    #[test]
    fn create_memory_asks_for_a_memory_topic_and_disk_is_the_default() {
        let memory = create_of(&["create", "prices", "--memory", "--max-bytes", "16MiB"]);
        assert_eq!(memory.storage, StorageClass::Memory);
        assert_eq!(
            memory.retention,
            Some(Retention::unlimited().max_bytes(16 << 20))
        );
        let alone = create_of(&["create", "prices", "--memory"]);
        assert_eq!(
            (alone.storage, alone.retention),
            (StorageClass::Memory, None),
            "the broker's default retention, and its 64 MiB bound"
        );
        assert_eq!(create_of(&["create", "orders"]).storage, StorageClass::Disk);
        let valued = parse(&["create", "prices", "--memory=yes"]);
        assert!(valued.is_err(), "a switch takes no value: {valued:?}");
    }

    #[test]
    fn create_without_flags_leaves_the_broker_default() {
        assert_eq!(create_policy(&["create", "orders"]), None);
    }

    #[test]
    fn create_flags_give_a_whole_policy() {
        assert_eq!(
            create_policy(&[
                "create",
                "orders",
                "--retention",
                "1h",
                "--max-messages",
                "10",
                "--discard-acked",
            ]),
            Some(
                Retention::unlimited()
                    .max_age(HOUR)
                    .max_messages(10)
                    .discard_acked(true)
            )
        );
        // One flag alone: the limits not given are no limits, not the
        // broker's default.
        assert_eq!(
            create_policy(&["create", "orders", "--max-messages", "10"]),
            Some(Retention::unlimited().max_messages(10))
        );
    }

    #[test]
    fn keep_forever_and_retention_zero_keep_everything() {
        assert_eq!(
            create_policy(&["create", "audit", "--keep-forever"]),
            Some(Retention::unlimited())
        );
        assert_eq!(
            create_policy(&["create", "audit", "--retention", "0"]),
            Some(Retention::unlimited())
        );
        let both = parse(&["create", "audit", "--keep-forever", "--retention", "1h"]);
        assert!(both.is_err(), "{both:?}");
    }

    #[test]
    fn update_sends_only_the_flags_given() {
        assert_eq!(
            update_of(&["update", "orders", "--max-messages", "5"]).ok(),
            Some(TopicUpdate::default().max_messages(Some(5)))
        );
        assert_eq!(
            update_of(&[
                "update",
                "orders",
                "--retention",
                "0",
                "--max-messages",
                "0",
                "--discard-acked",
                "false",
            ])
            .ok(),
            Some(
                TopicUpdate::default()
                    .max_age(None)
                    .max_messages(None)
                    .discard_acked(false)
            )
        );
        assert_eq!(
            update_of(&["update", "orders", "--retention", "2h"]).ok(),
            Some(TopicUpdate::default().max_age(Some(2 * HOUR)))
        );
    }

    #[test]
    fn update_without_flags_names_the_flags_that_exist() {
        let err = update_of(&["update", "orders"]).expect_err("nothing to change");
        let message = err.to_string();
        for flag in [
            "nothing to change",
            "--retention",
            "--max-messages",
            "--discard-acked",
        ] {
            assert!(message.contains(flag), "{message}");
        }
    }

    #[test]
    fn dedup_window_is_given_on_create_and_update() {
        match parse(&["create", "payments", "--dedup-window", "10m"]) {
            Ok(TopicsCommand::Create { dedup_window, .. }) => {
                assert_eq!(dedup_window, Some(Duration::from_secs(600)));
            }
            other => panic!("not a topics create: {other:?}"),
        }
        assert_eq!(
            update_of(&["update", "payments", "--dedup-window", "0"]).ok(),
            Some(TopicUpdate::default().dedup_window(Duration::ZERO))
        );
        assert!(parse(&["create", "payments", "--dedup-window", "8d"]).is_err());
    }

    #[test]
    fn update_discard_acked_takes_true_or_false() {
        assert!(parse(&["update", "orders", "--discard-acked", "maybe"]).is_err());
        assert!(parse(&["update", "orders", "--discard-acked"]).is_err());
    }
}
