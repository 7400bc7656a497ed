//! `tidings bench http-publish`: one message per HTTP request to the
//! broker's HTTP bus (`--http-listen`), W requests in flight over
//! keep-alive connections — the shape of a service that publishes with
//! curl or an HTTP library. Compare it with `tidings bench publish
//! --batch 1 --in-flight W`, gRPC unary calls of the same shape.

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use tidings_client::StorageClass;

use super::report::CallLoop;
use super::{CommonArgs, Context, ensure_topic, payload};

/// Arguments of `tidings bench http-publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct HttpPublishArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The broker's HTTP bus, as `--http-listen` serves it.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Messages to publish, one per request.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
}

/// Runs the workload.
///
/// # Errors
/// When the broker cannot be reached or a request fails.
pub(crate) async fn run(ctx: &Context, args: HttpPublishArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    ensure_topic(&client, &args.common.topic, StorageClass::Disk).await?;
    let url = format!(
        "{}/v1/topics/{}:publish",
        args.http.trim_end_matches('/'),
        args.common.topic
    );
    let body = bytes::Bytes::from(format!(
        r#"{{"messages": [{{"payload": "{}"}}]}}"#,
        BASE64_STANDARD.encode(payload(args.size))
    ));
    // As many pooled connections as requests in flight, each kept alive.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(args.in_flight).unwrap_or(usize::MAX))
        .build()?;
    let name = format!("tidings-http-publish in_flight={}", args.in_flight);
    let calls = CallLoop {
        name: &name,
        latency_name: "tidings-http-publish request->answer",
        progress: "http publish",
        count: args.count,
        size: args.size,
        in_flight: args.in_flight,
        server_pid: args.common.server_pid,
    };
    calls
        .run(|_| {
            let request = http.post(&url).body(body.clone()).send();
            async move {
                let response = request.await?;
                let status = response.status();
                let answer = response.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "the broker answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
                Ok(())
            }
        })
        .await
}
