//! What the end-to-end tests share: a broker in-process, the two services
//! as child processes, a tiny HTTP/1.1 client and a bounded poll.

#![allow(dead_code, reason = "each test file uses a part of this module")]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tidings_server::config::Config;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The order service binary.
pub(crate) const ORDER_SERVICE: &str = env!("CARGO_BIN_EXE_order-service");
/// The inventory service binary.
pub(crate) const INVENTORY_SERVICE: &str = env!("CARGO_BIN_EXE_inventory-service");

/// How long a service may take to start or stop, and a state to be reached.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A broker running in this process on a temporary data directory.
pub(crate) struct Broker {
    pub(crate) url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tidings_server::ServeError>>,
    _data_dir: TempDir,
}

impl Broker {
    /// Starts a broker on `127.0.0.1:0`, as the `tidings-server` binary does.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir().context("create the broker's data directory")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = Config::for_data_dir(data_dir.path());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tidings_server::run(
            listener,
            config,
            shutdown.clone().cancelled_owned(),
        ));
        Ok(Self {
            url,
            shutdown,
            task,
            _data_dir: data_dir,
        })
    }

    /// Shuts the broker down cleanly.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .context("the broker did not stop")??
            .context("the broker failed")
    }
}

/// A service running as a child process.
pub(crate) struct Service {
    /// Where it serves HTTP.
    pub(crate) addr: SocketAddr,
    child: Child,
}

impl Service {
    /// Runs `program` with `args` plus `--listen 127.0.0.1:0`, and waits for
    /// its `listening on <addr>` line.
    pub(crate) async fn start(program: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {program}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            bail!("{program} exited before it was ready")
        });
        let addr = ready
            .await
            .with_context(|| format!("{program} did not start"))??;
        // Keep reading, so that the service never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { addr, child })
    }

    /// Kills the service with SIGKILL (`kill -9`) and reaps it.
    pub(crate) async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill the service")
    }

    /// Asks the service to stop with SIGTERM and returns how it exited.
    pub(crate) async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().context("the service already exited")?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        ensure!(sent.success(), "cannot send SIGTERM to {pid}");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("the service did not stop on SIGTERM")?
            .context("cannot reap the service")
    }
}

/// A broker and the data directories of both services: what each test
/// starts the services on, and restarts them on.
pub(crate) struct Stack {
    pub(crate) broker: Broker,
    data: TempDir,
    stock: &'static str,
}

impl Stack {
    /// Starts the broker; `stock` is the inventory's `--stock`.
    pub(crate) async fn start(stock: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            broker: Broker::start().await?,
            data: tempfile::tempdir().context("create the services' data directory")?,
            stock,
        })
    }

    /// The inventory service's data directory.
    pub(crate) fn inventory_dir(&self) -> std::path::PathBuf {
        self.data.path().join("inventory")
    }

    /// Starts the inventory service (again) on its data directory.
    pub(crate) async fn start_inventory(&self) -> anyhow::Result<Service> {
        let dir = self.inventory_dir();
        let args = [
            "--broker",
            &self.broker.url,
            "--data-dir",
            arg(&dir)?,
            "--stock",
            self.stock,
        ];
        Service::start(INVENTORY_SERVICE, &args).await
    }

    /// Starts the order service on its data directory.
    pub(crate) async fn start_orders(&self) -> anyhow::Result<Service> {
        let dir = self.data.path().join("orders");
        let args = ["--broker", &self.broker.url, "--data-dir", arg(&dir)?];
        Service::start(ORDER_SERVICE, &args).await
    }

    /// Stops the broker gracefully.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.broker.stop().await
    }
}

/// The path as a `&str` argument.
pub(crate) fn arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary paths are UTF-8")
}

/// Sends one HTTP/1.1 request and returns the status code and body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head in {:?}", String::from_utf8_lossy(&response)))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// `GET path`, expecting 200 and a JSON body of type `T`.
pub(crate) async fn get_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<T> {
    let (status, body) = http(addr, "GET", path, b"").await?;
    ensure!(
        status == 200,
        "GET {path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: unexpected body"))
}

/// Calls `probe` every 20 ms until it returns a value, for at most
/// [`PATIENCE`]: the observable here is HTTP state, which has no event to
/// await.
pub(crate) async fn poll_until<T>(
    what: &str,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let polling = async {
        loop {
            if let Some(value) = probe().await? {
                return anyhow::Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, polling)
        .await
        .with_context(|| format!("timed out waiting until {what}"))?
}
