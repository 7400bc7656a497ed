//! `--config FILE`: the broker takes its settings from a TOML file, with
//! flags over environment variables over the file over the defaults, and
//! refuses a file it does not understand with a message naming the key and
//! the file.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Context as _;
use tidings::v1::{CreateTopicRequest, PublishMessage, PublishRequest};
use tidings_client::Client;
use tokio::process::Command;

mod common;

use common::{EXIT_TIMEOUT, ServerProcess};

/// Publishes one message of `size` bytes to a fresh topic; whether the
/// broker took it.
async fn accepts_a_message_of(client: &Client, topic: &str, size: usize) -> anyhow::Result<bool> {
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: topic.into(),
            ..CreateTopicRequest::default()
        })
        .await?;
    let published = client
        .publisher_service()
        .publish(PublishRequest {
            topic: topic.into(),
            messages: vec![PublishMessage {
                payload: vec![b'x'; size].into(),
                ..PublishMessage::default()
            }],
        })
        .await;
    match published {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(false),
        Err(status) => Err(status.into()),
    }
}

fn write_config(dir: &Path, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("tidings.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_sets_what_flags_and_the_environment_leave_unset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        "# limits\nmax_message_bytes = \"1KiB\"\nsync_interval = \"50ms\"\n",
    )?;
    let config = config.as_os_str();

    // The file alone: 1 KiB messages at most.
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        dir.path(),
        &[],
        &[("TIDINGS_CONFIG", Some(config))],
    )
    .await?;
    let client = server.client().await?;
    assert!(accepts_a_message_of(&client, "small", 1000).await?);
    assert!(!accepts_a_message_of(&client, "big", 2000).await?);
    server.terminate().await?;
    drop(server);

    // The environment wins over the file.
    let server = ServerProcess::start_with_env(
        &dir.path().join("data-env"),
        dir.path(),
        &[],
        &[
            ("TIDINGS_CONFIG", Some(config)),
            ("TIDINGS_MAX_MESSAGE_BYTES", Some(OsStr::new("4096"))),
        ],
    )
    .await?;
    let client = server.client().await?;
    assert!(accepts_a_message_of(&client, "big", 2000).await?);
    drop(server);

    // A flag wins over both.
    let server = ServerProcess::start_with_env(
        &dir.path().join("data-flag"),
        dir.path(),
        &["--max-message-bytes", "100"],
        &[
            ("TIDINGS_CONFIG", Some(config)),
            ("TIDINGS_MAX_MESSAGE_BYTES", Some(OsStr::new("4096"))),
        ],
    )
    .await?;
    let client = server.client().await?;
    assert!(!accepts_a_message_of(&client, "medium", 500).await?);
    Ok(())
}

/// Runs the binary with `--config FILE` and a free port; its exit status
/// and standard error.
async fn refused(config: &Path, dir: &Path) -> anyhow::Result<(bool, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-server"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .env_remove("TIDINGS_CONFIG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(EXIT_TIMEOUT, output)
        .await
        .context("the broker kept running with a bad config file")??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_it_does_not_understand_stops_the_broker_saying_where() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write_config(dir.path(), "data_dir = \"x\"\nsync_intervall = \"1s\"\n")?;
    let (ok, stderr) = refused(&path, dir.path()).await?;
    assert!(!ok);
    assert!(stderr.contains("unknown key `sync_intervall`"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");

    let path = write_config(dir.path(), "sync_interval = \"sometimes\"\n")?;
    let (ok, stderr) = refused(&path, dir.path()).await?;
    assert!(!ok);
    assert!(
        stderr.contains("sometimes") && stderr.contains("tidings.toml"),
        "{stderr}"
    );

    let path = write_config(dir.path(), "max_message_bytes = [1]\n")?;
    let (ok, stderr) = refused(&path, dir.path()).await?;
    assert!(!ok);
    assert!(
        stderr.contains("max_message_bytes") && stderr.contains("expected a string"),
        "{stderr}"
    );

    let path = write_config(dir.path(), "this is = not toml\n")?;
    let (ok, stderr) = refused(&path, dir.path()).await?;
    assert!(!ok);
    assert!(stderr.contains("not valid TOML"), "{stderr}");

    let (ok, stderr) = refused(&dir.path().join("missing.toml"), dir.path()).await?;
    assert!(!ok);
    assert!(stderr.contains("cannot read the config file"), "{stderr}");
    Ok(())
}
