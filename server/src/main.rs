//! The `tidings-server` binary: parses the configuration, installs logging,
//! binds the listener and runs the broker until SIGINT or SIGTERM; or, as
//! `tidings-server hash-token`, makes a token for the auth file.
//!
//! Everything else lives in the library ([`tidings_server::run`]).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use tidings_server::config::{Config, ConfigError};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// `tidings-server hash-token`: tokens for the auth file (`--auth-file`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "tidings-server hash-token",
    about = "Prints a new random bearer token and its SHA-256 (for token_sha256 in the auth \
             file), or the SHA-256 of a token given"
)]
struct HashToken {
    /// A token to hash; `-` reads it from standard input (one line), which
    /// keeps it out of the process list and the shell's history.
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "hash-token")
    {
        return hash_token(<HashToken as clap::Parser>::parse_from(
            std::env::args_os().skip(1),
        ));
    }
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

/// Prints a new token and its hash, or the hash of the token given.
fn hash_token(args: HashToken) -> ExitCode {
    let token = match args.token.as_deref() {
        None => {
            let (token, hash) = tidings_server::auth::new_token();
            println!("token:        {token}");
            println!("token_sha256: {hash}");
            return ExitCode::SUCCESS;
        }
        Some("-") => {
            let mut line = String::new();
            if let Err(err) = std::io::stdin().read_line(&mut line) {
                eprintln!("tidings-server hash-token: cannot read standard input: {err}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        Some(token) => token.to_owned(),
    };
    if token.is_empty() {
        eprintln!("tidings-server hash-token: the token is empty");
        return ExitCode::FAILURE;
    }
    println!("{}", tidings_server::auth::token_sha256(&token));
    ExitCode::SUCCESS
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
