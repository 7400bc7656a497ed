//! `tidings bench push`: how fast the broker pushes. A backlog of N
//! messages is filled first (untimed); then a push subscription is made
//! from the backlog's start to an HTTP endpoint in this process that
//! answers 204 at once, and the run is timed until every message was
//! POSTed and the subscription has nothing left to acknowledge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use tidings_client::{PushConfig, StartPosition, StorageClass, SubscriptionConfig};
use tokio::sync::Notify;

use super::backlog::Shape;
use super::report::{Progress, ServerUsage, result};
use super::{CommonArgs, Context, ensure_topic, unique_name};

/// Arguments of `tidings bench push`.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages to push.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// The subscription's max_outstanding: POSTs in flight at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_outstanding: u32,
}

/// The endpoint's count of POSTs, and who waits for the last one.
struct Received {
    posts: AtomicU64,
    all: u64,
    done: Notify,
}

async fn receive(State(received): State<Arc<Received>>) -> StatusCode {
    if received.posts.fetch_add(1, Ordering::Relaxed) + 1 >= received.all {
        received.done.notify_one();
    }
    StatusCode::NO_CONTENT
}

/// Runs the workload.
///
/// # Errors
/// When the broker cannot be reached, or the endpoint cannot listen.
pub(crate) async fn run(ctx: &Context, args: PushArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let topic = args.common.topic.clone();
    ensure_topic(&client, &topic, StorageClass::Disk).await?;
    let first = client.get_topic(&topic).await?.next_offset;
    let shape = Shape {
        count: args.count,
        keys: None,
        poison: 0,
        match_percent: None,
    };
    shape.fill(&client, &topic, args.size).await?;

    let received = Arc::new(Received {
        posts: AtomicU64::new(0),
        all: args.count,
        done: Notify::new(),
    });
    let app = Router::new()
        .route("/push", axum::routing::post(receive))
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/push", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let subscription = unique_name("bench-push");
    let usage = ServerUsage::read(args.common.server_pid);
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("push", Arc::clone(&done), args.count);
    let started = Instant::now();
    client
        .create_subscription(
            SubscriptionConfig::new(&subscription, &topic)
                .start(StartPosition::Offset(first))
                .push_config(PushConfig::new(endpoint).max_outstanding(args.max_outstanding)),
        )
        .await?;
    let all_posted = received.done.notified();
    tokio::pin!(all_posted);
    all_posted.as_mut().enable();
    if received.posts.load(Ordering::Relaxed) < args.count {
        loop {
            tokio::select! {
                () = &mut all_posted => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    done.store(received.posts.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }
    // Every POST answered; the last acknowledgements follow at once.
    while client.get_subscription(&subscription).await?.backlog > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let name = format!("tidings-push max_outstanding={}", args.max_outstanding);
    result(&name, args.count, args.size, elapsed);
    if let Some((pid, before)) = usage {
        before.report_since(pid, &name, args.count);
    }
    let posts = received.posts.load(Ordering::Relaxed);
    if posts > args.count {
        println!(
            "NOTE {name}: {} messages were pushed more than once",
            posts - args.count
        );
    }
    client.delete_subscription(&subscription).await?;
    server.abort();
    Ok(())
}
