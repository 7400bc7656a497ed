//! The `tidings-server` binary: parses the configuration, installs logging,
//! binds the listener and runs the broker until SIGINT or SIGTERM.
//!
//! Everything else lives in the library ([`tidings_server::run`]).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use tidings_server::config::{Config, ConfigError};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // clap prints the message (or the help) and exits as it does.
        Err(ConfigError::Args(err)) => err.exit(),
        Err(err) => {
            eprintln!("tidings-server: {:#}", anyhow::Error::new(err));
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = init_tracing(&config) {
        eprintln!("tidings-server: {err:#}");
        return ExitCode::FAILURE;
    }
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tidings-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let listener = tidings_server::bind(config.listen, "gRPC", "--listen").await?;
    tidings_server::run(listener, config, shutdown).await?;
    Ok(())
}

/// Logs to standard error, filtered by `--log`.
fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log).context("invalid --log directive")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|err| anyhow::anyhow!("cannot install the logger: {err}"))
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed
/// before the server starts, so an early signal is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!(signal = name, "received signal");
    })
}
