//! What people read: tables and lines, health, errors in one line or one
//! JSON object, and the help.

use super::*;

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
