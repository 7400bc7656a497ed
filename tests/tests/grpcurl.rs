//! grpcurl against a real broker, with no proto files: the README's
//! walk-throughs, run command for command.
//!
//! The commands are taken from the fenced `sh` blocks between the
//! `walkthrough:start` and `walkthrough:end` markers of `README.md` (and
//! `failure-walkthrough:…` for the failure-handling one,
//! `retention-walkthrough:…` for keeping data, `commit-walkthrough:…` for
//! exactly once with Commit, `http-walkthrough:…` for the HTTP bus with
//! curl, `tls-walkthrough:…` for mutual TLS, run in a directory holding
//! the certificates under the README's names), with the README's
//! `localhost:50051` replaced by the test broker's address, and run with
//! bash and the test environment's grpcurl first on `PATH`. Every block
//! must match one check below, so a step added to the README without a
//! check fails here rather than going unproven. One more check keeps CI on
//! the README's test command.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tidings_tests::{
    PythonEnv, TestBroker, TestPki, create_subscription, get_subscription, get_topic,
};

const README: &str = include_str!("../../README.md");
/// The first walk-through's markers.
const WALKTHROUGH: (&str, &str) = ("<!-- walkthrough:start -->", "<!-- walkthrough:end -->");
/// The failure-handling walk-through's markers.
const FAILURE_WALKTHROUGH: (&str, &str) = (
    "<!-- failure-walkthrough:start -->",
    "<!-- failure-walkthrough:end -->",
);
/// The commit walk-through's markers.
const COMMIT_WALKTHROUGH: (&str, &str) = (
    "<!-- commit-walkthrough:start -->",
    "<!-- commit-walkthrough:end -->",
);
/// The retention walk-through's markers.
const RETENTION_WALKTHROUGH: (&str, &str) = (
    "<!-- retention-walkthrough:start -->",
    "<!-- retention-walkthrough:end -->",
);
const HTTP_WALKTHROUGH: (&str, &str) = (
    "<!-- http-walkthrough:start -->",
    "<!-- http-walkthrough:end -->",
);
const TLS_WALKTHROUGH: (&str, &str) = (
    "<!-- tls-walkthrough:start -->",
    "<!-- tls-walkthrough:end -->",
);
const README_ADDR: &str = "localhost:50051";
/// Where the README's HTTP bus listens.
const README_HTTP_ADDR: &str = "localhost:8080";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What one walk-through step must print: the step is recognised by
/// `command_has`, and its standard output, with all whitespace removed,
/// must contain each of `output_has`.
struct Check {
    command_has: &'static str,
    output_has: &'static [&'static str],
}

const CHECKS: &[Check] = &[
    Check {
        command_has: " list",
        output_has: &[
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "tidings.v1.AdminService",
            "tidings.v1.PublisherService",
            "tidings.v1.SubscriberService",
        ],
    },
    Check {
        command_has: "describe tidings.v1.PublisherService",
        output_has: &[
            "servicePublisherService",
            "rpcPublish(.tidings.v1.PublishRequest)returns(.tidings.v1.PublishResponse)",
            "bytespayload=1;",
            "map<string,string>attributes=3;",
        ],
    },
    Check {
        command_has: "grpc.health.v1.Health/Check",
        output_has: &["\"status\":\"SERVING\""],
    },
    Check {
        command_has: "AdminService/CreateTopic",
        output_has: &["\"name\":\"order.placed\""],
    },
    Check {
        command_has: "PublisherService/Publish <<EOF",
        output_has: &["\"offsets\":[\"0\"]"],
    },
    Check {
        command_has: "PublisherService/PublishStream <<EOF",
        // The three answers, in request order.
        output_has: &[concat!(
            "{\"offsets\":[\"1\"],\"duplicates\":[false]}",
            "{\"errorCode\":5,\"errorMessage\":\"topic\\\"order.cancelled\\\"doesnotexist;",
            "createitfirst(AdminService.CreateTopic)\"}",
            "{\"offsets\":[\"2\"],\"duplicates\":[false]}",
        )],
    },
    Check {
        command_has: "SubscriberService/ReadTopic",
        output_has: &[
            "\"offset\":\"0\"",
            "\"key\":\"order-42\"",
            "\"deliveryAttempt\":0",
            "\"nextOffset\":\"1\"",
            "\"endOffset\":\"1\"",
        ],
    },
    Check {
        command_has: "SubscriberService/Subscribe",
        output_has: &[
            "\"offset\":\"0\"",
            // base64 of {"order_id":42,"sku":"tea-01","qty":2}
            "\"payload\":\"eyJvcmRlcl9pZCI6NDIsInNrdSI6InRlYS0wMSIsInF0eSI6Mn0=\"",
            "\"key\":\"order-42\"",
            "\"source\":\"web\"",
            "\"deliveryAttempt\":1",
            "\"publishTime\":",
            // The first subscription's first delivery of offset 0.
            "\"ackId\":\"1-0-",
        ],
    },
    Check {
        command_has: "SubscriberService/Ack",
        output_has: &["{}"],
    },
    Check {
        command_has: "AdminService/GetSubscription",
        output_has: &[
            "\"name\":\"inventory\"",
            "\"topic\":\"order.placed\"",
            "\"backlog\":\"0\"",
            "\"inFlight\":\"0\"",
            "\"ackFloor\":\"1\"",
        ],
    },
];

const FAILURE_CHECKS: &[Check] = &[
    Check {
        command_has: "for topic in payments",
        output_has: &["\"name\":\"payments\"", "\"name\":\"payments.dead\""],
    },
    Check {
        command_has: "AdminService/CreateSubscription",
        output_has: &[
            "\"deadLetterTopic\":\"payments.dead\"",
            "\"maxDeliveryAttempts\":2",
            "\"minimumBackoff\":\"1s\"",
            "\"maximumBackoff\":\"10s\"",
        ],
    },
    Check {
        command_has: "PublisherService/Publish",
        output_has: &["\"offsets\":[\"0\"]"],
    },
    Check {
        command_has: "card declined",
        output_has: &["\"deliveryAttempt\":1", "\"deliveryAttempt\":2"],
    },
    Check {
        command_has: "SubscriberService/ReadTopic",
        output_has: &[
            "\"key\":\"pay-7\"",
            "\"tidings.source_topic\":\"payments\"",
            "\"tidings.source_subscription\":\"charger\"",
            "\"tidings.source_offset\":\"0\"",
            "\"tidings.delivery_attempts\":\"2\"",
            "\"tidings.dead_letter_reason\":\"max_delivery_attempts\"",
            "\"tidings.last_error\":\"carddeclined\"",
        ],
    },
    Check {
        command_has: "AdminService/GetSubscription",
        output_has: &["\"deadLettered\":\"1\"", "\"backlog\":\"0\""],
    },
    Check {
        command_has: "AdminService/Redrive",
        output_has: &["\"redriven\":\"1\""],
    },
    Check {
        command_has: "max_outstanding_messages",
        output_has: &["\"key\":\"pay-7\"", "\"deliveryAttempt\":1"],
    },
];

/// The fenced `sh` blocks between a walk-through's markers, in order.
fn walkthrough_blocks(readme: &str, markers: (&str, &str)) -> anyhow::Result<Vec<String>> {
    let (start_marker, end_marker) = markers;
    let start = readme
        .find(start_marker)
        .with_context(|| format!("README.md has no {start_marker}"))?;
    let end = readme
        .find(end_marker)
        .with_context(|| format!("README.md has no {end_marker}"))?;
    ensure!(
        start < end,
        "the walk-through markers are in the wrong order"
    );
    let section = &readme[start + start_marker.len()..end];

    // `Some(is_sh)` inside a fenced block; its lines gather in `lines`.
    let mut blocks = Vec::new();
    let mut open: Option<bool> = None;
    let mut lines: Vec<&str> = Vec::new();
    for line in section.lines() {
        let is_fence = line.trim_start().starts_with("```");
        match (open, is_fence) {
            (None, true) => open = Some(line.trim() == "```sh"),
            (Some(is_sh), true) => {
                if is_sh {
                    blocks.push(lines.join("\n") + "\n");
                }
                lines.clear();
                open = None;
            }
            (Some(_), false) => lines.push(line),
            (None, false) => {}
        }
    }
    ensure!(
        open.is_none(),
        "a fenced block in the walk-through is not closed"
    );
    Ok(blocks)
}

/// Runs one block with bash, in `dir` if given; returns its standard
/// output.
async fn run_block(env: &PythonEnv, script: &str, dir: Option<&Path>) -> anyhow::Result<String> {
    let mut command = env.command("bash");
    command.args(["-euo", "pipefail", "-c", script]);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, output)
        .await
        .with_context(|| format!("still running after {COMMAND_TIMEOUT:?}:\n{script}"))?
        .with_context(|| format!("cannot run bash for:\n{script}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{script}\nexited with {}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// Every step of a walk-through matches exactly one check, and every
/// check a step.
fn check_every_step(markers: (&str, &str), checks: &[Check]) -> anyhow::Result<()> {
    let blocks = walkthrough_blocks(README, markers)?;
    ensure!(blocks.len() >= checks.len(), "only {} steps", blocks.len());
    for block in &blocks {
        ensure!(
            block.contains(README_ADDR) || block.contains(README_HTTP_ADDR),
            "a step uses neither {README_ADDR} nor {README_HTTP_ADDR}:\n{block}"
        );
        let matching = checks
            .iter()
            .filter(|c| block.contains(c.command_has))
            .count();
        ensure!(matching == 1, "{matching} checks match the step:\n{block}");
    }
    for check in checks {
        ensure!(
            blocks.iter().any(|b| b.contains(check.command_has)),
            "no walk-through step runs {:?}",
            check.command_has
        );
    }
    Ok(())
}

const RETENTION_CHECKS: &[Check] = &[
    Check {
        command_has: "AdminService/CreateTopic",
        output_has: &[
            "\"name\":\"clicks\"",
            "\"maxAge\":\"86400s\"",
            "\"maxBytes\":\"1073741824\"",
            "\"dedupWindow\":\"600s\"",
        ],
    },
    Check {
        command_has: "\"id\": \"click-1\"",
        output_has: &["\"offsets\":[\"0\",\"0\"]", "\"duplicates\":[false,true]"],
    },
    Check {
        command_has: "\"deliverAfter\": \"600s\"",
        output_has: &["\"offsets\":[\"1\"]"],
    },
    Check {
        command_has: "AdminService/UpdateTopic",
        output_has: &[
            "\"maxAge\":\"86400s\"",
            "\"maxBytes\":\"1073741824\"",
            "\"maxMessages\":\"1000000\"",
        ],
    },
];

const COMMIT_CHECKS: &[Check] = &[
    Check {
        command_has: "for topic in orders reservations",
        output_has: &[
            "\"name\":\"orders\"",
            "\"name\":\"reservations\"",
            "\"name\":\"stock\"",
        ],
    },
    Check {
        command_has: "PublisherService/Publish",
        output_has: &["\"offsets\":[\"0\"]"],
    },
    Check {
        command_has: "PublisherService/Commit <<EOF",
        output_has: &["\"publishes\":[{\"offsets\":[\"0\"]"],
    },
    Check {
        command_has: "if ! grpcurl",
        output_has: &["Code:Aborted", "alreadyacknowledged", "refused:"],
    },
    Check {
        command_has: "SubscriberService/ReadTopic",
        output_has: &["\"key\":\"order-9\"", "\"nextOffset\":\"1\""],
    },
];

#[test]
fn the_walkthroughs_have_a_check_for_every_step() -> anyhow::Result<()> {
    check_every_step(WALKTHROUGH, CHECKS)?;
    check_every_step(FAILURE_WALKTHROUGH, FAILURE_CHECKS)?;
    check_every_step(RETENTION_WALKTHROUGH, RETENTION_CHECKS)?;
    check_every_step(COMMIT_WALKTHROUGH, COMMIT_CHECKS)?;
    check_every_step(HTTP_WALKTHROUGH, HTTP_CHECKS)?;
    check_every_step(TLS_WALKTHROUGH, TLS_CHECKS)
}

const TLS_CHECKS: &[Check] = &[
    Check {
        command_has: "client-key.pem localhost:50051 list",
        output_has: &["tidings.v1.PublisherService", "grpc.health.v1.Health"],
    },
    Check {
        command_has: "AdminService/CreateTopic",
        output_has: &["\"name\":\"audit\""],
    },
    Check {
        command_has: "audit:publish",
        output_has: &["{\"offsets\":[\"0\"]"],
    },
    Check {
        command_has: "if ! grpcurl",
        output_has: &["refusedwithoutaclientcertificate"],
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn readme_tls_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    // The files the README names: ca.pem, server.pem and server-key.pem
    // (for localhost and 127.0.0.1), client.pem and client-key.pem.
    let pki = TestPki::new()?;
    pki.client("client")?;
    let ca = pki.ca();
    let identity = (
        pki.dir().join("client.pem"),
        pki.dir().join("client-key.pem"),
    );
    let broker = TestBroker::start_with_client(pki.tls_settings(true), move |builder| {
        builder
            .ca_certificate(ca.clone())
            .client_identity(&identity.0, &identity.1)
    })
    .await?;
    run_walkthrough_in(&env, &broker, TLS_WALKTHROUGH, TLS_CHECKS, Some(pki.dir())).await?;
    assert_eq!(get_topic(&broker.client(), "audit").await?.next_offset, 1);
    Ok(())
}

const HTTP_CHECKS: &[Check] = &[
    Check {
        command_has: "AdminService/CreateSubscription",
        output_has: &["\"name\":\"payments\"", "\"name\":\"billing\""],
    },
    Check {
        command_has: "payments:publish \\",
        output_has: &["{\"offsets\":[\"0\"],\"duplicates\":[false]}"],
    },
    Check {
        command_has: "billing:pull",
        output_has: &[
            "\"offset\":\"0\"",
            "\"payload\":\"eyJ0b3RhbCI6IDQyfQ==\"",
            "\"attributes\":{\"currency\":\"EUR\"}",
            "\"deliveryAttempt\":1",
            "\"ackId\":",
        ],
    },
    Check {
        command_has: "billing:ack",
        output_has: &["{}"],
    },
    Check {
        command_has: "not base64",
        output_has: &["\"code\":\"INVALID_ARGUMENT\"", "invalidbase64"],
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn readme_http_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    run_walkthrough(&env, &broker, HTTP_WALKTHROUGH, HTTP_CHECKS).await?;
    let billing = get_subscription(&broker.client(), "billing").await?;
    assert_eq!((billing.backlog, billing.in_flight), (0, 0), "{billing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_commit_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    run_walkthrough(&env, &broker, COMMIT_WALKTHROUGH, COMMIT_CHECKS).await?;
    let client = broker.client();
    assert_eq!(get_topic(&client, "reservations").await?.next_offset, 1);
    assert_eq!(get_subscription(&client, "stock").await?.backlog, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_retention_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    run_walkthrough(&env, &broker, RETENTION_WALKTHROUGH, RETENTION_CHECKS).await?;
    let clicks = get_topic(&broker.client(), "clicks").await?;
    assert_eq!(
        clicks.next_offset, 2,
        "the repeated click was stored once, the delayed one too"
    );
    let probe = create_subscription(&broker.client(), "probe", "clicks", 0).await?;
    assert_eq!(probe.delayed, 1, "the delayed click waits: {probe:?}");
    let retention = clicks.retention.unwrap_or_default();
    assert_eq!(
        (retention.max_messages, retention.max_bytes),
        (1_000_000, 1 << 30),
        "{clicks:?}"
    );
    Ok(())
}

/// Runs a walk-through's steps against `broker`, checking each output.
async fn run_walkthrough(
    env: &PythonEnv,
    broker: &TestBroker,
    markers: (&str, &str),
    checks: &[Check],
) -> anyhow::Result<()> {
    run_walkthrough_in(env, broker, markers, checks, None).await
}

/// As [`run_walkthrough`], each step run in `dir` if given.
async fn run_walkthrough_in(
    env: &PythonEnv,
    broker: &TestBroker,
    markers: (&str, &str),
    checks: &[Check],
    dir: Option<&Path>,
) -> anyhow::Result<()> {
    let addr = broker.addr().to_string();
    let http_addr = broker.http_addr().to_string();
    for block in walkthrough_blocks(README, markers)? {
        let check = checks
            .iter()
            .find(|c| block.contains(c.command_has))
            .with_context(|| format!("no check for the step:\n{block}"))?;
        let script = block
            .replace(README_ADDR, &addr)
            .replace(README_HTTP_ADDR, &http_addr);
        let stdout = run_block(env, &script, dir).await?;
        let squeezed: String = stdout.split_whitespace().collect();
        for expected in check.output_has {
            ensure!(
                squeezed.contains(expected),
                "{script}\nprinted:\n{stdout}\nwhich lacks {expected}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_failure_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    run_walkthrough(&env, &broker, FAILURE_WALKTHROUGH, FAILURE_CHECKS).await?;
    let charger = get_subscription(&broker.client(), "charger").await?;
    assert_eq!(
        (charger.dead_lettered, charger.in_flight),
        (0, 1),
        "redriven, and delivered once more: {charger:?}"
    );
    assert_eq!(
        get_topic(&broker.client(), "payments.dead")
            .await?
            .next_offset,
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_grpcurl_walkthrough_works_verbatim() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    run_walkthrough(&env, &broker, WALKTHROUGH, CHECKS).await?;

    // What the walk-through did is visible through the Rust client too.
    let client = broker.client();
    // The stream stored two more after the acknowledgement.
    assert_eq!(get_topic(&client, "order.placed").await?.next_offset, 3);
    let inventory = get_subscription(&client, "inventory").await?;
    assert_eq!(
        (inventory.backlog, inventory.ack_floor),
        (2, 1),
        "{inventory:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_sees_errors_as_grpc_statuses() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    let output = env
        .command("grpcurl")
        .args(["-plaintext", "-d", r#"{"name": "no such topic"}"#])
        .arg(broker.addr().to_string())
        .arg("tidings.v1.AdminService/GetTopic")
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, output).await??;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("letters, digits"), "{stderr}");
    Ok(())
}

/// CI runs the README's test command as it is, so what CI proves is what
/// a person running that command gets.
#[test]
fn ci_runs_the_readmes_test_command() -> anyhow::Result<()> {
    const CI: &str = include_str!("../../.ci/run");
    let section = README
        .split("## Run the tests")
        .nth(1)
        .context("README.md has no \"Run the tests\" section")?;
    let command = section
        .lines()
        .skip_while(|line| line.trim() != "```sh")
        .nth(1)
        .context("the section has no sh block")?
        .trim();
    ensure!(command.starts_with("cargo test"), "{command}");
    ensure!(
        CI.lines()
            .any(|line| line.trim_start().starts_with(&format!("{command} "))
                || line.trim() == command),
        ".ci/run does not run {command:?}"
    );
    Ok(())
}
