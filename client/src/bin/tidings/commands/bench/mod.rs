//! `tidings bench`: load generators that measure a running broker.
//!
//! Eight workloads, one module each: `publish` (throughput of durable
//! publishing), `consume` (draining a backlog with per-message acks),
//! `e2e` (publish-to-receive latency at an open-loop rate), `fanout`
//! (many subscriptions of one topic), `commit` (publish one, acknowledge
//! one, atomically), `call` (request and reply round trips),
//! `http-publish` (one message per request on the HTTP bus) and `push`
//! (the broker POSTing to an endpoint). Each prints its figures last, in the
//! `RESULT` / `LATENCY` line format that the peer benchmarks print too, so
//! runs compare line by line. A progress line goes to standard error while
//! a workload runs. Nothing here asserts a duration: figures are reported,
//! not judged.

mod backlog;
mod call;
mod commit;
mod consume;
mod e2e;
mod fanout;
mod http;
mod publish;
mod push;
mod report;
mod rpc;

use clap::Subcommand;
use tidings_client::{Client, StorageClass, TopicConfig};
use tonic::Code;

use super::Context;

/// The workloads.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Publish N messages from P publishers, B messages per request, W
    /// requests in flight in all (spread over the publishers), as unary
    /// calls or on streams.
    Publish(publish::PublishArgs),
    /// Drain a backlog of N messages over S competing streams, acknowledging
    /// every message.
    Consume(consume::ConsumeArgs),
    /// Publish at a fixed rate and measure publish-to-receive latency.
    E2e(e2e::E2eArgs),
    /// Deliver N messages to each of K subscriptions of one topic.
    Fanout(fanout::FanoutArgs),
    /// Commit N times (publish one message and acknowledge one input),
    /// W commits in flight.
    Commit(commit::CommitArgs),
    /// Make N calls answered by a responder in this process, W waiting at
    /// once, and measure the round trip.
    Call(call::CallArgs),
    /// Publish N messages over the HTTP bus, one per request, W requests
    /// in flight.
    HttpPublish(http::HttpPublishArgs),
    /// Push a backlog of N messages to an endpoint in this process that
    /// answers at once.
    Push(push::PushArgs),
}

/// Options every workload takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CommonArgs {
    /// The topic to use; created when missing.
    #[arg(long, default_value = "bench")]
    pub(crate) topic: String,

    /// Process id of the broker, when it runs on this machine: its CPU time
    /// and peak memory are then reported too (read from /proc).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
}

/// Runs one workload.
///
/// # Errors
/// When the broker cannot be reached or a call fails.
pub(crate) async fn run(ctx: &Context, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Publish(args) => publish::run(ctx, args).await,
        BenchCommand::Consume(args) => consume::run(ctx, args).await,
        BenchCommand::E2e(args) => e2e::run(ctx, args).await,
        BenchCommand::Fanout(args) => fanout::run(ctx, args).await,
        BenchCommand::Commit(args) => commit::run(ctx, args).await,
        BenchCommand::Call(args) => call::run(ctx, args).await,
        BenchCommand::HttpPublish(args) => http::run(ctx, args).await,
        BenchCommand::Push(args) => push::run(ctx, args).await,
    }
}

/// Creates `topic` keeping its messages as `storage` says, unless it
/// exists; an existing topic of the other storage class is refused, as
/// its figures would not be those asked for.
async fn ensure_topic(client: &Client, topic: &str, storage: StorageClass) -> anyhow::Result<()> {
    let config = TopicConfig::new(topic).storage(storage);
    match client.create_topic_with(config).await {
        Err(err) if err.code() != Code::AlreadyExists => Err(err.into()),
        Ok(_) => Ok(()),
        Err(_) => {
            let existing = client.get_topic(topic).await?.storage;
            anyhow::ensure!(
                existing == storage,
                "topic \"{topic}\" exists with storage {existing}, not {storage}: name another \
                 with --topic"
            );
            Ok(())
        }
    }
}

/// The storage class a workload's `--memory` flag asks for.
fn storage_of(memory: bool) -> StorageClass {
    if memory {
        StorageClass::Memory
    } else {
        StorageClass::Disk
    }
}

/// A payload of `size` bytes.
fn payload(size: usize) -> bytes::Bytes {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A name no earlier run used, for subscriptions of one run.
fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos}")
}
