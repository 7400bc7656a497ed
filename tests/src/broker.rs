//! [`TestBroker`]: a real broker in-process, on a port of `127.0.0.1`
//! picked by the system, over a temporary data directory that outlives
//! restarts.
//!
//! It starts the broker exactly as the binary does, through
//! `tidings_server::run`, and never touches the broker's internals.
//!
//! The broker keeps one address for the fixture's whole life, across
//! restarts: a socket bound to the port (and never listening) holds it
//! while the broker is stopped, so nothing else can take the port between
//! runs, and connections to it are refused exactly as by a stopped broker.
//! Each run listens on the same port through a socket of its own; both
//! sockets set `SO_REUSEPORT`, which is what lets them share the port. The
//! HTTP bus is served on a second port kept the same way.
//!
//! A broker configured with TLS (see [`TestPki`](crate::TestPki)) has
//! `https://` URLs; [`TestBroker::start_with_client`] sets up the
//! fixture's client to trust it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use tempfile::TempDir;
use tidings_client::{Client, ClientBuilder};
use tidings_server::Listeners;
use tidings_server::config::Config;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::SHUTDOWN_TIMEOUT;

/// Adjusts the configuration of a [`TestBroker`] before each start.
type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Adjusts the fixture's client (TLS files, a token) before it connects.
type ConfigureClient = Arc<dyn Fn(ClientBuilder) -> ClientBuilder + Send + Sync>;

/// How many connections may wait to be accepted.
const BACKLOG: u32 = 1024;

/// A broker running in this process, and the data directory and address it
/// keeps across [`restart`](TestBroker::restart)s. Dropping it stops the
/// broker and removes the data.
pub struct TestBroker {
    data_dir: TempDir,
    configure: Configure,
    configure_client: ConfigureClient,
    /// Whether the last run served TLS (`https://` URLs).
    tls: bool,
    /// The port every run listens on, held by a socket that is bound to it
    /// and never listens (see the module documentation).
    port: ReservedPort,
    /// The port of the HTTP bus, held the same way.
    http_port: ReservedPort,
    /// The port of `GET /metrics`, held the same way.
    metrics_port: ReservedPort,
    running: Option<Running>,
}

/// One run of the broker, from start to stop.
struct Running {
    client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tidings_server::ServeError>>,
}

/// A port of `127.0.0.1` kept for this fixture: bound, never listening.
struct ReservedPort {
    addr: SocketAddr,
    _holder: TcpSocket,
}

impl ReservedPort {
    /// Takes a free port from the system and holds it.
    fn new() -> anyhow::Result<Self> {
        let holder = shareable_socket()?;
        holder
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("bind 127.0.0.1:0")?;
        let addr = holder.local_addr().context("read the bound address")?;
        Ok(Self {
            addr,
            _holder: holder,
        })
    }

    /// A listener on the held port, for one run of the broker.
    fn listen(&self) -> anyhow::Result<TcpListener> {
        let socket = shareable_socket()?;
        socket
            .bind(self.addr)
            .with_context(|| format!("bind {} again", self.addr))?;
        socket
            .listen(BACKLOG)
            .with_context(|| format!("listen on {}", self.addr))
    }
}

/// A TCP socket that may share its port with the other sockets of this
/// fixture (`SO_REUSEPORT`; the system allows that only within one user).
fn shareable_socket() -> anyhow::Result<TcpSocket> {
    let socket = TcpSocket::new_v4().context("create a socket")?;
    socket
        .set_reuseport(true)
        .context("set SO_REUSEPORT on a socket")?;
    Ok(socket)
}

impl TestBroker {
    /// Starts a broker with the default configuration on a fresh data
    /// directory.
    ///
    /// # Errors
    /// When the directory cannot be made, the port cannot be bound, or the
    /// client cannot connect.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a fresh data directory, with its configuration
    /// adjusted by `configure` (called again on every restart).
    ///
    /// # Errors
    /// As [`TestBroker::start`].
    pub async fn start_with(
        configure: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_with_client(configure, |builder| builder).await
    }

    /// As [`TestBroker::start_with`], with the fixture's client adjusted by
    /// `configure_client` before it connects (on every restart): to trust
    /// a TLS broker's CA, say. A broker configured with `tls_cert` has
    /// `https://` URLs.
    ///
    /// # Errors
    /// As [`TestBroker::start`].
    pub async fn start_with_client(
        configure: impl Fn(&mut Config) + Send + Sync + 'static,
        configure_client: impl Fn(ClientBuilder) -> ClientBuilder + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("tidings-test-")
            .tempdir()
            .context("create a data directory")?;
        let mut broker = Self {
            data_dir,
            configure: Arc::new(configure),
            configure_client: Arc::new(configure_client),
            tls: false,
            port: ReservedPort::new()?,
            http_port: ReservedPort::new()?,
            metrics_port: ReservedPort::new()?,
            running: None,
        };
        broker.launch().await?;
        Ok(broker)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            anyhow::bail!("the test broker is running; stop it first");
        }
        let listeners = Listeners {
            grpc: self.port.listen()?,
            http: Some(self.http_port.listen()?),
            metrics: Some(self.metrics_port.listen()?),
        };
        let mut config = Config::for_data_dir(self.data_dir.path().to_path_buf());
        (self.configure)(&mut config);
        self.tls = config.tls_cert.is_some();
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(tidings_server::run_with(listeners, config, signal));
        let client = (self.configure_client)(Client::builder(self.url()))
            .connect()
            .await
            .with_context(|| format!("connect to the test broker at {}", self.addr()))?;
        self.running = Some(Running {
            client,
            shutdown,
            task,
        });
        Ok(())
    }

    fn running(&self) -> &Running {
        self.running
            .as_ref()
            .expect("the test broker is stopped; restart it first")
    }

    /// The address the broker listens on; the same for the fixture's whole
    /// life, also while the broker is stopped (connections are refused
    /// then).
    pub fn addr(&self) -> SocketAddr {
        self.port.addr
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// The broker's URL, for example `http://127.0.0.1:40123` (`https://`
    /// with TLS); the same for the fixture's whole life, as
    /// [`TestBroker::addr`].
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr())
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The address of the broker's HTTP bus; the same for the fixture's
    /// whole life, as [`TestBroker::addr`].
    pub fn http_addr(&self) -> SocketAddr {
        self.http_port.addr
    }

    /// The URL of the broker's metrics, for example
    /// `http://127.0.0.1:40125/metrics` (`https://` with TLS).
    pub fn metrics_url(&self) -> String {
        format!("{}://{}/metrics", self.scheme(), self.metrics_port.addr)
    }

    /// The base URL of the broker's HTTP bus, for example
    /// `http://127.0.0.1:40124` (`https://` with TLS).
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr())
    }

    /// A client connected to the broker; clones share one connection.
    ///
    /// # Panics
    /// When the broker is stopped.
    pub fn client(&self) -> Client {
        self.running().client.clone()
    }

    /// Shuts the broker down gracefully and waits, at most
    /// [`SHUTDOWN_TIMEOUT`], for `run` to return.
    ///
    /// # Errors
    /// When `run` returned an error, panicked, or did not return in time.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        running.shutdown.cancel();
        drop(running.client);
        let joined = tokio::time::timeout(SHUTDOWN_TIMEOUT, running.task)
            .await
            .map_err(|_| anyhow!("the broker did not shut down within {SHUTDOWN_TIMEOUT:?}"))?;
        joined
            .context("the broker task panicked")?
            .context("the broker's run returned an error")
    }

    /// Stops the broker gracefully and starts it again on the same data
    /// directory and address. Clients made before reconnect by themselves,
    /// as clients of a real broker do; [`TestBroker::client`] gives one
    /// connected to the new run.
    ///
    /// # Errors
    /// As [`TestBroker::stop`] and [`TestBroker::start`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The same as [`TestBroker::restart`], named for callers that rely on
    /// the address staying the same (it always does).
    ///
    /// # Errors
    /// As [`TestBroker::restart`].
    pub async fn restart_on_same_port(&mut self) -> anyhow::Result<()> {
        self.restart().await
    }

    /// Starts a [`stop`](TestBroker::stop)ped broker again on the same data
    /// directory and address.
    ///
    /// # Errors
    /// When the broker is running, or as [`TestBroker::start`].
    pub async fn resume_on_same_port(&mut self) -> anyhow::Result<()> {
        self.launch().await
    }
}

impl Drop for TestBroker {
    /// Stops the broker gracefully, so its storage is closed before the test
    /// ends: a RocksDB database still closing on another thread when the
    /// test process exits can abort the process. This needs the
    /// multi-threaded runtime (`#[tokio::test(flavor = "multi_thread")]`);
    /// elsewhere the broker is only cancelled.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.shutdown.cancel();
        drop(running.client);
        let multi_thread = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let Some(handle) = multi_thread else {
            running.task.abort();
            return;
        };
        let stopped = tokio::task::block_in_place(|| {
            handle.block_on(tokio::time::timeout(SHUTDOWN_TIMEOUT, running.task))
        });
        if !matches!(stopped, Ok(Ok(Ok(())))) && !std::thread::panicking() {
            panic!("the test broker did not shut down cleanly: {stopped:?}");
        }
    }
}
