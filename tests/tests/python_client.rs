//! A Python client generated from `proto/` against a real broker: proof that
//! the API works from another language with nothing but the proto files.
//!
//! The script, `tests/python/client_check.py`, generates its code with
//! `grpc_tools.protoc`, then publishes, subscribes, acknowledges and nacks,
//! dead-letters and redrives, commits and calls, and publishes over
//! `PublishStream` with a failed request in the middle, checking every
//! answer; this test runs it and checks that it passed.

use std::time::Duration;

use anyhow::Context as _;
use tidings_tests::{PythonEnv, TestBroker, get_subscription};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_check.py");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn python_client_publishes_subscribes_acks_and_nacks() -> anyhow::Result<()> {
    let env = PythonEnv::ensure_async(env!("CARGO_TARGET_TMPDIR")).await?;
    let broker = TestBroker::start().await?;
    let output = env
        .command(env.python())
        .arg(SCRIPT)
        .arg(broker.addr().to_string())
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, output)
        .await
        .context("the Python client check did not finish in time")?
        .context("cannot run the Python client check")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client_check.py failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains("delivery_attempt 2"), "{stdout}");
    assert!(
        stdout.contains("a second Commit of the input is ABORTED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Call got the responder's Reply"),
        "{stdout}"
    );
    assert!(
        stdout.contains("answered NOT_FOUND in its place"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("python client check: ok"),
        "{stdout}"
    );

    // The script's acknowledgements reached the broker.
    let figures = get_subscription(&broker.client(), "py-inventory").await?;
    assert_eq!((figures.backlog, figures.ack_floor), (0, 2), "{figures:?}");
    Ok(())
}
