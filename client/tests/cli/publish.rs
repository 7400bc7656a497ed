//! `tidings pub` (arguments, piped lines, whole files, ids, delays, binary
//! payloads, failures midway) and `tidings call`.

use super::*;

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
