//! The auth file on the real binary: SIGHUP reloads it (decisions change
//! for the calls after it, an open `Subscribe` stream goes on, and a file
//! that does not load leaves the one before in force with an error naming
//! it); a bad file stops the broker at start; `hash-token` makes tokens.

mod common;

use std::path::Path;

use anyhow::Context as _;
use common::{EVENT_TIMEOUT, ServerProcess, subscribe_request};
use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::subscriber_service_client::SubscriberServiceClient;
use tidings::v1::{CreateTopicRequest, PublishMessage, PublishRequest, SubscribeResponse};
use tidings_client::Transport;
use tidings_server::auth::token_sha256;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status, Streaming};

const OPS: &str = "ops-token";
const WORKER: &str = "worker-token";

/// `ops` administers and publishes everywhere; `worker` consumes
/// subscription `work` of topic `jobs`, and publishes to `jobs` when
/// `worker_publishes`.
fn write_auth_file(path: &Path, worker_publishes: bool) -> anyhow::Result<()> {
    let worker_actions = if worker_publishes {
        r#"["subscribe", "publish"]"#
    } else {
        r#"["subscribe"]"#
    };
    let text = format!(
        r#"
[[principal]]
name = "ops"
token_sha256 = "{ops}"

[[principal]]
name = "worker"
token_sha256 = "{worker}"

[[grant]]
principal = "ops"
actions = ["admin", "publish"]
topics = ["*"]
subscriptions = ["*"]

[[grant]]
principal = "worker"
actions = {worker_actions}
topics = ["jobs"]
subscriptions = ["work"]
"#,
        ops = token_sha256(OPS),
        worker = token_sha256(WORKER),
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// A request carrying `Bearer token`.
fn with_token<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse()?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

async fn publish(channel: &Transport, token: &str, payload: &str) -> Result<(), Status> {
    let request = PublishRequest {
        topic: "jobs".to_owned(),
        messages: vec![PublishMessage {
            payload: payload.as_bytes().to_vec().into(),
            ..Default::default()
        }],
    };
    let request = with_token(request, token).map_err(|err| Status::internal(err.to_string()))?;
    PublisherServiceClient::new(channel.clone())
        .publish(request)
        .await
        .map(drop)
}

/// The payload of the next message on `stream`.
async fn next_payload(stream: &mut Streaming<SubscribeResponse>) -> anyhow::Result<String> {
    let frame = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .context("no delivery in time")??
        .context("the stream ended")?;
    let message = frame.messages.first().context("an empty frame")?;
    Ok(String::from_utf8_lossy(&message.payload).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_auth_file_and_keeps_open_streams() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let auth_path = dir.path().join("auth.toml");
    write_auth_file(&auth_path, true)?;
    let auth_flag = auth_path.to_str().expect("a UTF-8 path");
    let mut server = ServerProcess::start_with(
        &dir.path().join("data"),
        dir.path(),
        &["--auth-file", auth_flag],
    )
    .await?;
    // Tokens in clear text are worth a warning.
    let log = server.log();
    assert!(log.contains("without TLS"), "{log}");
    let client = server.client().await?;
    let channel = client.channel().clone();
    let create = CreateTopicRequest {
        name: "jobs".to_owned(),
        ..Default::default()
    };
    AdminServiceClient::new(channel.clone())
        .create_topic(with_token(create, OPS)?)
        .await?;
    publish(&channel, WORKER, "before").await?;
    let mut stream = SubscriberServiceClient::new(channel.clone())
        .subscribe(with_token(subscribe_request("work", "jobs"), WORKER)?)
        .await?
        .into_inner();
    assert_eq!(next_payload(&mut stream).await?, "before");

    write_auth_file(&auth_path, false)?;
    server.hangup().await?;
    assert_eq!(server.next_line().await?, "auth file reloaded");
    let denied = publish(&channel, WORKER, "after")
        .await
        .expect_err("revoked");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    publish(&channel, OPS, "from ops").await?;
    assert_eq!(
        next_payload(&mut stream).await?,
        "from ops",
        "the stream opened before the reload goes on"
    );

    std::fs::write(
        &auth_path,
        "[[principal]]\nname = \"x\"\ntoken = \"plain\"\n",
    )?;
    server.hangup().await?;
    assert_eq!(server.next_line().await?, "auth file not reloaded");
    let log = server.log();
    assert!(
        log.contains(auth_flag) && log.contains("unknown field `token`"),
        "{log}"
    );
    let denied = publish(&channel, WORKER, "still")
        .await
        .expect_err("still revoked");
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "the file before stays in force"
    );
    publish(&channel, OPS, "still from ops").await?;
    assert_eq!(next_payload(&mut stream).await?, "still from ops");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_auth_file_stops_the_broker_at_start_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let auth_path = dir.path().join("auth.toml");
    std::fs::write(
        &auth_path,
        "[[grant]]\nprincipal = \"ghost\"\nactions = [\"admin\"]\ntopics = [\"*\"]\n",
    )?;
    let auth_flag = auth_path.to_str().expect("a UTF-8 path");
    let started = ServerProcess::start_with(
        &dir.path().join("data"),
        dir.path(),
        &["--auth-file", auth_flag],
    )
    .await;
    let err = format!("{:#}", started.err().expect("the broker must not start"));
    assert!(err.contains(auth_flag), "{err}");
    assert!(err.contains("grant 1 (principal \"ghost\")"), "{err}");
    Ok(())
}

/// Runs `tidings-server hash-token ARGS` with `stdin`; its standard output.
async fn hash_token(args: &[&str], stdin: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings-server"))
        .arg("hash-token")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut input = child.stdin.take().context("a stdin pipe")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let output = tokio::time::timeout(EVENT_TIMEOUT, child.wait_with_output()).await??;
    anyhow::ensure!(output.status.success(), "hash-token failed: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

/// The value of the line `NAME VALUE` that `hash-token` printed.
fn field(printed: &str, name: &str) -> anyhow::Result<String> {
    printed
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .with_context(|| format!("no {name} in {printed:?}"))
}

#[tokio::test]
async fn hash_token_prints_a_new_token_and_its_hash_or_hashes_one_given() -> anyhow::Result<()> {
    let printed = hash_token(&[], "").await?;
    let (token, hash) = (
        field(&printed, "token:")?,
        field(&printed, "token_sha256:")?,
    );
    assert_eq!(token.len(), 64, "32 bytes in hex: {token}");
    assert_eq!(hash, token_sha256(&token));
    let another = field(&hash_token(&[], "").await?, "token:")?;
    assert_ne!(token, another, "tokens are random");
    // SHA-256 of "test", a published test vector.
    let expected = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_eq!(hash_token(&["-"], "test\n").await?.trim(), expected);
    assert_eq!(hash_token(&["test"], "").await?.trim(), expected);
    Ok(())
}
