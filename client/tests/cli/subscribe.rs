//! `tidings sub` (start positions, flow control, timeouts, Ctrl-C, refused
//! acknowledgements) and `tidings peek`.

use super::*;

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
