//! The `tidings` command-line tool, run as a person would: the real
//! binary against a real broker started in-process, with input piped in
//! and output parsed back. The tests are grouped by command in the
//! modules below; this file holds what they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../stand_in/mod.rs"]
mod stand_in;

mod errors_and_help;
mod publish;
mod subs;
mod subscribe;
mod topics;

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

/// Publishes each payload with its own `tidings pub`, so that each has a
/// publish time of its own.
async fn publish_one_by_one(broker: &Broker, topic: &str, payloads: &[&str]) -> anyhow::Result<()> {
    for payload in payloads {
        broker.tidings(&["pub", topic, payload]).await?.ok()?;
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

/// `topics describe NAME --json`.
async fn describe_topic(broker: &Broker, name: &str) -> anyhow::Result<Value> {
    broker
        .tidings(&["topics", "describe", name, "--json"])
        .await?
        .ok()?
        .json()
}
