//! `tidings health`: the broker's standard gRPC health check.
//!
//! Fails (non-zero exit) when the broker is unreachable or not serving.

use anyhow::bail;
use serde_json::json;

use super::Context;
use crate::output;

/// Checks the broker's health and prints it.
///
/// # Errors
/// When the broker cannot be reached or does not report SERVING.
pub(crate) async fn run(ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let serving = client.health().await?;
    if ctx.json {
        output::json(&json!({ "server": ctx.server, "serving": serving }))?;
    } else if serving {
        output::line(&format!("the broker at {} is serving", ctx.server))?;
    }
    if !serving {
        bail!(
            "the broker at {} is not serving (it may be shutting down)",
            ctx.server
        );
    }
    Ok(())
}
