//! The config file (`--config`): its keys become flags ahead of the real
//! arguments, for clap to parse with everything else (see the parent
//! module's documentation).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};

use super::Config;

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or an environment variable is wrong (or `--help` was asked
    /// for): clap's own message.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the TOML parser says, with the line.
        message: String,
    },
    /// The config file names no setting.
    #[error(
        "unknown key `{key}` in the config file {}; keys are the flag names with `_` for `-`, \
         such as data_dir or sync_interval (see tidings-server --help)",
        path.display()
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value in the config file is not one its flag takes.
    #[error("in the config file {}, {key}: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// The settings from the command line, the environment and the config
    /// file, in that order of precedence.
    ///
    /// # Errors
    /// [`ConfigError`]; for [`ConfigError::Args`], `exit()` prints clap's
    /// message (or the help) and exits as clap does.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// As [`Config::load`], with these arguments (the first is the program
    /// name).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = <Self as CommandFactory>::command().args_override_self(true);
        let matches = command.clone().try_get_matches_from(&args)?;
        let config = Self::from_arg_matches(&matches)?;
        let Some(path) = config.config.clone() else {
            return Ok(config);
        };
        let file = file_args(&command, &matches, &path)?;
        let mut all = Vec::with_capacity(args.len() + file.len());
        all.extend(args.first().cloned());
        all.extend(file);
        all.extend(args.into_iter().skip(1));
        // The command line and the environment parsed once already: what
        // fails now is a value from the file.
        let in_file = |err: clap::Error| {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or_default();
            ConfigError::Value {
                path: path.clone(),
                key: "a value".to_owned(),
                message: first.trim_start_matches("error: ").to_owned(),
            }
        };
        let matches = command.try_get_matches_from(all).map_err(in_file)?;
        Self::from_arg_matches(&matches).map_err(in_file)
    }
}

/// Flags the file cannot set.
const COMMAND_LINE_ONLY: [&str; 2] = ["config", "repair"];

/// The config file's settings as flags, for every key the command line and
/// the environment left unset.
fn file_args(
    command: &clap::Command,
    given: &clap::ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Toml {
            path: path.to_owned(),
            message: err.to_string().trim().to_owned(),
        })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && !COMMAND_LINE_ONLY.contains(&key.as_str()))
            .and_then(|arg| Some((arg, arg.get_long()?)));
        let Some((arg, long)) = arg else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            });
        };
        if matches!(
            given.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |message: &str| ConfigError::Value {
            path: path.to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        let flag = OsString::from(format!("--{long}"));
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => flags.push(flag),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(bad("expected true or false")),
            (_, toml::Value::String(text)) => flags.extend([flag, text.into()]),
            (_, toml::Value::Integer(n)) => flags.extend([flag, n.to_string().into()]),
            (_, toml::Value::Float(n)) => flags.extend([flag, n.to_string().into()]),
            (_, toml::Value::Boolean(b)) => flags.extend([flag, b.to_string().into()]),
            _ => return Err(bad("expected a string, a number or a boolean")),
        }
    }
    Ok(flags)
}
