//! `tidings`: the command-line tool of the Tidings broker.
//!
//! Publishes and receives messages and manages topics and subscriptions,
//! through the `tidings_client` library only (it never speaks gRPC
//! itself). The layout: [`args`] declares the command line, [`commands`]
//! holds one module per command, [`output`] turns results into tables,
//! lines and JSON, [`values`] parses flag values, and [`failure`] turns an
//! error into the one line printed on standard error and the exit status.

mod args;
mod commands;
mod failure;
mod output;
mod values;

use std::process::ExitCode;

use clap::Parser as _;

// One thread: every command waits on the network, and the bench workloads
// share the machine with the broker they measure. Measured against the
// multi-threaded runtime on two cores, it used a third less CPU in `bench
// e2e` and was as fast or faster in every workload.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let server = cli.global.server.clone();
    let json = cli.global.json;
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`tidings sub … | head -1`):
        // nothing more to say, and nobody to say it to.
        Err(err) if failure::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let report = failure::Report::of(&err, &server);
            eprintln!("{}", if json { report.json() } else { report.text() });
            ExitCode::from(report.exit)
        }
    }
}
