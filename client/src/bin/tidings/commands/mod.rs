//! The commands of `tidings`, one module each, and [`run`], which
//! dispatches to them.
//!
//! A new command (a later `tidings bench`, say) is a new module with its
//! clap `Args`, one variant in [`crate::args::Command`] and one
//! arm here. Commands reach the broker only through `tidings_client`.

pub(crate) mod bench;
pub(crate) mod call;
pub(crate) mod health;
mod input;
pub(crate) mod peek;
pub(crate) mod publish;
pub(crate) mod subs;
pub(crate) mod subscribe;
pub(crate) mod topics;

use tidings_client::{Client, ClientBuilder};

use crate::args::{Cli, Command, GlobalArgs};

/// What every command needs besides its own arguments.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The broker's URL.
    pub(crate) server: String,
    /// Print JSON instead of text for people.
    pub(crate) json: bool,
    /// The connection's settings: the server, TLS files (`--ca-cert`,
    /// `--client-cert`, `--client-key`) and `--token`.
    connection: ClientBuilder,
}

impl Context {
    /// Connects to the broker (with TLS for an https:// --server, and the
    /// token on every call).
    ///
    /// # Errors
    /// The library's error when the address, a TLS file or the token is
    /// bad, or the broker cannot be reached.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(self.connection.clone().connect().await?)
    }

    /// Prints a result: `json()` with `--json`, else `text()` (a newline is
    /// added when it lacks one).
    ///
    /// # Errors
    /// When standard output cannot be written.
    pub(crate) fn emit(
        &self,
        json: impl FnOnce() -> serde_json::Value,
        text: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        if self.json {
            return crate::output::json(&json());
        }
        let mut text = text();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        crate::output::write(text.as_bytes())
    }
}

/// The settings of every connection the command makes.
fn connection(args: &GlobalArgs) -> ClientBuilder {
    let mut builder = Client::builder(args.server.clone());
    if let Some(ca) = &args.ca_cert {
        builder = builder.ca_certificate(ca);
    }
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        builder = builder.client_identity(cert, key);
    }
    if let Some(token) = &args.token {
        builder = builder.bearer_token(token);
    }
    builder
}

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command failed with; `main` prints it as one line.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context {
        connection: connection(&cli.global),
        server: cli.global.server,
        json: cli.global.json,
    };
    match cli.command {
        Command::Publish(args) => publish::run(&ctx, args).await,
        Command::Subscribe(args) => subscribe::run(&ctx, args).await,
        Command::Peek(args) => peek::run(&ctx, args).await,
        Command::Call(args) => call::run(&ctx, args).await,
        Command::Topics(command) => topics::run(&ctx, command).await,
        Command::Subs(command) => subs::run(&ctx, command).await,
        Command::Health => health::run(&ctx).await,
        Command::Bench(command) => bench::run(&ctx, command).await,
    }
}
