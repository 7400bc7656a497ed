//! `tidings bench commit`: the consume-transform-produce loop at its
//! cost. A backlog of N input messages is filled first (untimed); then W
//! workers commit, each for its own inputs, one output message published
//! with the input's acknowledgement (by offset: the input need not be
//! leased). Compare it with `tidings bench publish --batch 1 --in-flight W`,
//! a plain publish of one message per call at the same concurrency.

use tidings_client::v1::{AckRequest, CommitRequest, PublishMessage, PublishRequest};
use tidings_client::{StorageClass, SubscriptionConfig};

use super::backlog::Shape;
use super::report::CallLoop;
use super::{CommonArgs, Context, ensure_topic, payload, unique_name};

/// Arguments of `tidings bench commit`.
#[derive(Debug, clap::Args)]
pub(crate) struct CommitArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Commits to make (and input messages to fill first).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Payload size in bytes, of inputs and outputs.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Commits in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
}

/// Runs the workload.
///
/// # Errors
/// When the broker cannot be reached or a commit fails.
pub(crate) async fn run(ctx: &Context, args: CommitArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let input = args.common.topic.clone();
    let output = format!("{input}.out");
    ensure_topic(&client, &input, StorageClass::Disk).await?;
    ensure_topic(&client, &output, StorageClass::Disk).await?;
    // A subscription from the topic's end, so that only this run's inputs
    // are acknowledged.
    let subscription = unique_name("bench-commit");
    let first = client.get_topic(&input).await?.next_offset;
    client
        .create_subscription(SubscriptionConfig::new(&subscription, &input))
        .await?;
    let shape = Shape {
        count: args.count,
        keys: None,
        poison: 0,
        match_percent: None,
    };
    shape.fill(&client, &input, args.size).await?;

    let template = PublishMessage {
        payload: payload(args.size),
        ..PublishMessage::default()
    };
    let name = format!("tidings-commit in_flight={}", args.in_flight);
    let calls = CallLoop {
        name: &name,
        latency_name: "tidings-commit commit->ack",
        progress: "commit",
        count: args.count,
        size: args.size,
        in_flight: args.in_flight,
        server_pid: args.common.server_pid,
    };
    calls
        .run(|n| {
            let request = CommitRequest {
                publishes: vec![PublishRequest {
                    topic: output.clone(),
                    messages: vec![template.clone()],
                }],
                acks: vec![AckRequest {
                    subscription: subscription.clone(),
                    offsets: vec![first + n],
                    ack_ids: Vec::new(),
                }],
            };
            let mut service = client.publisher_service();
            async move { Ok(service.commit(request).await.map(drop)?) }
        })
        .await?;
    client.delete_subscription(&subscription).await?;
    Ok(())
}
