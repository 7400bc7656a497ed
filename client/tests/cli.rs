//! The `tidings` command-line tool, run as a person would: the real
//! binary against a real broker started in-process, with input piped in
//! and output parsed back.

mod common;
mod stand_in;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail};
use common::{Broker, Output, next_line, strings, tidings, tidings_env};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdout};

/// Creates `topic` through the CLI.
async fn create_topic(broker: &Broker, topic: &str) -> anyhow::Result<()> {
    broker.tidings(&["topics", "create", topic]).await?.ok()?;
    Ok(())
}

/// Parses each line of `stdout` as a JSON object.
fn json_lines(stdout: &str) -> anyhow::Result<Vec<Value>> {
    Ok(stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// `subs describe NAME --json`.
async fn describe_subscription(broker: &Broker, name: &str) -> anyhow::Result<Value> {
    broker
        .tidings(&["subs", "describe", name, "--json"])
        .await?
        .ok()?
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_lines_are_published_and_read_back_as_jsonl() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;

    let published = broker
        .tidings_with_stdin(
            &[
                "pub",
                "orders",
                "--key",
                "order-7",
                "--attr",
                "region=eu",
                "--attr",
                "kind=test",
            ],
            b"alpha\nbeta\ngamma\n",
        )
        .await?
        .ok()?;
    assert_eq!(published.lines(), ["0", "1", "2"]);

    let received = broker
        .tidings(&[
            "sub", "billing", "--topic", "orders", "--count", "3", "--format", "jsonl",
        ])
        .await?
        .ok()?;
    let messages = json_lines(&received.stdout)?;
    assert_eq!(messages.len(), 3, "{}", received.stdout);
    for (i, (message, payload)) in messages.iter().zip(["alpha", "beta", "gamma"]).enumerate() {
        assert_eq!(message["offset"], i);
        assert_eq!(message["payload"], payload);
        assert_eq!(message["key"], "order-7");
        assert_eq!(message["attributes"]["region"], "eu");
        assert_eq!(message["attributes"]["kind"], "test");
        assert_eq!(message["delivery_attempt"], 1);
        let time = message["publish_time"].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{message}");
    }

    // Every printed message was acknowledged before the command exited.
    let sub = describe_subscription(&broker, "billing").await?;
    assert_eq!(sub["topic"], "orders");
    assert_eq!(sub["backlog"], 0, "{sub}");
    assert_eq!(sub["ack_floor"], 3, "{sub}");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn message_arguments_are_published_and_json_lists_offsets() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "events").await?;
    broker.tidings(&["pub", "events", "first"]).await?.ok()?;
    let published = broker
        .tidings(&["pub", "events", "second", "third", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        published,
        serde_json::json!({
            "topic": "events",
            "offsets": [1, 2],
            "duplicates": [false, false],
        })
    );

    let raw = broker
        .tidings(&["sub", "reader", "--topic", "events", "-n", "3"])
        .await?
        .ok()?;
    assert_eq!(raw.stdout, "first\nsecond\nthird\n");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn pub_with_an_id_stores_a_repeat_once() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    broker
        .tidings(&["topics", "create", "payments", "--dedup-window", "10m"])
        .await?
        .ok()?;
    let first = broker
        .tidings(&["pub", "payments", "--id", "pay-1", "charge"])
        .await?
        .ok()?;
    assert_eq!(first.stdout, "0\n");
    let again = broker
        .tidings(&["pub", "payments", "--id", "pay-1", "charge"])
        .await?
        .ok()?;
    assert_eq!(again.stdout, "0 duplicate\n", "the repeat is not stored");
    // Lines get ID-1, ID-2, …: running the same pipe again stores nothing.
    let lines = broker
        .tidings_with_stdin(&["pub", "payments", "--id", "batch"], b"a\nb\n")
        .await?
        .ok()?;
    assert_eq!(lines.stdout, "1\n2\n");
    let rerun = broker
        .tidings_with_stdin(&["pub", "payments", "--id", "batch", "--json"], b"a\nb\n")
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        rerun,
        serde_json::json!({
            "topic": "payments",
            "offsets": [1, 2],
            "duplicates": [true, true],
        })
    );
    let topic = broker
        .tidings(&["topics", "describe", "payments", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(topic["next_offset"], 3, "{topic}");
    assert_eq!(topic["dedup_window_seconds"], 600.0, "{topic}");
    let read = broker
        .tidings(&[
            "sub", "reader", "--topic", "payments", "-n", "3", "--format", "jsonl",
        ])
        .await?
        .ok()?;
    let ids: Vec<Value> = json_lines(&read.stdout)?
        .into_iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, ["pay-1", "batch-1", "batch-2"]);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn pub_delay_and_a_delivery_delay_hold_messages_back() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "reminders").await?;
    broker
        .tidings(&[
            "subs",
            "create",
            "slow",
            "--topic",
            "reminders",
            "--delivery-delay",
            "1h",
        ])
        .await?
        .ok()?;
    broker
        .tidings(&["subs", "create", "mailer", "--topic", "reminders"])
        .await?
        .ok()?;
    let published = broker
        .tidings(&["pub", "reminders", "--delay", "1h", "in an hour"])
        .await?
        .ok()?;
    assert_eq!(published.stdout, "0\n");
    let slow = describe_subscription(&broker, "slow").await?;
    assert_eq!(slow["delivery_delay_seconds"], 3600.0, "{slow}");
    let mailer = describe_subscription(&broker, "mailer").await?;
    assert_eq!(mailer["delayed"], 1, "{mailer}");
    assert_eq!(mailer["backlog"], 1, "{mailer}");
    let refused = broker
        .tidings(&["pub", "reminders", "--delay", "31d", "too late"])
        .await?;
    assert!(!refused.status.success(), "{refused:?}");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_ack_leaves_the_messages_for_the_next_subscriber() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "jobs").await?;
    broker
        .tidings_with_stdin(&["pub", "jobs"], b"j0\nj1\nj2\n")
        .await?
        .ok()?;

    let peeked = broker
        .tidings(&[
            "sub", "workers", "--topic", "jobs", "--count", "2", "--no-ack",
        ])
        .await?
        .ok()?;
    assert_eq!(peeked.stdout, "j0\nj1\n");
    let sub = describe_subscription(&broker, "workers").await?;
    assert_eq!(sub["backlog"], 3, "nothing was acknowledged: {sub}");
    assert_eq!(sub["ack_floor"], 0, "{sub}");

    // The peeked messages come again, as second attempts.
    let taken = broker
        .tidings(&["sub", "workers", "--count", "3", "--json"])
        .await?
        .ok()?;
    let messages = json_lines(&taken.stdout)?;
    let mut seen: Vec<(u64, u64)> = messages
        .iter()
        .map(|m| {
            let offset = m["offset"].as_u64().unwrap_or(u64::MAX);
            (offset, m["delivery_attempt"].as_u64().unwrap_or(0))
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [(0, 2), (1, 2), (2, 1)], "{}", taken.stdout);
    assert_eq!(
        describe_subscription(&broker, "workers").await?["backlog"],
        0
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_payloads_are_base64_in_json() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "blobs").await?;
    broker
        .tidings_with_stdin(&["pub", "blobs"], b"\xff\xfe\x00\nplain\n")
        .await?
        .ok()?;
    let received = broker
        .tidings(&[
            "sub", "s", "--topic", "blobs", "--count", "2", "--format", "json",
        ])
        .await?
        .ok()?;
    // Pretty-printed objects, one after the other.
    let messages: Vec<Value> = serde_json::Deserializer::from_str(&received.stdout)
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(messages.len(), 2, "{}", received.stdout);
    assert_eq!(messages[0]["payload_base64"], "//4A");
    assert!(messages[0].get("payload").is_none());
    assert_eq!(messages[1]["payload"], "plain");
    assert!(received.stdout.contains("\n  \"offset\": 0"), "not pretty");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_and_subscriptions_are_managed_in_json() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let created = broker
        .tidings(&["topics", "create", "orders", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(created["name"], "orders");
    assert_eq!(created["next_offset"], 0);
    assert!(created["create_time"].is_string(), "{created}");
    create_topic(&broker, "audit").await?;
    broker.tidings(&["pub", "orders", "a", "b"]).await?.ok()?;

    let listed = broker
        .tidings(&["topics", "ls", "--json"])
        .await?
        .ok()?
        .json()?;
    let names: Vec<&str> = listed
        .as_array()
        .map(|topics| topics.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["audit", "orders"]);
    let described = broker
        .tidings(&["topics", "describe", "orders", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(described["next_offset"], 2);

    let sub = broker
        .tidings(&[
            "subs",
            "create",
            "billing",
            "--topic",
            "orders",
            "--ack-deadline",
            "1m",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(sub["ack_deadline_seconds"], 60);
    assert_eq!(sub["backlog"], 2, "starts at the earliest message: {sub}");
    let late = broker
        .tidings(&[
            "subs", "create", "late", "--topic", "orders", "--start", "latest", "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(late["backlog"], 0, "{late}");
    let from_one = broker
        .tidings(&[
            "subs", "create", "from-one", "--topic", "orders", "--start", "1", "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(from_one["backlog"], 1, "{from_one}");
    broker
        .tidings(&["subs", "create", "other", "--topic", "audit"])
        .await?
        .ok()?;

    let of_orders = broker
        .tidings(&["subs", "ls", "--topic", "orders", "--json"])
        .await?
        .ok()?
        .json()?;
    let names: Vec<&str> = of_orders
        .as_array()
        .map(|subs| subs.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["billing", "from-one", "late"]);

    let deleted = broker
        .tidings(&["subs", "delete", "late", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        deleted,
        serde_json::json!({ "name": "late", "deleted": true })
    );
    broker
        .tidings(&["subs", "describe", "late"])
        .await?
        .failure_line()?;
    broker
        .tidings(&["topics", "delete", "orders"])
        .await?
        .ok()?;
    let listed = broker
        .tidings(&["topics", "ls", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let all = broker
        .tidings(&["subs", "ls", "--json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "went with the topic: {all}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn people_get_tables_and_lines() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let empty = broker.tidings(&["topics", "ls"]).await?.ok()?;
    assert_eq!(empty.stdout, "no topics\n");
    let created = broker
        .tidings(&["topics", "create", "orders"])
        .await?
        .ok()?;
    assert_eq!(created.stdout, "created topic \"orders\"\n");
    broker.tidings(&["pub", "orders", "x"]).await?.ok()?;
    broker
        .tidings(&["subs", "create", "billing", "--topic", "orders"])
        .await?
        .ok()?;

    let topics = broker.tidings(&["topics", "ls"]).await?.ok()?;
    let lines = topics.lines();
    assert!(
        lines[0].starts_with("NAME    STORAGE  NEXT OFFSET  CREATED"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("orders  disk     1            "),
        "{lines:?}"
    );
    let subs = broker.tidings(&["subs", "ls"]).await?.ok()?;
    assert!(subs.stdout.contains("BACKLOG"), "{}", subs.stdout);
    assert!(subs.stdout.contains("billing  orders"), "{}", subs.stdout);
    let described = broker
        .tidings(&["subs", "describe", "billing"])
        .await?
        .ok()?;
    assert!(
        described.stdout.contains("backlog:      1\n"),
        "{}",
        described.stdout
    );
    assert!(
        described.stdout.contains("ack deadline: 30s\n"),
        "{}",
        described.stdout
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_at_every_spelling_of_the_address() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let human = broker.tidings(&["health"]).await?.ok()?;
    assert_eq!(
        human.stdout,
        format!("the broker at {} is serving\n", broker.url())
    );
    // host:port without a scheme, from the environment.
    let addr = broker.addr().to_string();
    let json = tidings_env(
        &strings(&["health", "--json"]),
        None,
        &[("TIDINGS_SERVER", &addr)],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(json["serving"], true);
    assert_eq!(json["server"], broker.url());
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topic_fails_with_one_line_naming_it() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let published = broker.tidings(&["pub", "nosuch", "hello"]).await?;
    let line = published.failure_line()?;
    assert!(line.contains("\"nosuch\" does not exist"), "{line}");
    assert_eq!(published.stdout, "", "no offset for a failed publish");

    for args in [
        &["topics", "describe", "nosuch"][..],
        &["sub", "s", "--topic", "nosuch", "--count", "1"],
        &["subs", "create", "s", "--topic", "nosuch"],
    ] {
        let output = broker.tidings(args).await?;
        let line = output.failure_line()?;
        assert!(line.contains("nosuch"), "{args:?}: {line}");
    }
    let missing_sub = broker.tidings(&["sub", "ghost", "--count", "1"]).await?;
    assert!(missing_sub.failure_line()?.contains("ghost"));
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_fails_with_a_line_naming_it() -> anyhow::Result<()> {
    // A port that is bound but not listening: connections to it are
    // refused, and no other process can take it while the test runs.
    let holder = tokio::net::TcpSocket::new_v4()?;
    holder.bind("127.0.0.1:0".parse()?)?;
    let addr = holder.local_addr()?.to_string();
    for command in [&["topics", "ls"][..], &["pub", "t", "m"], &["health"]] {
        let mut args = strings(&["--server", &addr]);
        args.extend(strings(command));
        let output = tidings(&args, None).await?;
        let line = output.failure_line()?;
        assert!(line.contains("cannot connect"), "{line}");
        assert!(line.contains(&format!("http://{addr}")), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_refusal_exits_1_with_one_line() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    create_topic(&broker, "audit").await?;
    broker
        .tidings(&["subs", "create", "billing", "--topic", "orders"])
        .await?
        .ok()?;
    for (args, names) in [
        // INVALID_ARGUMENT
        (&["topics", "create", "no spaces"][..], "no spaces"),
        // ALREADY_EXISTS, on the same topic and on another
        (&["topics", "create", "orders"], "orders"),
        (
            &["subs", "create", "billing", "--topic", "audit"],
            "billing",
        ),
        // FAILED_PRECONDITION: the subscription belongs to another topic
        (
            &["sub", "billing", "--topic", "audit", "--count", "1"],
            "audit",
        ),
        // NOT_FOUND
        (&["subs", "describe", "ghost"], "ghost"),
    ] {
        let output = broker.tidings(args).await?;
        let line = output.failure_line()?;
        assert!(line.contains(names), "{args:?}: {line}");
        assert_eq!(output.stdout, "", "{args:?}");
    }
    let billing = describe_subscription(&broker, "billing").await?;
    assert_eq!(billing["topic"], "orders", "{billing}");
    broker.stop().await
}

/// Publishes each payload with its own `tidings pub`, so that each has a
/// publish time of its own.
async fn publish_one_by_one(broker: &Broker, topic: &str, payloads: &[&str]) -> anyhow::Result<()> {
    for payload in payloads {
        broker.tidings(&["pub", topic, payload]).await?.ok()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_creates_its_subscription_at_start_with_its_ack_deadline() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    publish_one_by_one(&broker, "orders", &["a0", "a1", "a2", "a3", "a4"]).await?;

    // At an offset, with a deadline.
    let from_two = broker
        .tidings(&[
            "sub",
            "from-two",
            "--topic",
            "orders",
            "--start",
            "2",
            "--ack-deadline",
            "45s",
            "--count",
            "2",
        ])
        .await?
        .ok()?;
    assert_eq!(from_two.stdout, "a2\na3\n");
    let sub = describe_subscription(&broker, "from-two").await?;
    assert_eq!(sub["ack_deadline_seconds"], 45, "{sub}");
    assert_eq!(
        (&sub["ack_floor"], &sub["backlog"]),
        (&4.into(), &1.into()),
        "{sub}"
    );

    // At a time: the publish time of a3.
    let peeked = broker
        .tidings(&[
            "sub", "peek", "--topic", "orders", "--count", "5", "--no-ack", "--json",
        ])
        .await?
        .ok()?;
    let messages = json_lines(&peeked.stdout)?;
    let time = messages[3]["publish_time"].as_str().unwrap_or_default();
    assert_eq!(messages[3]["payload"], "a3", "{}", peeked.stdout);
    let since = broker
        .tidings(&[
            "sub", "since", "--topic", "orders", "--start", time, "--count", "1",
        ])
        .await?
        .ok()?;
    assert_eq!(since.stdout, "a3\n");
    let sub = describe_subscription(&broker, "since").await?;
    assert_eq!(sub["ack_deadline_seconds"], 30, "the default: {sub}");
    assert_eq!(
        (&sub["ack_floor"], &sub["backlog"]),
        (&4.into(), &1.into()),
        "{sub}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_at_latest_skips_what_was_published_before() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "ticks").await?;
    publish_one_by_one(&broker, "ticks", &["old0", "old1", "old2"]).await?;
    let mut child = broker.spawn_tidings(&[
        "sub", "tail", "--topic", "ticks", "--start", "latest", "--count", "1", "--json",
    ])?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut stdout = BufReader::new(stdout);
    let mut first_line = tokio::spawn(async move { next_line(&mut stdout).await });

    // When `sub` has made the subscription is not visible from here: keep
    // publishing until it prints the first message it gets.
    let client = tidings_client::Client::connect(broker.url()).await?;
    let publisher = client.publisher("ticks");
    let mut published = 0_u32;
    let line = loop {
        tokio::select! {
            line = &mut first_line => break line??,
            offset = publisher.publish(format!("new{published}")) => {
                offset?;
                published += 1;
            }
        }
    };
    let message: Value = serde_json::from_str(&line)?;
    let offset = message["offset"].as_u64().unwrap_or_default();
    assert!(offset >= 3, "an earlier message came: {line}");
    assert_eq!(message["payload"], format!("new{}", offset - 3), "{line}");
    let status = tokio::time::timeout(common::RUN_TIMEOUT, child.wait()).await??;
    assert!(status.success(), "{status}");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_max_outstanding_bounds_what_the_broker_leases_to_it() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "jobs").await?;
    let jobs: Vec<String> = (0..20).map(|i| format!("j{i}\n")).collect();
    broker
        .tidings_with_stdin(&["pub", "jobs"], jobs.concat().as_bytes())
        .await?
        .ok()?;
    // Holding every message it prints (--no-ack), it can take no more
    // than 3.
    let mut child = broker.spawn_tidings(&[
        "sub",
        "workers",
        "--topic",
        "jobs",
        "--no-ack",
        "--max-outstanding",
        "3",
    ])?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut stdout = BufReader::new(stdout);
    for job in &jobs[..3] {
        assert_eq!(&next_line(&mut stdout).await?, job);
    }
    let sub = describe_subscription(&broker, "workers").await?;
    assert_eq!(
        (&sub["in_flight"], &sub["open_streams"]),
        (&3.into(), &1.into()),
        "{sub}"
    );

    // Every other message is left for another subscriber, as first
    // deliveries.
    let rest = broker
        .tidings(&["sub", "workers", "--count", "17", "--no-ack", "--json"])
        .await?
        .ok()?;
    let rest = json_lines(&rest.stdout)?;
    let offsets: Vec<u64> = rest.iter().filter_map(|m| m["offset"].as_u64()).collect();
    assert_eq!(offsets, (3..20).collect::<Vec<_>>());
    assert!(rest.iter().all(|m| m["delivery_attempt"] == 1), "{rest:?}");

    // Stopped, the first printed nothing beyond its three.
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    assert!(signalled.success());
    let status = tokio::time::timeout(common::RUN_TIMEOUT, child.wait()).await??;
    assert!(status.success(), "{status}");
    let mut more = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut more).await?;
    assert_eq!(more, "", "printed beyond --max-outstanding");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_sub_after_acknowledging_what_it_printed() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "ticks").await?;
    broker.tidings(&["pub", "ticks", "t0", "t1"]).await?.ok()?;
    let mut child = broker.spawn_tidings(&["sub", "watch", "--topic", "ticks"])?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut stdout = BufReader::new(stdout);
    assert_eq!(next_line(&mut stdout).await?, "t0\n");
    assert_eq!(next_line(&mut stdout).await?, "t1\n");

    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    assert!(signalled.success());
    let status = tokio::time::timeout(common::RUN_TIMEOUT, child.wait()).await??;
    assert!(status.success(), "{status}");
    assert_eq!(describe_subscription(&broker, "watch").await?["backlog"], 0);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn help_documents_commands_flags_and_examples() -> anyhow::Result<()> {
    let top = tidings(&strings(&["--help"]), None).await?.ok()?;
    for text in [
        "pub",
        "sub",
        "peek",
        "topics",
        "subs",
        "health",
        "--server",
        "--json",
        "TIDINGS_SERVER",
        "Examples:",
    ] {
        assert!(
            top.stdout.contains(text),
            "--help lacks {text}:\n{}",
            top.stdout
        );
    }
    let sub = tidings(&strings(&["sub", "--help"]), None).await?.ok()?;
    for text in [
        "--topic",
        "--count",
        "--no-ack",
        "--format",
        "jsonl",
        "--start",
        "--max-outstanding",
        "--timeout",
        "--exit-at-end",
        "Ctrl-C",
        "130",
    ] {
        assert!(
            sub.stdout.contains(text),
            "sub --help lacks {text}:\n{}",
            sub.stdout
        );
    }
    let publish = tidings(&strings(&["pub", "--help"]), None).await?.ok()?;
    for text in [
        "--key",
        "--attr",
        "NAME=VALUE",
        "standard input",
        "--file",
        "order",
    ] {
        assert!(
            publish.stdout.contains(text),
            "pub --help lacks {text}:\n{}",
            publish.stdout
        );
    }
    let peek = tidings(&strings(&["peek", "--help"]), None).await?.ok()?;
    for text in ["--from", "--count", "--format", "jsonl", "acknowledged"] {
        assert!(
            peek.stdout.contains(text),
            "peek --help lacks {text}:\n{}",
            peek.stdout
        );
    }
    Ok(())
}

/// Every payload of `topic` in offset order, read through the library.
async fn stored_payloads(broker: &Broker, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let client = tidings_client::Client::connect(broker.url()).await?;
    let mut payloads = Vec::new();
    let mut offset = 0;
    loop {
        let read = client.read_topic(topic, offset, 1000).await?;
        payloads.extend(read.messages.iter().map(|m| m.payload.to_vec()));
        if read.is_at_end() || read.messages.is_empty() {
            return Ok(payloads);
        }
        offset = read.next_offset;
    }
}

/// The standard output of a spawned `tidings`, to read line by line.
fn stdout_of(child: &mut Child) -> anyhow::Result<BufReader<ChildStdout>> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    Ok(BufReader::new(stdout))
}

/// Sends SIGINT, as Ctrl-C does, to a spawned `tidings`.
fn interrupt(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().ok_or_else(|| anyhow!("no pid"))?;
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(signalled.success(), "kill -INT {pid} failed");
    Ok(())
}

/// Waits for a spawned `tidings` to exit, under the run timeout, reading
/// the rest of its output.
async fn finish(mut child: Child, mut stdout: BufReader<ChildStdout>) -> anyhow::Result<Output> {
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (mut out, mut err) = (String::new(), String::new());
    let run = async {
        tokio::try_join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        )?;
        child.wait().await
    };
    let status = tokio::time::timeout(common::RUN_TIMEOUT, run)
        .await
        .map_err(|_| anyhow!("tidings did not finish within {:?}", common::RUN_TIMEOUT))??;
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Checks that a `--json` run failed as the README says: exit status 1
/// and one JSON object on standard error; returns it.
fn json_failure(output: &Output) -> anyhow::Result<Value> {
    if output.status.code() != Some(1) {
        bail!(
            "expected exit status 1, got {}: {:?}",
            output.status,
            output.stderr
        );
    }
    let lines: Vec<&str> = output.stderr.lines().collect();
    let [line] = lines.as_slice() else {
        bail!("expected one line on stderr, got {:?}", output.stderr);
    };
    Ok(serde_json::from_str(line)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_tidings_command_that_helps() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let missing = broker.tidings(&["topics", "describe", "invoices"]).await?;
    assert_eq!(
        missing.failure_line()?,
        "tidings: topic \"invoices\" does not exist; create it with `tidings topics create invoices`"
    );
    create_topic(&broker, "orders").await?;
    create_topic(&broker, "audit").await?;
    broker
        .tidings(&["subs", "create", "billing", "--topic", "orders"])
        .await?
        .ok()?;
    for (args, advice) in [
        (
            &["sub", "ghost", "--count", "1"][..],
            "`tidings subs create ghost --topic TOPIC`",
        ),
        (
            &["sub", "billing", "--topic", "audit", "--count", "1"],
            "use another subscription name, or leave out --topic",
        ),
        (
            &["topics", "create", "orders"],
            "see it with `tidings topics describe orders`",
        ),
        (
            &["pub", "invoices", "x"],
            "create it with `tidings topics create invoices`",
        ),
    ] {
        let output = broker.tidings(args).await?;
        let line = output.failure_line()?;
        assert!(line.contains(advice), "{args:?}: {line}");
        assert!(!line.contains("Service."), "names an RPC: {line}");
    }
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn json_errors_are_one_object_with_code_and_message() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let output = broker.tidings(&["pub", "invoices", "x", "--json"]).await?;
    let error = json_failure(&output)?;
    assert_eq!(error["code"], "NOT_FOUND", "{error}");
    assert_eq!(
        error["message"],
        "topic \"invoices\" does not exist; create it with `tidings topics create invoices`"
    );
    assert_eq!(output.json()?["offsets"], serde_json::json!([]));

    // Unreachable: a port bound but not listening.
    let holder = tokio::net::TcpSocket::new_v4()?;
    holder.bind("127.0.0.1:0".parse()?)?;
    let addr = holder.local_addr()?.to_string();
    let down = tidings(
        &strings(&["--server", &addr, "topics", "ls", "--json"]),
        None,
    )
    .await?;
    let error = json_failure(&down)?;
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&addr),
        "{error}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_lines_are_stored_in_input_order() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "log").await?;
    let lines: Vec<String> = (1..=20_000).map(|i| i.to_string()).collect();
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let published = broker
        .tidings_with_stdin(&["pub", "log"], input.as_bytes())
        .await?
        .ok()?;
    let offsets: Vec<String> = (0..20_000).map(|offset: u32| offset.to_string()).collect();
    assert!(published.lines() == offsets, "offsets out of order");

    let stored = stored_payloads(&broker, "log").await?;
    let misplaced = stored
        .iter()
        .zip(&lines)
        .position(|(payload, line)| payload != line.as_bytes());
    if let Some(offset) = misplaced {
        bail!(
            "offset {offset} holds line {}, not line {}",
            String::from_utf8_lossy(&stored[offset]),
            lines[offset]
        );
    }
    assert_eq!(stored.len(), lines.len());
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn crlf_line_endings_are_not_part_of_the_messages() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "dos").await?;
    broker
        .tidings_with_stdin(&["pub", "dos"], b"one\r\ntwo\r\n\r\nthree")
        .await?
        .ok()?;
    let stored = stored_payloads(&broker, "dos").await?;
    assert_eq!(stored, [&b"one"[..], b"two", b"", b"three"]);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_file_is_published_as_one_message() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "blobs").await?;
    let blob: &[u8] = b"line 1\r\nline 2\n\xff\x00 binary\n\n";
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, blob)?;
    let path = path.to_str().ok_or_else(|| anyhow!("not UTF-8"))?;

    let from_file = broker
        .tidings(&["pub", "blobs", "--file", path, "--key", "k"])
        .await?
        .ok()?;
    assert_eq!(from_file.stdout, "0\n");
    let from_stdin = broker
        .tidings_with_stdin(&["pub", "blobs", "--file", "-"], blob)
        .await?
        .ok()?;
    assert_eq!(from_stdin.stdout, "1\n");
    assert_eq!(stored_payloads(&broker, "blobs").await?, [blob, blob]);

    let missing = broker
        .tidings(&["pub", "blobs", "--file", "/no/such/file"])
        .await?;
    assert!(missing.failure_line()?.contains("/no/such/file"));
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_dies_mid_pub_is_reported_with_what_was_stored() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "feed").await?;
    let addr = broker.addr();
    let mut child = broker.spawn_tidings_fed(&["pub", "feed"])?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let mut stdout = stdout_of(&mut child)?;
    let first: String = (1..=1200).map(|i| format!("line {i}\n")).collect();
    stdin.write_all(first.as_bytes()).await?;
    stdin.flush().await?;
    for offset in 0..1200 {
        assert_eq!(next_line(&mut stdout).await?, format!("{offset}\n"));
    }

    broker.stop().await?;
    // Hold the port (bound, not listening): connections to it are refused,
    // and no other test's broker can take it.
    let holder = tokio::net::TcpSocket::new_v4()?;
    holder.set_reuseaddr(true)?;
    let _held = holder.bind(addr);
    let rest: String = (1201..=2000).map(|i| format!("line {i}\n")).collect();
    stdin.write_all(rest.as_bytes()).await?;
    drop(stdin);

    let output = finish(child, stdout).await?;
    let line = output.failure_line()?;
    assert!(
        line.starts_with("tidings: stored 1200 of 2000 messages, then the broker went away: "),
        "{line}"
    );
    assert!(line.contains(&addr.to_string()), "{line}");
    assert_eq!(output.stdout, "", "no offsets after the broker went away");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_stops_pub_and_is_numbered_as_in_the_input() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "sized").await?;
    // The broker's default limit is 1 MiB a message.
    let too_big = "z".repeat(1_500_000);
    let input = format!("a\nb\nc\n{too_big}\nd\ne\n");
    let output = broker
        .tidings_with_stdin(&["pub", "sized"], input.as_bytes())
        .await?;
    let line = output.failure_line()?;
    assert!(
        line.starts_with("tidings: stored 3 of 6 messages, then stopped: message 4 is "),
        "{line}"
    );
    assert_eq!(output.lines(), ["0", "1", "2"]);
    assert_eq!(stored_payloads(&broker, "sized").await?, [b"a", b"b", b"c"]);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_timeout_ends_a_quiet_subscription() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "quiet").await?;
    broker.tidings(&["pub", "quiet", "a", "b"]).await?.ok()?;

    // No goal: the timeout is how it ends, a success.
    let drained = broker
        .tidings(&["sub", "tail", "--topic", "quiet", "--timeout", "2s"])
        .await?
        .ok()?;
    assert_eq!(drained.stdout, "a\nb\n");

    // Short of --count: a failure, after acknowledging what came.
    broker.tidings(&["pub", "quiet", "c"]).await?.ok()?;
    let short = broker
        .tidings(&["sub", "tail", "--count", "3", "--timeout", "2s"])
        .await?;
    assert_eq!(
        short.failure_line()?,
        "tidings: received 1 of 3 messages; none came for 2s"
    );
    assert_eq!(short.stdout, "c\n");
    assert_eq!(describe_subscription(&broker, "tail").await?["backlog"], 0);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_exit_at_end_takes_what_was_there_and_leaves_the_rest() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "jobs").await?;
    broker
        .tidings_with_stdin(&["pub", "jobs"], b"j0\nj1\nj2\nj3\nj4\n")
        .await?
        .ok()?;
    // Another consumer holds two of them.
    let mut holder = broker.spawn_tidings(&[
        "sub",
        "workers",
        "--topic",
        "jobs",
        "--no-ack",
        "--max-outstanding",
        "2",
    ])?;
    let mut held = stdout_of(&mut holder)?;
    assert_eq!(next_line(&mut held).await?, "j0\n");
    assert_eq!(next_line(&mut held).await?, "j1\n");

    // Caught up without them: the other three, then exit 0.
    let drained = broker.tidings(&["sub", "workers", "-e"]).await?.ok()?;
    assert_eq!(drained.stdout, "j2\nj3\nj4\n");
    let nothing = broker
        .tidings(&["sub", "workers", "--exit-at-end"])
        .await?
        .ok()?;
    assert_eq!(nothing.stdout, "", "nothing was left for it");

    // A subscription it creates starts caught up to the same end.
    let fresh = broker
        .tidings(&["sub", "audit", "--topic", "jobs", "-e", "--json"])
        .await?
        .ok()?;
    let offsets: Vec<u64> = json_lines(&fresh.stdout)?
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);

    interrupt(&holder)?;
    let stopped = finish(holder, held).await?;
    assert!(
        stopped.status.success(),
        "no goal, so Ctrl-C is fine: {stopped:?}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_before_count_exits_130_after_acknowledging_what_it_printed() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "ticks").await?;
    broker.tidings(&["pub", "ticks", "t0", "t1"]).await?.ok()?;
    let mut child = broker.spawn_tidings(&["sub", "watch", "--topic", "ticks", "--count", "5"])?;
    let mut stdout = stdout_of(&mut child)?;
    assert_eq!(next_line(&mut stdout).await?, "t0\n");
    assert_eq!(next_line(&mut stdout).await?, "t1\n");

    interrupt(&child)?;
    let output = finish(child, stdout).await?;
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    assert_eq!(
        output.stderr,
        "tidings: interrupted after 2 of 5 messages\n"
    );
    assert_eq!(describe_subscription(&broker, "watch").await?["backlog"], 0);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_exits_1_when_its_acknowledgements_are_refused() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "big").await?;
    let client = tidings_client::Client::connect(broker.url()).await?;
    let publisher = client.publisher("big");
    // Each larger than a pipe's buffer: `sub` blocks printing the first
    // until the test reads it, before it acknowledges anything.
    for _ in 0..2 {
        publisher.publish(vec![b'x'; 256 * 1024]).await?;
    }
    let mut child = broker.spawn_tidings(&["sub", "doomed", "--topic", "big", "--count", "2"])?;
    let stdout = stdout_of(&mut child)?;

    // Wait (polling the broker's figures) until both are leased to it.
    tokio::time::timeout(common::RUN_TIMEOUT, async {
        loop {
            match client.get_subscription("doomed").await {
                Ok(sub) if sub.in_flight == 2 => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await?;
    broker.tidings(&["subs", "delete", "doomed"]).await?.ok()?;

    let output = finish(child, stdout).await?;
    assert_eq!(output.stdout.len(), 2 * (256 * 1024 + 1), "both printed");
    let line = output.failure_line()?;
    assert!(
        line.starts_with("tidings: acknowledgements were not stored"),
        "{line}"
    );
    assert!(line.contains("\"doomed\""), "{line}");
    broker.stop().await
}

/// Defect: `tidings sub` stopped with Ctrl-C exited 0 although the broker
/// had refused its acknowledgements (with `--count` it exited 1). Either
/// way it now fails, saying how many and why.
#[tokio::test(flavor = "multi_thread")]
async fn sub_fails_with_the_cause_when_acks_were_refused_however_it_stopped() -> anyhow::Result<()>
{
    let refusal = tonic::Status::failed_precondition("acks are not accepted here");
    let script = |_: &tidings_client::v1::SubscribeRequest, _| {
        stand_in::stay_open(vec![stand_in::message(0, "a0"), stand_in::message(1, "a1")])
    };
    let (url, mut calls_rx) = stand_in::serve(600, script, stand_in::acks_refused(refusal)).await?;
    for (args, interrupted) in [
        (&["sub", "s"][..], true),
        (&["sub", "s", "--count", "2"][..], false),
    ] {
        let mut child = common::spawn_tidings_at(&url, args)?;
        let mut stdout = stdout_of(&mut child)?;
        assert_eq!(next_line(&mut stdout).await?, "m0\n");
        assert_eq!(next_line(&mut stdout).await?, "m1\n");
        if interrupted {
            // Refused before Ctrl-C, so only close can report it.
            tokio::time::timeout(common::RUN_TIMEOUT, async {
                while let Some(call) = calls_rx.recv().await {
                    if call.names("ack", "a1") {
                        return;
                    }
                }
            })
            .await?;
            interrupt(&child)?;
        }
        let output = finish(child, stdout).await?;
        let line = output.failure_line()?;
        assert!(
            line.starts_with(
                "tidings: acknowledgements were not stored (2 refused by the broker), \
                 so printed messages may be delivered again: "
            ),
            "{args:?}: {line}"
        );
        assert!(
            line.contains("acks are not accepted here"),
            "{args:?}: {line}"
        );
        while calls_rx.try_recv().is_ok() {}
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_prints_messages_by_offset_and_takes_none() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    broker
        .tidings(&["subs", "create", "billing", "--topic", "orders"])
        .await?
        .ok()?;
    broker
        .tidings_with_stdin(
            &["pub", "orders", "--key", "k7", "--attr", "region=eu"],
            b"o0\no1\no2\no3\no4\n",
        )
        .await?
        .ok()?;

    let all = broker.tidings(&["peek", "orders"]).await?.ok()?;
    assert_eq!(all.stdout, "o0\no1\no2\no3\no4\n");
    let some = broker
        .tidings(&["peek", "orders", "--from", "1", "--count", "3", "--json"])
        .await?
        .ok()?;
    let messages = json_lines(&some.stdout)?;
    let offsets: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(messages[0]["payload"], "o1");
    assert_eq!(messages[0]["key"], "k7");
    assert_eq!(messages[0]["attributes"]["region"], "eu");
    assert!(
        messages[0].get("delivery_attempt").is_none(),
        "{}",
        some.stdout
    );
    let at_end = broker
        .tidings(&["peek", "orders", "--from", "5"])
        .await?
        .ok()?;
    assert_eq!(at_end.stdout, "");
    let past = broker.tidings(&["peek", "orders", "--from", "9"]).await?;
    assert!(past.failure_line()?.contains("past the end"), "{past:?}");
    let unknown = broker.tidings(&["peek", "invoices"]).await?;
    assert!(
        unknown
            .failure_line()?
            .contains("tidings topics create invoices")
    );

    // Nothing was taken from the subscription: every message still comes
    // to it, each for the first time.
    let billing = describe_subscription(&broker, "billing").await?;
    assert_eq!(
        (&billing["backlog"], &billing["in_flight"]),
        (&5.into(), &0.into()),
        "{billing}"
    );
    let taken = broker
        .tidings(&["sub", "billing", "--count", "5", "--json"])
        .await?
        .ok()?;
    let attempts: Vec<u64> = json_lines(&taken.stdout)?
        .iter()
        .filter_map(|m| m["delivery_attempt"].as_u64())
        .collect();
    assert_eq!(attempts, [1, 1, 1, 1, 1]);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn subs_create_filter_and_update_change_what_sub_prints() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    let created = broker
        .tidings(&[
            "subs",
            "create",
            "eu",
            "--topic",
            "orders",
            "--filter",
            r#"attributes.region = "eu""#,
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(created["filter"], r#"attributes.region = "eu""#);
    broker
        .tidings(&["pub", "orders", "--attr", "region=eu", "eu-1"])
        .await?
        .ok()?;
    broker
        .tidings(&["pub", "orders", "--attr", "region=us", "us-1"])
        .await?
        .ok()?;
    let eu = broker
        .tidings(&["sub", "eu", "--exit-at-end"])
        .await?
        .ok()?;
    assert_eq!(eu.stdout, "eu-1\n");
    assert_eq!(describe_subscription(&broker, "eu").await?["backlog"], 0);

    let updated = broker
        .tidings(&[
            "subs",
            "update",
            "eu",
            "--filter",
            "",
            "--ack-deadline",
            "45s",
        ])
        .await?
        .ok()?;
    let filter_line = updated
        .lines()
        .into_iter()
        .find(|l| l.starts_with("filter:"));
    assert!(
        filter_line.is_some_and(|l| l.ends_with(" none")),
        "{}",
        updated.stdout
    );
    broker
        .tidings(&["pub", "orders", "--attr", "region=us", "us-2"])
        .await?
        .ok()?;
    let all = broker
        .tidings(&["sub", "eu", "--exit-at-end"])
        .await?
        .ok()?;
    assert_eq!(all.stdout, "us-2\n", "no filter: the next message comes");
    assert_eq!(
        describe_subscription(&broker, "eu").await?["ack_deadline_seconds"],
        45
    );

    let bad = broker
        .tidings(&["subs", "update", "eu", "--filter", "attributes.region ="])
        .await?;
    let line = bad.failure_line()?;
    assert!(
        line.contains("filter is not valid") && line.contains("at byte 19"),
        "{line}"
    );
    let nothing = broker.tidings(&["subs", "update", "eu"]).await?;
    assert!(nothing.failure_line()?.contains("nothing to change"));
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn subs_backoff_flags_set_change_and_remove_the_retry_policy() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    let created = broker
        .tidings(&[
            "subs",
            "create",
            "r",
            "--topic",
            "orders",
            "--min-backoff",
            "2s",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    let policy = &created["retry_policy"];
    assert_eq!(
        (
            &policy["minimum_backoff_seconds"],
            &policy["maximum_backoff_seconds"]
        ),
        (&Value::from(2.0), &Value::from(600.0)),
        "{created}"
    );
    // One flag alone keeps the other value.
    broker
        .tidings(&["subs", "update", "r", "--max-backoff", "1m"])
        .await?
        .ok()?;
    let described = describe_subscription(&broker, "r").await?;
    assert_eq!(described["retry_policy"]["minimum_backoff_seconds"], 2.0);
    assert_eq!(described["retry_policy"]["maximum_backoff_seconds"], 60.0);
    let text = broker.tidings(&["subs", "describe", "r"]).await?.ok()?;
    assert!(
        text.stdout.contains("after 2s, doubling up to 1m"),
        "{}",
        text.stdout
    );
    broker
        .tidings(&["subs", "update", "r", "--no-backoff"])
        .await?
        .ok()?;
    assert_eq!(
        describe_subscription(&broker, "r").await?["retry_policy"],
        Value::Null
    );

    let refused = broker
        .tidings(&[
            "subs",
            "update",
            "r",
            "--min-backoff",
            "20s",
            "--max-backoff",
            "10s",
        ])
        .await?;
    let line = refused.failure_line()?;
    assert!(line.contains("minimum_backoff (20s) is above"), "{line}");
    let too_long = broker
        .tidings(&["subs", "update", "r", "--min-backoff", "11m"])
        .await?;
    assert_eq!(too_long.status.code(), Some(2), "{}", too_long.stderr);
    assert!(
        too_long.stderr.contains("at most 10m"),
        "{}",
        too_long.stderr
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn subs_seek_replays_and_skips() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    broker
        .tidings(&["pub", "orders", "a", "b", "c"])
        .await?
        .ok()?;
    let all = broker
        .tidings(&["sub", "audit", "--topic", "orders", "--exit-at-end"])
        .await?
        .ok()?;
    assert_eq!(all.stdout, "a\nb\nc\n");
    let moved = broker
        .tidings(&["subs", "seek", "audit", "--to", "1"])
        .await?
        .ok()?;
    assert_eq!(
        moved.stdout.trim(),
        "moved subscription \"audit\": 2 messages to deliver from offset 1"
    );
    let replayed = broker
        .tidings(&["sub", "audit", "--exit-at-end"])
        .await?
        .ok()?;
    assert_eq!(replayed.stdout, "b\nc\n");
    broker
        .tidings(&["subs", "seek", "audit", "--to", "earliest"])
        .await?
        .ok()?;
    broker
        .tidings(&["subs", "seek", "audit", "--to", "latest"])
        .await?
        .ok()?;
    assert_eq!(describe_subscription(&broker, "audit").await?["backlog"], 0);
    let beyond = broker
        .tidings(&["subs", "seek", "audit", "--to", "9"])
        .await?;
    assert!(
        beyond.failure_line()?.contains("offset 9"),
        "{}",
        beyond.stderr
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn subs_dead_letter_flags_and_redrive() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "orders").await?;
    create_topic(&broker, "orders.dead").await?;
    let created = broker
        .tidings(&[
            "subs",
            "create",
            "billing",
            "--topic",
            "orders",
            "--dead-letter-topic",
            "orders.dead",
            "--max-delivery-attempts",
            "2",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        created["dead_letter_policy"]["dead_letter_topic"],
        "orders.dead"
    );
    broker.tidings(&["pub", "orders", "poison"]).await?.ok()?;
    // Two deliveries given back without acknowledging: the message moves.
    for _ in 0..2 {
        broker
            .tidings(&["sub", "billing", "--count", "1", "--no-ack"])
            .await?
            .ok()?;
    }
    let copies = broker
        .tidings(&["peek", "orders.dead", "--format", "jsonl"])
        .await?
        .ok()?;
    let copy: Value = serde_json::from_str(copies.stdout.trim())?;
    assert_eq!(
        copy["attributes"]["tidings.source_subscription"], "billing",
        "{copy}"
    );
    assert_eq!(
        describe_subscription(&broker, "billing").await?["dead_lettered"],
        1
    );
    let redriven = broker
        .tidings(&["subs", "redrive", "billing"])
        .await?
        .ok()?;
    assert_eq!(
        redriven.stdout.trim(),
        "brought 1 dead-lettered messages back to subscription \"billing\""
    );
    let again = broker
        .tidings(&["sub", "billing", "--count", "1"])
        .await?
        .ok()?;
    assert_eq!(again.stdout, "poison\n");
    // Attempts without a topic make no policy.
    let refused = broker
        .tidings(&["subs", "update", "billing", "--no-dead-letter"])
        .await?
        .ok()?;
    assert!(
        refused.stdout.contains("dead letters:"),
        "{}",
        refused.stdout
    );
    let lonely = broker
        .tidings(&[
            "subs",
            "create",
            "x",
            "--topic",
            "orders",
            "--max-delivery-attempts",
            "3",
        ])
        .await?;
    assert!(
        lonely.failure_line()?.contains("--dead-letter-topic"),
        "{}",
        lonely.stderr
    );
    broker.stop().await
}

/// `topics describe NAME --json`.
async fn describe_topic(broker: &Broker, name: &str) -> anyhow::Result<Value> {
    broker
        .tidings(&["topics", "describe", name, "--json"])
        .await?
        .ok()?
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_create_retention_flags_set_the_whole_policy() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let created = broker
        .tidings(&[
            "topics",
            "create",
            "clicks",
            "--retention",
            "1h",
            "--max-messages",
            "10",
            "--max-bytes",
            "1MiB",
            "--discard-acked",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        created["retention"],
        serde_json::json!({
            "max_age_seconds": 3600.0,
            "max_messages": 10,
            "max_bytes": 1_048_576,
            "discard_acked": true,
        }),
        "{created}"
    );
    assert_eq!(created["retained_messages"], 0, "{created}");
    broker
        .tidings(&["pub", "clicks", "a", "b", "c"])
        .await?
        .ok()?;

    // Below every limit, and no subscription has acknowledged anything:
    // all three are retained.
    let described = describe_topic(&broker, "clicks").await?;
    assert_eq!(described["retained_messages"], 3, "{described}");
    assert_eq!(described["retention"], created["retention"], "{described}");
    let text = broker
        .tidings(&["topics", "describe", "clicks"])
        .await?
        .ok()?;
    let line = |name: &str| {
        text.lines()
            .into_iter()
            .find(|l| l.starts_with(name))
            .map(str::to_owned)
    };
    assert!(
        line("retention:")
            .is_some_and(|l| l
                .ends_with(" max age 1h, max messages 10, max bytes 1.0 MiB, discard acked yes")),
        "{}",
        text.stdout
    );
    assert!(
        line("retained messages:").is_some_and(|l| l.ends_with(" 3")),
        "{}",
        text.stdout
    );
    let listed = broker.tidings(&["topics", "ls"]).await?.ok()?;
    assert!(
        listed.stdout.contains("RETENTION")
            && listed
                .stdout
                .contains("1h, 10 messages, 1.0 MiB, until acked"),
        "{}",
        listed.stdout
    );

    // No flag: the broker's default, 7 days and nothing else.
    create_topic(&broker, "orders").await?;
    let default = describe_topic(&broker, "orders").await?;
    assert_eq!(
        default["retention"],
        serde_json::json!({
            "max_age_seconds": 604_800.0,
            "max_messages": null,
            "max_bytes": null,
            "discard_acked": false,
        }),
        "{default}"
    );
    // --keep-forever: an explicit policy with no limit at all.
    broker
        .tidings(&["topics", "create", "audit", "--keep-forever"])
        .await?
        .ok()?;
    let audit = broker
        .tidings(&["topics", "describe", "audit"])
        .await?
        .ok()?;
    assert!(
        audit.stdout.contains(
            "max age unlimited, max messages unlimited, max bytes unlimited, discard acked no"
        ),
        "{}",
        audit.stdout
    );

    let too_short = broker
        .tidings(&["topics", "create", "x", "--retention", "500ms"])
        .await?;
    assert_eq!(too_short.status.code(), Some(2), "{}", too_short.stderr);
    assert!(
        too_short.stderr.contains("at least 1s"),
        "{}",
        too_short.stderr
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_update_changes_only_the_limits_given() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    broker
        .tidings(&[
            "topics",
            "create",
            "clicks",
            "--retention",
            "1h",
            "--max-messages",
            "10",
            "--discard-acked",
        ])
        .await?
        .ok()?;

    let updated = broker
        .tidings(&[
            "topics",
            "update",
            "clicks",
            "--max-messages",
            "5",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        updated["retention"],
        serde_json::json!({
            "max_age_seconds": 3600.0,
            "max_messages": 5,
            "max_bytes": null,
            "discard_acked": true,
        }),
        "the age limit and discard-acked stay: {updated}"
    );
    assert_eq!(
        describe_topic(&broker, "clicks").await?["retention"],
        updated["retention"]
    );

    // People get the topic as it is after the change.
    let removed = broker
        .tidings(&[
            "topics",
            "update",
            "clicks",
            "--retention",
            "0",
            "--discard-acked",
            "false",
        ])
        .await?
        .ok()?;
    assert!(
        removed
            .stdout
            .contains("max age unlimited, max messages 5, max bytes unlimited, discard acked no"),
        "{}",
        removed.stdout
    );

    let missing = broker
        .tidings(&["topics", "update", "ghost", "--max-messages", "5"])
        .await?;
    let line = missing.failure_line()?;
    assert!(line.contains("\"ghost\" does not exist"), "{line}");
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_update_without_flags_fails_naming_the_flags() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    create_topic(&broker, "clicks").await?;
    let nothing = broker.tidings(&["topics", "update", "clicks"]).await?;
    let line = nothing.failure_line()?;
    for text in [
        "nothing to change",
        "--retention",
        "--max-messages",
        "--discard-acked",
    ] {
        assert!(line.contains(text), "{line}");
    }
    assert_eq!(nothing.stdout, "");
    // The topic kept the broker's default.
    assert_eq!(
        describe_topic(&broker, "clicks").await?["retention"]["max_age_seconds"],
        604_800.0
    );
    broker.stop().await?;

    // Refused before connecting: the same line with no broker there.
    let holder = tokio::net::TcpSocket::new_v4()?;
    holder.bind("127.0.0.1:0".parse()?)?;
    let addr = holder.local_addr()?.to_string();
    let offline = tidings(
        &strings(&["--server", &addr, "topics", "update", "clicks"]),
        None,
    )
    .await?;
    assert!(
        offline.failure_line()?.contains("nothing to change"),
        "{}",
        offline.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_help_documents_the_retention_flags() -> anyhow::Result<()> {
    let create = tidings(&strings(&["topics", "create", "--help"]), None)
        .await?
        .ok()?;
    for text in [
        "--retention",
        "--max-messages",
        "--discard-acked",
        "--keep-forever",
        "broker's default",
        "Examples:",
    ] {
        assert!(
            create.stdout.contains(text),
            "topics create --help lacks {text}:\n{}",
            create.stdout
        );
    }
    let update = tidings(&strings(&["topics", "update", "--help"]), None)
        .await?
        .ok()?;
    for text in [
        "--retention",
        "--max-messages",
        "--discard-acked <true|false>",
        "0 removes",
        "Examples:",
    ] {
        assert!(
            update.stdout.contains(text),
            "topics update --help lacks {text}:\n{}",
            update.stdout
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_the_reply_a_responder_sends_and_fails_when_nobody_answers()
-> anyhow::Result<()> {
    use futures::StreamExt as _;

    let broker = Broker::start().await?;
    create_topic(&broker, "questions").await?;
    broker
        .tidings(&["subs", "create", "answerers", "--topic", "questions"])
        .await?
        .ok()?;
    // A responder with the library: it answers the request it gets.
    let client = tidings_client::Client::connect(broker.url()).await?;
    let responder = async {
        let mut requests = client.subscriber("answerers").subscribe().await?;
        let request = requests
            .next()
            .await
            .ok_or_else(|| anyhow!("no request"))??;
        let deadline = request
            .reply_deadline()
            .ok_or_else(|| anyhow!("no deadline"))?;
        anyhow::ensure!(deadline > std::time::SystemTime::now(), "{deadline:?}");
        anyhow::ensure!(request.payload() == "sku-42".as_bytes());
        anyhow::ensure!(request.key() == "order-7");
        client
            .reply(
                &request,
                tidings_client::Message::new("7 in stock").with_key("sku-42"),
            )
            .await?;
        request.ack();
        requests.close().await?;
        anyhow::Ok(())
    };
    let caller = broker.tidings(&[
        "call",
        "questions",
        "sku-42",
        "--key",
        "order-7",
        "--timeout",
        "60s",
        "--json",
    ]);
    let (called, answered) = tokio::join!(caller, responder);
    answered?;
    assert_eq!(
        called?.ok()?.json()?,
        serde_json::json!({
            "topic": "questions",
            "offset": 0,
            "reply": {"payload": "7 in stock", "key": "sku-42", "attributes": {}},
        })
    );

    // Nobody answers now: the call gives up after its timeout.
    let unanswered = broker
        .tidings(&["call", "questions", "anyone?", "--timeout", "200ms"])
        .await?;
    assert!(!unanswered.status.success());
    let line = unanswered.failure_line()?;
    assert!(line.contains("nobody answered"), "{line}");
    broker.stop().await
}
