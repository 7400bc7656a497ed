//! Shared by the black-box tests of the `tidings-server` binary: start the
//! real binary on `127.0.0.1:0`, read the address it announces, signal it,
//! and talk to it over gRPC like any client.
//!
//! Nothing here reaches into the broker's library: the binary is a black
//! box, reached through its flags, its standard output and its port.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tidings::v1::{ReceivedMessage, SubscribeRequest, SubscribeResponse};
use tidings_client::Client;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::Streaming;

/// How long the binary may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for a delivery or the end of a stream.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the binary may take to exit after a signal.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the crash tests' publishers may take to be answered, or to
/// notice that the broker is gone.
pub(crate) const PUBLISH_WAIT: Duration = Duration::from_secs(60);

/// Runs `publishers` tasks made by `publisher` (given its number and a
/// counter to add each answered publish to, and returning once the broker
/// stops answering) until a random 20 to 300 publishes were answered; then
/// kills `server` with SIGKILL and waits for every publisher to notice.
/// Returns the number of answered publishes it killed after.
pub(crate) async fn kill_9_while_publishing<F>(
    server: ServerProcess,
    publishers: u32,
    publisher: impl Fn(u32, tokio::sync::watch::Sender<usize>) -> F,
) -> anyhow::Result<usize>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use rand::Rng as _;
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let tasks: Vec<_> = (0..publishers)
        .map(|id| tokio::spawn(publisher(id, count_tx.clone())))
        .collect();
    drop(count_tx);
    let kill_after = rand::rng().random_range(20..=300);
    tokio::time::timeout(PUBLISH_WAIT, count_rx.wait_for(|n| *n >= kill_after))
        .await
        .with_context(|| format!("{kill_after} publishes were not answered in time"))?
        .context("the publishers stopped early")?;
    server.kill_9().await?;
    for task in tasks {
        tokio::time::timeout(PUBLISH_WAIT, task)
            .await
            .context("a publisher did not notice the kill")??;
    }
    Ok(kill_after)
}

/// A running `tidings-server` process. Dropping it kills the process.
pub(crate) struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    // Kept open so the process never writes to a closed pipe.
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ServerProcess {
    /// Starts the binary on `127.0.0.1:0` with `data_dir`, logging to a
    /// file in `log_dir`, and waits for its `listening on` line.
    pub(crate) async fn start(data_dir: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, log_dir, &[]).await
    }

    /// As [`ServerProcess::start`], with more flags.
    pub(crate) async fn start_with(
        data_dir: &Path,
        log_dir: &Path,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, log_dir, flags, &[]).await
    }

    /// As [`ServerProcess::start_with`], with environment variables set
    /// (`Some`) or removed (`None`).
    pub(crate) async fn start_with_env(
        data_dir: &Path,
        log_dir: &Path,
        flags: &[&str],
        env: &[(&str, Option<&OsStr>)],
    ) -> anyhow::Result<Self> {
        let log_path = log_dir.join(format!("server-{}.log", unique_suffix()));
        let log = std::fs::File::create(&log_path).context("create the server log")?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings-server"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TIDINGS_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command.spawn().context("start tidings-server")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        // The HTTP bus and the metrics, when they listen, announce
        // themselves first.
        let announced = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line))
                        if line.starts_with("http listening on ")
                            || line.starts_with("metrics listening on ") =>
                    {
                        continue;
                    }
                    other => return other,
                }
            }
        })
        .await;
        let line = match announced {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => bail!(
                "tidings-server exited before announcing its address; log:\n{}",
                read_log(&log_path)
            ),
            Ok(Err(err)) => return Err(err).context("read tidings-server's stdout"),
            Err(_) => bail!("tidings-server did not announce its address within {START_TIMEOUT:?}"),
        };
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        Ok(Self {
            child,
            addr,
            log_path,
            stdout: lines,
        })
    }

    /// A client connected to the process.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(format!("http://{}", self.addr))
            .await
            .with_context(|| format!("connect to tidings-server at {}", self.addr))
    }

    /// What the process has logged so far.
    pub(crate) fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) async fn kill_9(mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("send SIGKILL")?;
        tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .context("the killed process was not reaped in time")?
            .context("wait for the killed process")?;
        Ok(())
    }

    /// Sends SIGTERM.
    pub(crate) async fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM").await
    }

    /// Sends SIGHUP.
    pub(crate) async fn hangup(&self) -> anyhow::Result<()> {
        self.signal("HUP").await
    }

    /// Sends the signal `name` (`TERM`, `HUP`).
    async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has already exited")?;
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await
            .with_context(|| format!("run kill -{name}"))?;
        if !status.success() {
            bail!("kill -{name} {pid} failed with {status}");
        }
        Ok(())
    }

    /// Waits, at most [`EVENT_TIMEOUT`], for the next line the process
    /// prints to standard output after its address.
    pub(crate) async fn next_line(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(EVENT_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("tidings-server closed its standard output"),
            Ok(Err(err)) => Err(err).context("read tidings-server's stdout"),
            Err(_) => bail!("tidings-server printed nothing within {EVENT_TIMEOUT:?}"),
        }
    }

    /// Waits for the process to exit, at most [`EXIT_TIMEOUT`].
    pub(crate) async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.context("wait for tidings-server"),
            Err(_) => Err(anyhow!(
                "tidings-server did not exit within {EXIT_TIMEOUT:?}; log:\n{}",
                self.log()
            )),
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("(cannot read the log: {err})"))
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An open `Subscribe` stream read one message at a time, each wait bounded
/// by [`EVENT_TIMEOUT`].
pub(crate) struct Deliveries {
    inner: Streaming<SubscribeResponse>,
    buffered: VecDeque<ReceivedMessage>,
}

impl Deliveries {
    /// Opens a stream.
    pub(crate) async fn open(client: &Client, request: SubscribeRequest) -> anyhow::Result<Self> {
        let mut subscriber = client.subscriber_service();
        let call = subscriber.subscribe(request);
        let response = tokio::time::timeout(EVENT_TIMEOUT, call)
            .await
            .context("Subscribe did not answer in time")?
            .context("Subscribe")?;
        Ok(Self {
            inner: response.into_inner(),
            buffered: VecDeque::new(),
        })
    }

    /// Waits for the next `n` messages.
    pub(crate) async fn next_n(&mut self, n: usize) -> anyhow::Result<Vec<ReceivedMessage>> {
        let mut messages = Vec::with_capacity(n);
        while messages.len() < n {
            if let Some(message) = self.buffered.pop_front() {
                messages.push(message);
                continue;
            }
            let got = messages.len();
            let frame = tokio::time::timeout(EVENT_TIMEOUT, self.inner.message())
                .await
                .with_context(|| format!("only {got} of {n} messages arrived in time"))?;
            match frame {
                Ok(Some(response)) => self.buffered.extend(response.messages),
                Ok(None) => bail!("the stream ended with OK after {got} of {n} messages"),
                Err(status) => bail!("the stream ended with {status:?} after {got} of {n}"),
            }
        }
        Ok(messages)
    }

    /// Waits for the stream to end with an error; returns it.
    pub(crate) async fn error(&mut self) -> anyhow::Result<tonic::Status> {
        loop {
            let frame = tokio::time::timeout(EVENT_TIMEOUT, self.inner.message())
                .await
                .context("the stream did not end in time")?;
            match frame {
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the stream ended with OK, not an error"),
                Err(status) => return Ok(status),
            }
        }
    }
}

/// Creates `topic` with the defaults.
pub(crate) async fn create_topic(client: &Client, topic: &str) -> anyhow::Result<()> {
    client
        .admin_service()
        .create_topic(tidings::v1::CreateTopicRequest {
            name: topic.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Every message of `topic` by offset, read with `ReadTopic`.
pub(crate) async fn read_topic(
    client: &Client,
    topic: &str,
) -> anyhow::Result<std::collections::BTreeMap<u64, bytes::Bytes>> {
    let mut subscriber = client.subscriber_service();
    let mut stored = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let read = subscriber
            .read_topic(tidings::v1::ReadTopicRequest {
                topic: topic.into(),
                offset,
                max_messages: 1000,
            })
            .await?
            .into_inner();
        stored.extend(read.messages.into_iter().map(|m| (m.offset, m.payload)));
        if read.next_offset >= read.end_offset {
            return Ok(stored);
        }
        offset = read.next_offset;
    }
}

/// A `Subscribe` request on `subscription` (created on `topic` when new)
/// that may hold many messages, with a long ack deadline.
pub(crate) fn subscribe_request(subscription: &str, topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        subscription: subscription.into(),
        topic: topic.into(),
        max_outstanding_messages: 100_000,
        ack_deadline_seconds: 600,
        ..Default::default()
    }
}
