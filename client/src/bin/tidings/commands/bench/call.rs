//! `tidings bench call`: request and reply round trips. A responder (a
//! subscriber in this process, on the same machine) answers every request
//! as it comes, many at once, and acknowledges it (a failed reply leaves
//! the request to be delivered again, and its call to time out); W callers make N calls in all, and each
//! call's time from sending to its reply goes into the histogram.

use std::time::Duration;

use futures::StreamExt as _;
use tidings_client::{Message, StorageClass, SubscriptionConfig};

use super::report::CallLoop;
use super::{CommonArgs, Context, ensure_topic, payload, unique_name};

/// How long one call may wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests the responder answers at once.
const RESPONDER_CONCURRENCY: usize = 64;

/// Arguments of `tidings bench call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Calls to make.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Payload size in bytes, of requests and replies.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Calls waiting at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
}

/// Runs the workload.
///
/// # Errors
/// When the broker cannot be reached, or a call or reply fails.
pub(crate) async fn run(ctx: &Context, args: CallArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let topic = args.common.topic.clone();
    ensure_topic(&client, &topic, StorageClass::Disk).await?;
    let subscription = unique_name("bench-call");
    client
        .create_subscription(
            SubscriptionConfig::new(&subscription, &topic)
                .start(tidings_client::StartPosition::Latest),
        )
        .await?;
    let requests = client.subscriber(&subscription).subscribe().await?;
    let answer = payload(args.size);
    let responder_client = client.clone();
    // Answers up to RESPONDER_CONCURRENCY requests at once, as a service
    // would; one at a time, its own round trips would be what is measured.
    let responder = tokio::spawn(async move {
        let answer = &answer;
        let responder_client = &responder_client;
        requests
            .for_each_concurrent(RESPONDER_CONCURRENCY, |request| async move {
                let Ok(request) = request else { return };
                if responder_client
                    .reply(&request, Message::new(answer.clone()))
                    .await
                    .is_ok()
                {
                    request.ack();
                }
            })
            .await;
    });

    let request = payload(args.size);
    let name = format!("tidings-call in_flight={}", args.in_flight);
    let calls = CallLoop {
        name: &name,
        latency_name: "tidings-call call->reply",
        progress: "call",
        count: args.count,
        size: args.size,
        in_flight: args.in_flight,
        server_pid: args.common.server_pid,
    };
    let outcome = calls
        .run(|_| {
            let (client, topic, request) = (client.clone(), topic.clone(), request.clone());
            async move {
                client
                    .call(&topic, Message::new(request), CALL_TIMEOUT)
                    .await?;
                Ok(())
            }
        })
        .await;
    responder.abort();
    client.delete_subscription(&subscription).await?;
    outcome
}
