//! What the end-to-end tests share: the broker (the `tidings-server`
//! binary) and the services as child processes that a test can kill,
//! pause and restart, a tiny HTTP/1.1 client, a reader of whole topics and
//! a bounded poll.

#![allow(dead_code, reason = "each test file uses a part of this module")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use order_inventory::events::{Decision, STOCK_REJECTED, STOCK_RESERVED};
use order_inventory::notifications::{self, NotificationReport};
use order_inventory::orders::Order;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tidings_client::{Client, StoredMessage};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

/// The order service binary.
pub(crate) const ORDER_SERVICE: &str = env!("CARGO_BIN_EXE_order-service");
/// The inventory service binary.
pub(crate) const INVENTORY_SERVICE: &str = env!("CARGO_BIN_EXE_inventory-service");
/// The notification service binary.
pub(crate) const NOTIFICATION_SERVICE: &str = env!("CARGO_BIN_EXE_notification-service");
/// The token the notifier is started with.
pub(crate) const NOTIFIER_TOKEN: &str = "test-token-7Hq2";
/// Where the notifier takes pushes.
pub(crate) const PUSH_PATH: &str = "/push/stock-reserved";

/// How long a process may take to start or stop, and a state to be reached.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
/// How long building the broker may take when this test is the first to
/// need it (linking it, or compiling what another profile lacks).
const BUILD_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// The `tidings-server` binary, built once per test binary with this
/// test's profile: it belongs to another package, so Cargo does not build
/// it for these tests. When it is up to date, the build only checks that.
pub(crate) async fn server_binary() -> anyhow::Result<&'static Path> {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    let binary = BINARY.get_or_try_init(build_server).await?;
    Ok(binary.as_path())
}

async fn build_server() -> anyhow::Result<PathBuf> {
    // This test runs as <target dir>/<profile dir>/deps/<test binary>.
    let exe = std::env::current_exe().context("where is this test binary")?;
    let profile_dir = exe.parent().and_then(Path::parent);
    let profile = profile_dir
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .with_context(|| format!("no profile directory above {}", exe.display()))?;
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["build", "--manifest-path", manifest])
        .args(["-p", "tidings-server", "--bin", "tidings-server"])
        .args(["--message-format", "json-render-diagnostics"]);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BUILD_PATIENCE, command.output())
        .await
        .context("building tidings-server took too long")?
        .context("cannot run cargo to build tidings-server")?;
    ensure!(
        output.status.success(),
        "cargo build -p tidings-server failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let built = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "tidings-server";
        if let (true, Some(executable)) = (built, message["executable"].as_str()) {
            return Ok(PathBuf::from(executable));
        }
    }
    bail!("cargo built no tidings-server executable")
}

/// A name for a log file that no other process of this test uses.
fn log_path(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!(
        "{name}-{}.log",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A child process that announces `listening on <addr>` on standard output
/// once ready; standard error goes to a log file. Dropping it kills it.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Process {
    async fn start(mut command: Command, name: &str, log: PathBuf) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log).context("create a log file")?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.trim().parse::<SocketAddr>()?);
                }
            }
            bail!(
                "{name} exited before it was ready; its log:\n{}",
                read_log(&log)
            )
        });
        let addr = ready
            .await
            .with_context(|| format!("{name} did not start in time"))??;
        // Keep reading, so that the process never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, addr, log })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the process already exited")
    }

    /// Sends `signal` (a name such as `STOP`) with the `kill` program.
    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid()?.to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status()
            .await
            .context("cannot run kill")?;
        ensure!(sent.success(), "cannot send SIG{signal} to {pid}");
        Ok(())
    }

    /// Kills the process with SIGKILL (`kill -9`) and reaps it.
    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("cannot kill")?;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("the killed process was not reaped in time")?
            .context("cannot reap the killed process")?;
        Ok(())
    }

    /// Asks the process to stop with SIGTERM and returns how it exited.
    async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        self.signal("TERM").await?;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("the process did not stop on SIGTERM")?
            .context("cannot reap the process")
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("(cannot read the log: {err})"))
}

/// A service running as a child process.
pub(crate) struct Service {
    /// Where it serves HTTP.
    pub(crate) addr: SocketAddr,
    process: Process,
}

impl Service {
    /// Runs `program` with `args` plus `--listen 127.0.0.1:0`, and waits for
    /// its `listening on <addr>` line.
    async fn start(program: &str, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--log", "info"]);
        let process = Process::start(command, program, log).await?;
        Ok(Self {
            addr: process.addr,
            process,
        })
    }

    /// Kills the service with SIGKILL (`kill -9`) and reaps it.
    pub(crate) async fn kill(self) -> anyhow::Result<()> {
        self.process.kill().await
    }

    /// Asks the service to stop with SIGTERM and returns how it exited.
    pub(crate) async fn terminate(self) -> anyhow::Result<ExitStatus> {
        self.process.terminate().await
    }
}

/// The broker, a `tidings-server` process on a data directory that
/// outlives it. Its first start picks a free port; each restart listens on
/// that port again, so the services find it where they left it.
pub(crate) struct Broker {
    /// Where it serves gRPC, across restarts.
    pub(crate) addr: SocketAddr,
    /// The URL the services are given.
    pub(crate) url: String,
    process: Option<Process>,
    data_dir: PathBuf,
    log_dir: PathBuf,
}

impl Broker {
    async fn spawn(data_dir: &Path, log_dir: &Path, listen: &str) -> anyhow::Result<Process> {
        let mut command = Command::new(server_binary().await?);
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TIDINGS_") {
                command.env_remove(name);
            }
        }
        Process::start(command, "tidings-server", log_path(log_dir, "broker")).await
    }

    /// Starts the broker on `127.0.0.1:0`.
    async fn start(data_dir: PathBuf, log_dir: PathBuf) -> anyhow::Result<Self> {
        let process = Self::spawn(&data_dir, &log_dir, "127.0.0.1:0").await?;
        let addr = process.addr;
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            process: Some(process),
            data_dir,
            log_dir,
        })
    }

    fn process(&self) -> anyhow::Result<&Process> {
        self.process.as_ref().context("the broker is not running")
    }

    /// Kills the broker with SIGKILL (`kill -9`).
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(process) => process.kill().await,
            None => bail!("the broker is not running"),
        }
    }

    /// Starts the killed broker again on its data directory and port. The
    /// port is free once the old process is gone, unless something else
    /// took it meanwhile for a moment: then this tries again.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.process.is_none(), "the broker is running");
        let listen = self.addr.to_string();
        let process = poll_until(
            "the broker restarts on its port",
            async || match Self::spawn(&self.data_dir, &self.log_dir, &listen).await {
                Ok(process) => Ok(Some(process)),
                Err(err) if format!("{err:#}").contains("in use") => Ok(None),
                Err(err) => Err(err),
            },
        )
        .await?;
        ensure!(
            process.addr == self.addr,
            "the broker moved to {}",
            process.addr
        );
        self.process = Some(process);
        Ok(())
    }

    /// A client of the broker, for reading what the services stored.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.url.clone())
            .await
            .context("cannot connect to the broker")
    }

    /// Freezes the broker with SIGSTOP: connections stay open, calls hang.
    pub(crate) async fn pause(&self) -> anyhow::Result<()> {
        self.process()?.signal("STOP").await
    }

    /// Lets a paused broker go on with SIGCONT.
    pub(crate) async fn resume(&self) -> anyhow::Result<()> {
        self.process()?.signal("CONT").await
    }

    /// Stops the broker with SIGTERM, expecting a clean exit.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.take() {
            let status = process.terminate().await?;
            ensure!(status.success(), "the broker failed on SIGTERM: {status}");
        }
        Ok(())
    }
}

/// A broker and the data directories of the order service and the
/// notifier: what each test starts the services on, and restarts them on.
/// (The inventory keeps no files: its state is on the broker.)
pub(crate) struct Stack {
    pub(crate) broker: Broker,
    data: TempDir,
    stock: &'static str,
}

impl Stack {
    /// Starts the broker; `stock` is the inventory's `--stock`.
    pub(crate) async fn start(stock: &'static str) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("create the test's data directory")?;
        let logs = data.path().join("logs");
        std::fs::create_dir(&logs).context("create the log directory")?;
        let broker = Broker::start(data.path().join("broker"), logs).await?;
        Ok(Self {
            broker,
            data,
            stock,
        })
    }

    /// The order service's data directory.
    pub(crate) fn orders_dir(&self) -> PathBuf {
        self.data.path().join("orders")
    }

    /// The notifier's data directory.
    pub(crate) fn notifier_dir(&self) -> PathBuf {
        self.data.path().join("notifier")
    }

    fn log_dir(&self) -> PathBuf {
        self.data.path().join("logs")
    }

    /// Starts an inventory service (again, or one more).
    pub(crate) async fn start_inventory(&self) -> anyhow::Result<Service> {
        let args = ["--broker", &self.broker.url, "--stock", self.stock];
        let log = log_path(&self.log_dir(), "inventory");
        Service::start(INVENTORY_SERVICE, &args, log).await
    }

    /// Starts the order service (again) on its data directory.
    pub(crate) async fn start_orders(&self) -> anyhow::Result<Service> {
        self.start_orders_with(&[]).await
    }

    /// Starts the order service (again) on its data directory, with more
    /// flags.
    pub(crate) async fn start_orders_with(&self, flags: &[&str]) -> anyhow::Result<Service> {
        let dir = self.orders_dir();
        let mut args = vec!["--broker", &self.broker.url, "--data-dir", arg(&dir)?];
        args.extend_from_slice(flags);
        let log = log_path(&self.log_dir(), "orders");
        Service::start(ORDER_SERVICE, &args, log).await
    }

    /// Starts the notifier (again) on its data directory, with the token
    /// [`NOTIFIER_TOKEN`]; it points its push subscription at itself.
    pub(crate) async fn start_notifier(&self) -> anyhow::Result<Service> {
        let dir = self.notifier_dir();
        let args = [
            "--broker",
            &self.broker.url,
            "--data-dir",
            arg(&dir)?,
            "--token",
            NOTIFIER_TOKEN,
        ];
        let log = log_path(&self.log_dir(), "notifier");
        Service::start(NOTIFICATION_SERVICE, &args, log).await
    }

    /// Prints the end of every log, for a test that failed.
    pub(crate) fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let log = read_log(&path);
            let lines: Vec<_> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("==== {} (last 40 lines)\n{tail}", path.display());
        }
    }

    /// Stops the broker gracefully.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.broker.stop().await
    }
}

/// Starts a broker for a stack with the inventory's `stock`, runs `test`
/// on it, prints every log when the test fails, and stops the broker.
pub(crate) async fn with_stack(
    stock: &'static str,
    test: impl AsyncFnOnce(&mut Stack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(stock).await?;
    let result = test(&mut stack).await;
    if result.is_err() {
        stack.print_logs();
    }
    result?;
    stack.stop().await
}

/// The path as a `&str` argument.
pub(crate) fn arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary paths are UTF-8")
}

/// Every message `topic` holds, read with `ReadTopic` from its start to its
/// end as of the last read.
pub(crate) async fn read_topic(client: &Client, topic: &str) -> anyhow::Result<Vec<StoredMessage>> {
    let mut messages = Vec::new();
    let mut offset = 0;
    loop {
        let read = tokio::time::timeout(PATIENCE, client.read_topic(topic, offset, 1000))
            .await
            .with_context(|| format!("reading {topic} took too long"))??;
        let done = read.is_at_end() || read.messages.is_empty();
        messages.extend(read.messages);
        if done {
            return Ok(messages);
        }
        offset = read.next_offset;
    }
}

/// Every decision event the broker holds on `stock.reserved` and
/// `stock.rejected`, with the topic it is on. Every event the inventory
/// committed is there, also a second one for the same order, which its
/// state (and so `GET /stock`) would hide.
pub(crate) async fn decision_events(
    broker: &Broker,
) -> anyhow::Result<Vec<(&'static str, Decision)>> {
    let client = broker.client().await?;
    let mut events = Vec::new();
    for topic in [STOCK_RESERVED, STOCK_REJECTED] {
        for message in read_topic(&client, topic).await? {
            let decision: Decision = serde_json::from_slice(&message.payload)
                .with_context(|| format!("{topic} at offset {}", message.offset))?;
            events.push((topic, decision));
        }
    }
    Ok(events)
}

/// What the notifier at `addr` reports (`GET /notifications`).
pub(crate) async fn notifications(addr: SocketAddr) -> anyhow::Result<NotificationReport> {
    get_json(addr, "/notifications").await
}

/// Messages of the notifier's push subscription not yet acknowledged.
pub(crate) async fn push_backlog(client: &Client) -> anyhow::Result<u64> {
    let subscription = client.get_subscription(notifications::SUBSCRIPTION);
    Ok(subscription.await?.backlog)
}

/// Waits until the notifier at `addr` reports what `wanted` accepts and
/// its push subscription has nothing left to push; returns the report.
pub(crate) async fn wait_for_notifier(
    addr: SocketAddr,
    client: &Client,
    what: &str,
    wanted: impl Fn(&NotificationReport) -> bool,
) -> anyhow::Result<NotificationReport> {
    poll_until(what, async || {
        let report = notifications(addr).await?;
        let done = wanted(&report) && push_backlog(client).await? == 0;
        Ok(done.then_some(report))
    })
    .await
}

/// The body of the order service's `GET /orders`.
#[derive(Deserialize)]
struct OrderList {
    orders: Vec<Order>,
}

/// Every order the order service at `addr` lists, oldest first.
pub(crate) async fn list_orders(addr: SocketAddr) -> anyhow::Result<Vec<Order>> {
    let list: OrderList = get_json(addr, "/orders").await?;
    Ok(list.orders)
}

/// Sends one HTTP/1.1 request and returns the status code and body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    http_with_headers(addr, method, path, &[], body).await
}

/// Sends one HTTP/1.1 request with more `headers` and returns the status
/// code and body.
pub(crate) async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let extra: String = (headers.iter())
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\n{extra}content-length: {}\r\n\r\n",
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
