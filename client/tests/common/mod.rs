//! Fixtures of the CLI tests: a real broker started in-process on
//! `127.0.0.1:0`, and the real `tidings` binary run as a person would,
//! under a timeout.
//!
//! Nothing here reaches into the broker: the binary talks to it over gRPC.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;
use tidings_server::config::Config;
use tidings_server::{Listeners, ServeError};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long one run of `tidings` may take before the test fails.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the broker may take to shut down.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A broker running in this process over a temporary data directory.
/// Stop it with [`Broker::stop`]; dropping it stops it too, less politely.
pub(crate) struct Broker {
    addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _data_dir: TempDir,
}

impl Broker {
    /// Starts a broker with the default configuration.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with its configuration adjusted by `configure`.
    pub(crate) async fn start_with(configure: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("tidings-cli-test-")
            .tempdir()
            .context("create a data directory")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr().context("read the bound address")?;
        // The HTTP bus too, for the workloads that use it.
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let http_addr = http.local_addr().context("read the bound address")?;
        let listeners = Listeners {
            grpc: listener,
            http: Some(http),
            metrics: None,
        };
        let mut config = Config::for_data_dir(data_dir.path().to_path_buf());
        configure(&mut config);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = shutdown_rx.await;
        };
        let task = tokio::spawn(tidings_server::run_with(listeners, config, shutdown));
        Ok(Self {
            addr,
            http_addr,
            shutdown_tx: Some(shutdown_tx),
            task: Some(task),
            _data_dir: data_dir,
        })
    }

    /// The address the broker listens on, as `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the broker's HTTP bus, as `http://127.0.0.1:PORT`.
    #[allow(dead_code)] // Only the bench tests use the HTTP bus.
    pub(crate) fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The broker's URL, as `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `tidings --server URL ARGS…` with no standard input.
    pub(crate) async fn tidings(&self, args: &[&str]) -> anyhow::Result<Output> {
        tidings(&self.server_args(args), None).await
    }

    /// Runs `tidings --server URL ARGS…` with `stdin` piped in.
    pub(crate) async fn tidings_with_stdin(
        &self,
        args: &[&str],
        stdin: &[u8],
    ) -> anyhow::Result<Output> {
        tidings(&self.server_args(args), Some(stdin)).await
    }

    /// Starts `tidings --server URL ARGS…` with its standard output piped,
    /// for commands that run until stopped.
    pub(crate) fn spawn_tidings(&self, args: &[&str]) -> anyhow::Result<Child> {
        let mut command = tidings_command(&self.server_args(args));
        command.stdin(Stdio::null());
        command.spawn().context("start the tidings binary")
    }

    /// Starts `tidings --server URL ARGS…` with its standard input and
    /// output piped, for feeding it while it runs.
    pub(crate) fn spawn_tidings_fed(&self, args: &[&str]) -> anyhow::Result<Child> {
        let mut command = tidings_command(&self.server_args(args));
        command.stdin(Stdio::piped());
        command.spawn().context("start the tidings binary")
    }

    fn server_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["--server".to_owned(), self.url()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        all
    }

    /// Shuts the broker down gracefully and checks that it stopped cleanly.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown_tx) = self.shutdown_tx.take() {
            let _ = shutdown_tx.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let joined = tokio::time::timeout(SHUTDOWN_TIMEOUT, task)
            .await
            .map_err(|_| anyhow!("the broker did not stop within {SHUTDOWN_TIMEOUT:?}"))?;
        joined
            .context("the broker task panicked")?
            .context("the broker's run returned an error")
    }
}

impl Drop for Broker {
    /// Stops the broker when a test failed before [`Broker::stop`], so
    /// that storage is closed before the test process exits.
    fn drop(&mut self) {
        if let Some(shutdown_tx) = self.shutdown_tx.take() {
            let _ = shutdown_tx.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        match handle {
            Some(handle) => {
                let _ = tokio::task::block_in_place(|| {
                    handle.block_on(tokio::time::timeout(SHUTDOWN_TIMEOUT, task))
                });
            }
            None => task.abort(),
        }
    }
}

/// What one run of `tidings` left behind.
#[derive(Debug)]
pub(crate) struct Output {
    /// How it exited.
    pub(crate) status: ExitStatus,
    /// Its standard output.
    pub(crate) stdout: String,
    /// Its standard error.
    pub(crate) stderr: String,
}

impl Output {
    /// Fails unless the run exited 0; returns the output otherwise.
    pub(crate) fn ok(self) -> anyhow::Result<Self> {
        if !self.status.success() {
            bail!("tidings failed ({}): {}", self.status, self.stderr);
        }
        Ok(self)
    }

    /// Standard output parsed as one JSON value.
    pub(crate) fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {:?}", self.stdout))
    }

    /// The lines of standard output.
    pub(crate) fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Checks that the run failed as the README says a command fails: exit
    /// status 1 and exactly one line on standard error, `tidings: …`;
    /// returns that line.
    pub(crate) fn failure_line(&self) -> anyhow::Result<&str> {
        if self.status.success() {
            bail!(
                "tidings succeeded but should have failed: {:?}",
                self.stdout
            );
        }
        if self.status.code() != Some(1) {
            bail!(
                "tidings failed with {}, not exit status 1: {:?}",
                self.status,
                self.stderr
            );
        }
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.as_slice() {
            [line] if line.starts_with("tidings: ") => Ok(line),
            _ => bail!(
                "expected one `tidings: …` line on stderr, got {:?}",
                self.stderr
            ),
        }
    }
}

/// Starts `tidings --server URL ARGS…` against any server (a stand-in
/// broker, say), its standard output piped.
pub(crate) fn spawn_tidings_at(url: &str, args: &[&str]) -> anyhow::Result<Child> {
    let mut all = vec!["--server".to_owned(), url.to_owned()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    let mut command = tidings_command(&all);
    command.stdin(Stdio::null());
    command.spawn().context("start the tidings binary")
}

/// The `tidings` binary with `args`, its output piped, and no
/// `TIDINGS_SERVER` from the test's environment.
fn tidings_command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(args)
        .env_remove("TIDINGS_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `tidings ARGS…` to completion under [`RUN_TIMEOUT`], feeding it
/// `stdin` (or nothing).
pub(crate) async fn tidings(args: &[String], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    tidings_env(args, stdin, &[]).await
}

/// As [`tidings`], with extra environment variables.
pub(crate) async fn tidings_env(
    args: &[String],
    stdin: Option<&[u8]>,
    envs: &[(&str, &str)],
) -> anyhow::Result<Output> {
    let mut command = tidings_command(args);
    command.envs(envs.iter().copied());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().context("start the tidings binary")?;
    if let (Some(input), Some(mut child_stdin)) = (stdin, child.stdin.take()) {
        child_stdin.write_all(input).await.context("write stdin")?;
        // Dropping it closes the pipe: end of input.
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("tidings {args:?} did not finish within {RUN_TIMEOUT:?}"))?
        .context("wait for tidings")?;
    Ok(Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Reads the next line a running `tidings` prints, under [`RUN_TIMEOUT`].
pub(crate) async fn next_line(stdout: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    let read = tokio::time::timeout(RUN_TIMEOUT, stdout.read_line(&mut line))
        .await
        .map_err(|_| anyhow!("no line within {RUN_TIMEOUT:?}"))?
        .context("read stdout")?;
    if read == 0 {
        bail!("tidings closed its output");
    }
    Ok(line)
}

/// Strings from string slices, for argument lists.
pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}
