//! `tidings subs create|update|describe` with the push flags: the
//! configuration reaches the broker, shows (without header values, which
//! may be secrets), changes and goes away.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::Broker;
use serde_json::Value;

async fn describe(broker: &Broker, name: &str) -> anyhow::Result<Value> {
    broker
        .tidings(&["subs", "describe", name, "--json"])
        .await?
        .ok()?
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_flags_create_change_show_and_remove_a_push_config() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    broker
        .tidings(&["topics", "create", "orders"])
        .await?
        .ok()?;
    let created = broker
        .tidings(&[
            "subs",
            "create",
            "notify",
            "--topic",
            "orders",
            "--push-endpoint",
            "http://127.0.0.1:9/hook",
            "--push-header",
            "authorization: Bearer s3cret",
            "--push-max-outstanding",
            "5",
            "--json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        created["push_config"]["endpoint"],
        "http://127.0.0.1:9/hook"
    );
    assert_eq!(
        created["push_config"]["headers"]["authorization"],
        "Bearer s3cret"
    );
    assert_eq!(created["push_config"]["max_outstanding"], 5);

    // People see where it pushes, and the header's name only.
    let text = broker
        .tidings(&["subs", "describe", "notify"])
        .await?
        .ok()?
        .stdout;
    assert!(
        text.contains("push:")
            && text.contains("to http://127.0.0.1:9/hook (5 at a time, headers authorization)"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    // One flag changes only its part.
    broker
        .tidings(&["subs", "update", "notify", "--push-max-outstanding", "7"])
        .await?
        .ok()?;
    let push = &describe(&broker, "notify").await?["push_config"];
    assert_eq!(push["endpoint"], "http://127.0.0.1:9/hook");
    assert_eq!(push["headers"]["authorization"], "Bearer s3cret");
    assert_eq!(push["max_outstanding"], 7);

    broker
        .tidings(&["subs", "update", "notify", "--no-push"])
        .await?
        .ok()?;
    assert_eq!(
        describe(&broker, "notify").await?["push_config"],
        Value::Null
    );

    // Mistakes are caught before or by the broker, with one line each.
    let lonely = broker
        .tidings(&[
            "subs",
            "create",
            "x",
            "--topic",
            "orders",
            "--push-header",
            "a: b",
        ])
        .await?;
    assert!(
        lonely.failure_line()?.contains("--push-endpoint"),
        "{}",
        lonely.stderr
    );
    let bad = broker
        .tidings(&[
            "subs",
            "create",
            "x",
            "--topic",
            "orders",
            "--push-endpoint",
            "ftp://example.com",
        ])
        .await?;
    assert!(
        bad.failure_line()?.contains("http:// or https://"),
        "{}",
        bad.stderr
    );
    let malformed = broker
        .tidings(&[
            "subs",
            "create",
            "x",
            "--topic",
            "orders",
            "--push-endpoint",
            "http://localhost/",
            "--push-header",
            "no colon",
        ])
        .await?;
    assert!(
        malformed.stderr.contains("NAME: VALUE"),
        "{}",
        malformed.stderr
    );
    broker.stop().await
}
