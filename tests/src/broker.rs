//! [`TestBroker`]: a real broker in-process, on `127.0.0.1:0`, over a
//! temporary data directory that outlives restarts.
//!
//! It starts the broker exactly as the binary does, through
//! `tidings_server::run`, and never touches the broker's internals.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use tempfile::TempDir;
use tidings_client::Client;
use tidings_server::config::Config;
use tokio::net::TcpListener;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::SHUTDOWN_TIMEOUT;

/// Adjusts the configuration of a [`TestBroker`] before each start.
type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// A broker running in this process, and the data directory it keeps across
/// [`restart`](TestBroker::restart)s. Dropping it stops the broker abruptly
/// and removes the data.
pub struct TestBroker {
    data_dir: TempDir,
    configure: Configure,
    running: Option<Running>,
    /// Where the last run listened, for
    /// [`resume_on_same_port`](TestBroker::resume_on_same_port).
    last_addr: Option<SocketAddr>,
}

/// One run of the broker, from start to stop.
struct Running {
    addr: SocketAddr,
    client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tidings_server::ServeError>>,
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
        let data_dir = tempfile::Builder::new()
            .prefix("tidings-test-")
            .tempdir()
            .context("create a data directory")?;
        let mut broker = Self {
            data_dir,
            configure: Arc::new(configure),
            running: None,
            last_addr: None,
        };
        broker.launch().await?;
        Ok(broker)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        self.launch_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn launch_on(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr().context("read the bound address")?;
        self.last_addr = Some(addr);
        let mut config = Config::for_data_dir(self.data_dir.path().to_path_buf());
        (self.configure)(&mut config);
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(tidings_server::run(listener, config, signal));
        let client = Client::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connect to the test broker at {addr}"))?;
        self.running = Some(Running {
            addr,
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

    /// The address the broker listens on.
    ///
    /// # Panics
    /// When the broker is stopped.
    pub fn addr(&self) -> SocketAddr {
        self.running().addr
    }

    /// The broker's URL, for example `http://127.0.0.1:40123`.
    ///
    /// # Panics
    /// When the broker is stopped.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
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
    /// directory, on a new port. Clients taken before must be taken again.
    ///
    /// # Errors
    /// As [`TestBroker::stop`] and [`TestBroker::start`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Stops the broker gracefully and starts it again on the same data
    /// directory and the same address, so that clients made before (which
    /// reconnect by address) find it again.
    ///
    /// # Errors
    /// As [`TestBroker::stop`] and [`TestBroker::resume_on_same_port`].
    pub async fn restart_on_same_port(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.resume_on_same_port().await
    }

    /// Starts a [`stop`](TestBroker::stop)ped broker again on the same data
    /// directory and the address it listened on before.
    ///
    /// # Errors
    /// When the broker is running, or the address cannot be bound again, or
    /// as [`TestBroker::start`].
    pub async fn resume_on_same_port(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            anyhow::bail!("the test broker is running; stop it first");
        }
        let addr = self
            .last_addr
            .context("the test broker never listened anywhere")?;
        self.launch_on(addr).await
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
