//! The command line of `tidings`: the global options and the list of
//! commands, declared with clap derive.
//!
//! Each command's own flags live in its module under `commands/`; this
//! module only lists the commands. It connects to nothing and prints
//! nothing.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{bench, call, peek, publish, subs, subscribe, topics};
use crate::values;

/// The broker's default address, the broker's own default `--listen`.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Examples shown at the end of `tidings --help`.
const EXAMPLES: &str = "\
Examples:
  tidings topics create orders
  echo 'order 42' | tidings pub orders --key order-42
  tidings sub billing --topic orders --count 1
  tidings peek orders --from 40 --count 5
  tidings subs describe billing --json
  tidings --server 10.0.0.5:50051 health";

/// `tidings`: publish, receive and manage messages of a Tidings broker.
#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about = "Publish, receive and manage messages of a Tidings broker",
    long_about = "Publish, receive and manage messages of a Tidings broker.\n\n\
        Every command talks to the broker at --server (default \
        http://127.0.0.1:50051). Output is tables and lines for people; \
        with --json every command prints JSON instead. On failure a command \
        exits with status 1 and prints one line on standard error: \
        `tidings: <reason>`, or with --json {\"code\": \"NOT_FOUND\", \"message\": …} \
        (the gRPC status code, UNKNOWN for local failures). A command stopped by \
        Ctrl-C before it was done exits with status 130.",
    after_long_help = EXAMPLES
)]
pub(crate) struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub(crate) global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes, before or after the command's name.
#[derive(Debug, clap::Args)]
pub(crate) struct GlobalArgs {
    /// Address of the broker: a URL such as http://127.0.0.1:50051 (or
    /// https://… for TLS), or host:port (http:// is then assumed).
    #[arg(
        long,
        global = true,
        env = "TIDINGS_SERVER",
        default_value = DEFAULT_SERVER,
        value_parser = values::parse_server,
        value_name = "URL"
    )]
    pub(crate) server: String,

    /// Print machine-readable JSON instead of tables and lines.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// A PEM file of CA certificates to trust, besides the system's, for
    /// an https:// --server.
    #[arg(long, global = true, env = "TIDINGS_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,

    /// A PEM file of a client certificate to show a broker that requires
    /// one (mutual TLS); needs --client-key and an https:// --server.
    #[arg(
        long,
        global = true,
        env = "TIDINGS_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,

    /// The PEM file of the private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "TIDINGS_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,

    /// A token sent as `authorization: Bearer TOKEN` on every call.
    #[arg(
        long,
        global = true,
        env = "TIDINGS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
}

/// The commands. Each one is a module under `commands/`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish messages to a topic and print their offsets.
    #[command(
        name = "pub",
        long_about = "Publish messages to a topic and print the offset of each, one per line \
            (with --json: {\"topic\": …, \"offsets\": […]}).\n\n\
            The messages are the MESSAGE arguments, the whole of a --file as one message, or \
            else the lines of standard input (one message per line, without its newline or \
            \\r\\n). They are stored in input order: in batches, one batch in flight at a \
            time. The command returns once every one of them is stored. If publishing stops \
            early (the broker refuses a message or goes away), it exits 1 saying how many \
            were stored, which are the first ones of the input; message N is line N.",
        after_long_help = "Examples:\n  \
            tidings pub orders 'order 42' 'order 43'\n  \
            printf 'a\\nb\\n' | tidings pub orders --key customer-7 --attr source=import\n  \
            tidings pub images --file photo.jpg --attr type=image/jpeg"
    )]
    Publish(publish::PublishArgs),

    /// Receive messages of a subscription and print them.
    #[command(
        name = "sub",
        long_about = "Receive messages of a subscription, print each one, then acknowledge it \
            (unless --no-ack).\n\n\
            With --topic, the subscription is created on that topic when it does not exist yet \
            (starting at --start). Stops after --count messages, once caught up with \
            --exit-at-end, when no message came for --timeout, or at Ctrl-C. \
            Acknowledgements are flushed to the broker before the command exits; if they \
            cannot be, it exits 1.\n\n\
            Stopping short of --count or --exit-at-end is a failure: exit status 130 for \
            Ctrl-C, 1 for --timeout. Without either, Ctrl-C and --timeout exit 0.",
        after_long_help = "Examples:\n  \
            tidings sub billing --topic orders --count 10 --format jsonl\n  \
            tidings sub audit --topic orders --start latest\n  \
            tidings sub billing --exit-at-end --timeout 5s   # drain what is there, then exit\n  \
            tidings sub billing --count 5 --no-ack           # the messages stay in the backlog"
    )]
    Subscribe(subscribe::SubscribeArgs),

    /// Print a topic's stored messages by offset, taking them from nobody.
    #[command(
        long_about = "Print the stored messages of a topic by offset, in the formats of \
            `tidings sub`. It reads the topic itself: nothing is leased or acknowledged, so \
            subscriptions and their consumers are not disturbed. It prints from --from (the \
            first message the topic holds by default) up to the topic's end when it started, \
            or --count messages, and never waits for new ones.",
        after_long_help = "Examples:\n  \
            tidings peek orders                          # every message the topic holds\n  \
            tidings peek orders --from 1200 --count 10 --format jsonl"
    )]
    Peek(peek::PeekArgs),

    /// Publish a request to a topic and print the reply a responder sends.
    #[command(
        long_about = "Publish a request to a topic and wait for the reply that a responder, \
            consuming the topic, sends with PublisherService.Reply; print the reply's payload \
            (with --json: {\"topic\": …, \"offset\": …, \"reply\": {…}}). The request is \
            stored like any message and carries the attributes tidings.reply_to and \
            tidings.reply_deadline. Exits 1 when nobody answered within --timeout; the \
            request stays in the topic.",
        after_long_help = "Examples:\n  \
            tidings call inventory.questions 'sku-42' --timeout 5s\n  \
            tidings call pricing 'quote' --key customer-7 --attr currency=EUR --json"
    )]
    Call(call::CallArgs),

    /// List, create, update, describe and delete topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),

    /// List, create, describe and delete subscriptions.
    #[command(subcommand)]
    Subs(subs::SubsCommand),

    /// Check that the broker is up and serving.
    #[command(
        long_about = "Check that the broker is up and serving (the standard gRPC health check). \
            Exits 0 when it serves, non-zero when it is unreachable or shutting down."
    )]
    Health,

    /// Measure the broker: publish, consume, end-to-end latency, fan-out.
    #[command(
        subcommand,
        long_about = "Measure a running broker with one of four workloads. Each prints a progress \
            line on standard error, then RESULT and LATENCY lines in the format the NATS \
            baseline in the benchmarks prints, so runs compare line by line. With \
            --server-pid (the broker's process id, on this machine) the broker's CPU time per \
            million messages and peak memory are printed too.",
        after_long_help = "Examples:\n  \
            tidings bench publish --count 1000000 --size 256 --batch 100 --in-flight 8 --publishers 4\n  \
            tidings bench consume --count 1000000 --streams 2\n  \
            tidings bench e2e --rate 10000 --count 50000 --size 256\n  \
            tidings bench fanout --subscriptions 100 --count 10000"
    )]
    Bench(bench::BenchCommand),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_command() {
        let cli = Cli::try_parse_from(["tidings", "topics", "ls", "--json", "--server", "h:1"])
            .expect("parses");
        assert!(cli.global.json);
        assert_eq!(cli.global.server, "http://h:1");
    }
}
