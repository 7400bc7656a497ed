//! `tidings topics`, and managing topics and subscriptions in JSON.

use super::*;

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
