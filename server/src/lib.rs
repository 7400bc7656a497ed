//! Tidings: a durable publish/subscribe broker for event-driven services.
//!
//! The layers, each in its own module, each naming only what it must:
//!
//! - [`grpc`]: the gRPC adapters, the only place that names tonic but
//!   [`http`];
//! - [`http`]: the HTTP event bus, JSON over HTTP/1.1 onto the gRPC
//!   adapters;
//! - [`broker`]: the domain (topics, subscriptions, leases, redelivery);
//! - [`storage`]: the [`Store`](storage::Store) seam, the only place that
//!   names RocksDB;
//! - [`auth`]: principals and grants from the auth file, and the decisions
//!   the adapters ask of them;
//! - [`config`]: command-line flags and `TIDINGS_*` environment variables;
//! - [`accept`] and [`tls`]: accepting connections on every listener,
//!   counted, with TLS when it is on.
//!
//! [`run`] is what the `tidings-server` binary calls, and what tests call to
//! start a broker in-process on `127.0.0.1:0`.

pub mod accept;
pub mod auth;
pub mod broker;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod latency;
pub mod metrics;
pub mod names;
pub mod offsets;
pub mod storage;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::accept::{Connections, Incoming};
use crate::auth::{AuthFileError, Authorizer};
use crate::broker::{Broker, BrokerError, SharedEngine};
use crate::config::Config;
use crate::storage::{RocksStore, SharedStore, StoreError};
use crate::tls::{Tls, TlsError};

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS settings are incomplete, or their files unusable.
    #[error("cannot set up TLS")]
    Tls(#[source] TlsError),
    /// The data directory could not be created.
    #[error("cannot create data directory {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Storage could not be opened.
    #[error("cannot open storage in {}; is another broker using this --data-dir?", path.display())]
    OpenStorage {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A storage file is damaged.
    #[error(
        "storage file {} is damaged ({detail}); the broker does not start on damaged storage, \
         lest it serve wrong data or lose acknowledged messages: restore the data directory {} \
         from a backup, or run `tidings-server --data-dir {} --repair` to keep what is readable, \
         report what was lost and start",
        file.display(), path.display(), path.display()
    )]
    DamagedStorage {
        /// The data directory.
        path: PathBuf,
        /// The damaged file.
        file: PathBuf,
        /// What the storage engine found.
        detail: String,
    },
    /// Repairing storage failed.
    #[error("cannot repair storage in {}", path.display())]
    Repair {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The broker could not load what storage holds.
    #[error("cannot start the broker")]
    StartBroker(#[source] BrokerError),
    /// The listener's local address could not be read.
    #[error("cannot read the listening socket's address")]
    Listener(#[source] std::io::Error),
    /// The gRPC transport failed.
    #[error("gRPC server failed")]
    Grpc(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An address to serve on could not be bound.
    #[error("cannot listen on {addr} for {what}{hint}", hint = addr_in_use_hint(source, flag))]
    Listen {
        /// What would have listened there.
        what: &'static str,
        /// The flag that names the address.
        flag: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP bus failed.
    #[error("HTTP server failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Pending acknowledgements could not be stored at shutdown.
    #[error("cannot close storage cleanly")]
    Close(#[source] BrokerError),
    /// The auth file (`--auth-file`) could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthFileError),
    /// The handler of SIGHUP (which reloads the auth file) could not be
    /// installed.
    #[error("cannot handle SIGHUP to reload the auth file")]
    Signal(#[source] std::io::Error),
}

/// Runs a broker on `listener` until `shutdown` resolves.
///
/// Opens (creating if needed) the RocksDB store in `config.data_dir`, loads
/// the broker, and serves the tidings services, `grpc.health.v1.Health` and
/// server reflection (v1 and v1alpha); with `config.http_listen`, the HTTP
/// bus too (bound here), and with `config.metrics_listen`, metrics. With
/// `config.tls_cert` and `config.tls_key`, every listener speaks TLS (and
/// with `config.tls_client_ca` requires client certificates signed by that
/// CA). Push subscriptions are pushed whether or not the
/// HTTP bus listens. Once ready, logs the addresses and prints `http
/// listening on <addr>` (with the HTTP bus) and then `listening on <addr>`
/// to standard output.
///
/// With `config.auth_file`, loaded before anything starts, the tidings
/// services serve only the principals it names, and SIGHUP reloads it (see
/// [`Authorizer::reload`]): the outcome is logged, and printed as `auth
/// file reloaded` or `auth file not reloaded` to standard output.
///
/// When `shutdown` resolves: health turns NOT_SERVING, open `Subscribe`
/// streams and waiting pulls end with UNAVAILABLE, both listeners stop
/// accepting, in-flight requests and pushes drain for at most
/// `config.shutdown_timeout`, then pending acknowledgements are stored and
/// the store is synced and closed. Returns `Ok(())` after a clean shutdown,
/// within a bounded time even when clients keep connections open.
///
/// # Errors
/// [`ServeError`] when the auth file or the TLS files are not valid, storage cannot be
/// opened or closed, a listener cannot be bound, or a server fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let auth = Authorizer::from_file(config.auth_file.as_deref())?;
    let reload = reload_on_hangup(auth.clone())?;
    let http = match config.http_listen {
        Some(addr) => Some(bind(addr, "the HTTP bus", "--http-listen").await?),
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(bind(addr, "metrics", "--metrics-listen").await?),
        None => None,
    };
    let listeners = Listeners {
        grpc: listener,
        http,
        metrics,
    };
    tokio::select! {
        served = serve(listeners, config, auth, shutdown) => served,
        never = reload => match never {},
    }
}

/// The sockets a broker serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// The HTTP bus, if any.
    pub http: Option<TcpListener>,
    /// `GET /metrics`, if anywhere.
    pub metrics: Option<TcpListener>,
}

/// [`run`] on sockets the caller bound: `config.http_listen` is not looked
/// at, and SIGHUP is not handled (the auth file is loaded once).
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let auth = Authorizer::from_file(config.auth_file.as_deref())?;
    serve(listeners, config, auth, shutdown).await
}

/// Reloads `auth` on each SIGHUP, forever; with no auth file, waits
/// forever. The handler is installed before this returns, so a signal
/// that comes early is not lost.
///
/// # Errors
/// [`ServeError::Signal`] when the handler cannot be installed.
fn reload_on_hangup(
    auth: Authorizer,
) -> Result<impl Future<Output = std::convert::Infallible>, ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match auth.path() {
        Some(_) => Some(signal(SignalKind::hangup()).map_err(ServeError::Signal)?),
        None => None,
    };
    Ok(async move {
        while let Some(signal) = hangup.as_mut()
            && signal.recv().await.is_some()
        {
            let file = auth.path().map(|path| path.display().to_string());
            let outcome = match auth.reload() {
                Ok(()) => {
                    info!(file, "reloaded the auth file");
                    "auth file reloaded"
                }
                Err(err) => {
                    error!(
                        error = %grpc::error_chain(&err),
                        "cannot reload the auth file; the one loaded before stays in force"
                    );
                    "auth file not reloaded"
                }
            };
            announce_line(outcome);
        }
        std::future::pending().await
    })
}

/// Prints `line` to standard output for whoever started the process.
fn announce_line(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    // Nobody may be reading standard output; that is not an error.
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Serves the broker, to whom `auth` allows, on `listeners` until
/// `shutdown` resolves.
async fn serve(
    listeners: Listeners,
    config: Config,
    auth: Authorizer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = Tls::from_config(&config).map_err(ServeError::Tls)?;
    if config.auth_file.is_some() && config.tls_cert.is_none() {
        warn!(
            "--auth-file is in force without TLS: bearer tokens cross the network in clear \
             text; give --tls-cert and --tls-key unless every client is on this host"
        );
    }
    let (broker, store) = open_broker(&config).await?;
    // One stop for both servers: the HTTP bus stops accepting when gRPC
    // does, either failing stops the other, and requests on both drain
    // before storage closes.
    let stop = CancellationToken::new();
    let forward = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    };
    // Before gRPC's line: whoever waits for that one can use them all.
    if let Some(listener) = &listeners.http {
        http::announce(listener);
    }
    if let Some(listener) = &listeners.metrics {
        metrics::announce(listener);
    }
    let telemetry = metrics::Telemetry::default();
    // gRPC and the HTTP bus share the --max-connections places; metrics
    // stay reachable when the broker is full.
    let connections = Connections::new(config.max_connections);
    let start = |listener: TcpListener,
                 tls: Option<TlsAcceptor>,
                 connections: &Connections,
                 stop: &CancellationToken| {
        Incoming::start(listener, tls, connections.clone(), stop.clone())
            .map_err(ServeError::Listener)
    };
    // gRPC's connections must not end when `stop` is cancelled: tonic
    // takes an incoming that ends as a shutdown that skips its signal
    // (which ends the broker's streams first), and then waits for those
    // streams for the whole drain. Tonic drops the incoming once its
    // signal has run, which stops the accepting; this token only ends
    // handshakes still under way once serving is over.
    let grpc_accepting = CancellationToken::new();
    let grpc_incoming = start(
        listeners.grpc,
        tls.as_ref().map(Tls::grpc),
        &connections,
        &grpc_accepting,
    )?;
    let http_incoming = listeners
        .http
        .map(|listener| start(listener, tls.as_ref().map(Tls::http), &connections, &stop))
        .transpose()?;
    let metrics_incoming = listeners
        .metrics
        .map(|listener| {
            start(
                listener,
                tls.as_ref().map(Tls::http),
                &Connections::new(None),
                &stop,
            )
        })
        .transpose()?;
    let metrics = async {
        let Some(incoming) = metrics_incoming else {
            return Ok(());
        };
        let served = metrics::serve(
            incoming,
            broker.clone(),
            &telemetry,
            stop.clone(),
            config.shutdown_timeout,
        )
        .await;
        stop.cancel();
        served
    };
    let http = async {
        let Some(incoming) = http_incoming else {
            return Ok(());
        };
        let served = http::serve(
            incoming,
            broker.clone(),
            &telemetry,
            &auth,
            &config,
            stop.clone(),
        )
        .await;
        stop.cancel();
        served
    };
    let push = async {
        let pushed = http::push(broker.clone(), stop.clone(), config.shutdown_timeout).await;
        stop.cancel();
        pushed
    };
    let grpc = async {
        let signal = stop.clone().cancelled_owned();
        let served = grpc::serve(
            grpc_incoming,
            broker.clone(),
            &telemetry,
            &auth,
            &config,
            signal,
        )
        .await;
        grpc_accepting.cancel();
        stop.cancel();
        served
    };
    let verified = verify_tables(&store, &config.data_dir, stop.clone());
    let ((), grpc_served, http_served, pushed, scraped, verified) =
        tokio::join!(forward, grpc, http, push, metrics, verified);
    let served = verified
        .and(grpc_served)
        .and(http_served)
        .and(pushed)
        .and(scraped);
    let closed = broker.close().await.map_err(ServeError::Close);
    match (served, closed) {
        (Ok(()), Ok(())) => {
            info!("broker stopped");
            Ok(())
        }
        (Err(err), Ok(())) => Err(err),
        (Ok(()), Err(err)) => Err(err),
        (Err(err), Err(close_err)) => {
            warn!(error = %close_err, "storage did not close cleanly after the server failed");
            Err(err)
        }
    }
}

/// Binds `addr` for `what` (gRPC, the HTTP bus, metrics), which `flag`
/// sets.
///
/// # Errors
/// [`ServeError::Listen`] naming the address and what it was for, with a
/// hint when another process has it.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            what,
            flag,
            addr,
            source,
        })
}

/// A hint for an address that is taken.
fn addr_in_use_hint(err: &std::io::Error, flag: &str) -> String {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        format!("; another process uses it: stop it or choose another {flag}")
    } else {
        String::new()
    }
}

/// Reads every table of the store while the broker serves (reads check
/// the blocks they touch anyway); damage found stops the broker through
/// `stop` with [`ServeError::DamagedStorage`]. Returns at once when `stop`
/// is cancelled.
async fn verify_tables(
    store: &RocksStore,
    path: &std::path::Path,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    match store.verify_tables(path, stop.clone()).await {
        Ok(entries) => {
            info!(entries, took = ?started.elapsed(), "tables verified");
            Ok(())
        }
        Err(err) => {
            stop.cancel();
            Err(storage_error(path, err))
        }
    }
}

/// [`ServeError::DamagedStorage`] for damage, else `OpenStorage`.
fn storage_error(path: &std::path::Path, source: StoreError) -> ServeError {
    match source {
        StoreError::Damaged { file, detail } => ServeError::DamagedStorage {
            path: path.to_path_buf(),
            file,
            detail,
        },
        source => ServeError::OpenStorage {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Repairs the store in `path` and logs what was kept and lost.
async fn repair(path: &std::path::Path) -> Result<(), ServeError> {
    let report = RocksStore::repair(path)
        .await
        .map_err(|source| ServeError::Repair {
            path: path.to_path_buf(),
            source,
        })?;
    for file in &report.lost_files {
        warn!(file = %file.display(), "repair: unreadable file moved aside");
    }
    for (topic, stored, readable) in &report.topics {
        let lost = stored.saturating_sub(*readable);
        if lost > 0 {
            warn!(%topic, stored, readable, lost, "repair: messages lost");
        } else {
            info!(%topic, messages = readable, "repair: topic whole");
        }
    }
    let lost: u64 = report
        .topics
        .iter()
        .map(|(_, s, r)| s.saturating_sub(*r))
        .sum();
    warn!(
        lost_messages = lost,
        lost_files = report.lost_files.len(),
        "repair done"
    );
    Ok(())
}

/// Opens the store in the data directory (repairing it first with
/// `--repair`) and loads the broker from it.
async fn open_broker(config: &Config) -> Result<(SharedEngine, Arc<RocksStore>), ServeError> {
    let path = config.data_dir.clone();
    tokio::fs::create_dir_all(&path)
        .await
        .map_err(|source| ServeError::DataDir {
            path: path.clone(),
            source,
        })?;
    if config.repair {
        repair(&path).await?;
    }
    let policy = config.sync_interval.policy();
    let store = RocksStore::open(&path, policy)
        .await
        .map_err(|source| storage_error(&path, source))?;
    let store = Arc::new(store);
    if config.min_free_disk > 0 {
        store
            .watch_free_space(&path, config.min_free_disk)
            .map_err(|source| storage_error(&path, source))?;
    }
    let shared: SharedStore = store.clone();
    let broker = Broker::open(shared, config.broker_config())
        .await
        .map_err(ServeError::StartBroker)?;
    Ok((Arc::new(broker), store))
}
