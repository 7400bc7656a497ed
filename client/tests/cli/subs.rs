//! `tidings subs`: filters, retry policies, seeking, dead letters.

use super::*;

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
