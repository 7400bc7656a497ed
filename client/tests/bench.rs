//! `tidings bench` keeps working: each workload runs on a tiny count
//! against a real broker and prints its figures in the agreed format.
//! Nothing here judges a duration; the figures only have to be there.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::Broker;

/// The `RESULT` line of `stdout`, checked against the agreed format, with
/// its message count.
fn result_msgs(stdout: &str) -> anyhow::Result<u64> {
    named_result_msgs(stdout, "")
}

/// Like [`result_msgs`], for the `RESULT` line whose name contains `name`.
fn named_result_msgs(stdout: &str, name: &str) -> anyhow::Result<u64> {
    let line = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .find(|l| l.split_once(':').is_some_and(|(n, _)| n.contains(name)))
        .ok_or_else(|| anyhow::anyhow!("no RESULT line naming {name:?} in {stdout:?}"))?;
    for field in ["msgs=", "size=", "elapsed=", "rate=", " msg/s  ", " MB/s"] {
        anyhow::ensure!(line.contains(field), "{line:?} lacks {field:?}");
    }
    let msgs = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("msgs="))
        .ok_or_else(|| anyhow::anyhow!("no msgs= in {line:?}"))?;
    Ok(msgs.parse()?)
}

fn has_latency_line(stdout: &str) -> bool {
    stdout.lines().any(|l| {
        l.starts_with("LATENCY ")
            && [
                "(us): n=", "p50=", "p90=", "p99=", "p99.9=", "max=", "mean=",
            ]
            .iter()
            .all(|f| l.contains(f))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bench_workload_runs_and_reports() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let publish = broker
        .tidings(&[
            "bench",
            "publish",
            "--count",
            "300",
            "--size",
            "16",
            "--batch",
            "7",
            "--in-flight",
            "4",
            "--publishers",
            "2",
        ])
        .await?
        .ok()?;
    assert_eq!(result_msgs(&publish.stdout)?, 300);
    assert!(has_latency_line(&publish.stdout), "{}", publish.stdout);

    let consume = broker
        .tidings(&["bench", "consume", "--count", "200", "--streams", "2"])
        .await?
        .ok()?;
    assert_eq!(result_msgs(&consume.stdout)?, 200);

    let e2e = broker
        .tidings(&[
            "bench", "e2e", "--rate", "2000", "--count", "100", "--size", "32",
        ])
        .await?
        .ok()?;
    assert_eq!(result_msgs(&e2e.stdout)?, 100);
    assert!(has_latency_line(&e2e.stdout), "{}", e2e.stdout);
    let unbatched = broker
        .tidings(&[
            "bench",
            "e2e",
            "--rate",
            "2000",
            "--count",
            "100",
            "--size",
            "32",
            "--unbatched",
        ])
        .await?
        .ok()?;
    assert_eq!(result_msgs(&unbatched.stdout)?, 100);
    assert!(
        unbatched.stdout.contains("publish=unbatched"),
        "{}",
        unbatched.stdout
    );

    let fanout = broker
        .tidings(&["bench", "fanout", "--subscriptions", "3", "--count", "50"])
        .await?
        .ok()?;
    assert_eq!(result_msgs(&fanout.stdout)?, 150);

    // Every message published above is stored: 300 + 200 + 100 + 100 + 50.
    let topic = broker
        .tidings(&["topics", "describe", "bench", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(topic["next_offset"], 750);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_consume_delivers_every_message_in_key_order() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    // The bench itself fails when a key's offsets go back.
    let ordered = broker
        .tidings(&[
            "bench",
            "consume",
            "--count",
            "300",
            "--size",
            "16",
            "--streams",
            "3",
            "--ordered-keys",
            "7",
            "--ack-flush-interval",
            "1ms",
        ])
        .await?
        .ok()?;
    assert_eq!(
        named_result_msgs(&ordered.stdout, "streams=3 ordered-keys=7")?,
        300
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_keys_are_left_out_of_the_healthy_count() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    // Keys k0 and k1 of 10 are poison: 2 × 30 of 300 messages. The bench
    // checks that exactly those are left unacknowledged.
    let poison = broker
        .tidings(&[
            "bench",
            "consume",
            "--count",
            "300",
            "--size",
            "16",
            "--streams",
            "2",
            "--ordered-keys",
            "10",
            "--poison-keys",
            "2",
            "--min-backoff",
            "10ms",
            "--max-backoff",
            "50ms",
        ])
        .await?
        .ok()?;
    assert_eq!(
        named_result_msgs(&poison.stdout, "poison-keys=2 healthy")?,
        240
    );

    let all_poison = broker
        .tidings(&[
            "bench",
            "consume",
            "--count",
            "10",
            "--ordered-keys",
            "2",
            "--poison-keys",
            "2",
        ])
        .await?;
    assert!(
        all_poison.failure_line()?.contains("healthy key"),
        "{all_poison:?}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_consume_delivers_only_matching_messages_and_scans_all() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let filtered = broker
        .tidings(&[
            "bench",
            "consume",
            "--count",
            "400",
            "--size",
            "16",
            "--streams",
            "2",
            "--filter",
            r#"attributes.pick = "yes""#,
            "--match-percent",
            "25",
        ])
        .await?
        .ok()?;
    assert_eq!(
        named_result_msgs(&filtered.stdout, "filter=25% delivered")?,
        100
    );
    assert_eq!(
        named_result_msgs(&filtered.stdout, "filter=25% scanned")?,
        400
    );

    // The other side of the attribute: the rest of the backlog.
    let inverse = broker
        .tidings(&[
            "bench",
            "consume",
            "--count",
            "400",
            "--size",
            "16",
            "--filter",
            r#"attributes.pick != "yes""#,
            "--match-percent",
            "25",
        ])
        .await?
        .ok()?;
    assert_eq!(named_result_msgs(&inverse.stdout, "delivered")?, 300);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_and_call_workloads_run_and_report() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let commit = broker
        .tidings(&[
            "bench",
            "commit",
            "--count",
            "120",
            "--size",
            "16",
            "--in-flight",
            "8",
        ])
        .await?
        .ok()?;
    assert_eq!(named_result_msgs(&commit.stdout, "tidings-commit")?, 120);
    assert!(has_latency_line(&commit.stdout), "{}", commit.stdout);
    // Every commit published its output and acknowledged its input.
    let output = broker
        .tidings(&["topics", "describe", "bench.out", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(output["next_offset"], 120);

    let call = broker
        .tidings(&[
            "bench",
            "call",
            "--topic",
            "questions",
            "--count",
            "40",
            "--in-flight",
            "4",
        ])
        .await?
        .ok()?;
    assert_eq!(named_result_msgs(&call.stdout, "tidings-call")?, 40);
    assert!(has_latency_line(&call.stdout), "{}", call.stdout);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn http_publish_and_push_workloads_run_and_report() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let http_url = broker.http_url();
    let published = broker
        .tidings(&[
            "bench",
            "http-publish",
            "--http",
            &http_url,
            "--topic",
            "web",
            "--count",
            "60",
            "--size",
            "16",
            "--in-flight",
            "4",
        ])
        .await?
        .ok()?;
    assert_eq!(
        named_result_msgs(&published.stdout, "tidings-http-publish")?,
        60
    );
    assert!(has_latency_line(&published.stdout), "{}", published.stdout);
    let web = broker
        .tidings(&["topics", "describe", "web", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        web["next_offset"], 60,
        "one message per request, all stored"
    );

    let pushed = broker
        .tidings(&[
            "bench",
            "push",
            "--topic",
            "pushed",
            "--count",
            "50",
            "--size",
            "16",
            "--max-outstanding",
            "8",
        ])
        .await?
        .ok()?;
    assert_eq!(named_result_msgs(&pushed.stdout, "tidings-push")?, 50);
    // The run cleans up its push subscription.
    let subs = broker
        .tidings(&["subs", "ls", "--topic", "pushed", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(subs, serde_json::json!([]));
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_and_e2e_run_on_streams_and_from_several_publishers() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let streamed = broker
        .tidings(&[
            "bench",
            "publish",
            "--topic",
            "streamed",
            "--count",
            "200",
            "--size",
            "16",
            "--in-flight",
            "5",
            "--publishers",
            "2",
            "--stream",
        ])
        .await?
        .ok()?;
    assert_eq!(
        named_result_msgs(&streamed.stdout, "publishers=2 rpc=stream")?,
        200
    );
    assert!(has_latency_line(&streamed.stdout), "{}", streamed.stdout);

    for extra in [
        &["--stream"][..],
        &["--publishers", "3"],
        &["--publishers", "3", "--stream"],
    ] {
        let mut args = vec![
            "bench", "e2e", "--topic", "streamed", "--rate", "2000", "--count", "90", "--size",
            "16",
        ];
        args.extend(extra);
        let e2e = broker.tidings(&args).await?.ok()?;
        assert_eq!(result_msgs(&e2e.stdout)?, 90, "{extra:?}");
        assert!(has_latency_line(&e2e.stdout), "{}", e2e.stdout);
        let label = match extra {
            ["--stream"] => "publish=batched rpc=stream",
            ["--publishers", "3"] => "publish=unbatched publishers=3:",
            _ => "publish=unbatched publishers=3 rpc=stream",
        };
        assert!(e2e.stdout.contains(label), "{label:?} in {}", e2e.stdout);
    }
    let topic = broker
        .tidings(&["topics", "describe", "streamed", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        topic["next_offset"],
        200 + 3 * 90,
        "every message stored once"
    );

    let refused = broker
        .tidings(&["bench", "publish", "--in-flight", "2", "--publishers", "3"])
        .await?;
    let line = refused.failure_line()?;
    assert!(line.contains("--publishers 3"), "{line}");
    broker.stop().await
}
