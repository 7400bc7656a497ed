//! The broker's settings: command-line flags, each also read from a
//! `TIDINGS_*` environment variable.
//!
//! This is the only module that reads the environment. It parses and
//! checks values; it does not open files, bind sockets or start anything.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::broker::{BrokerConfig, DEFAULT_DELAY_LOOK_AHEAD, DEFAULT_RETENTION_MAX_AGE, Retention};
use crate::storage::SyncPolicy;

/// The default `--listen` address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// The default `--max-message-bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The default `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `--log` directive.
pub const DEFAULT_LOG: &str = "info";

/// The smallest request the transport accepts whatever the message limit.
const MIN_TRANSPORT_LIMIT: usize = 4 * 1024 * 1024;
/// Room for the request's framing around its messages.
const TRANSPORT_SLACK: usize = 64 * 1024;

/// When the broker syncs its log to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// Sync before acknowledging each publish (concurrent publishes share
    /// one sync).
    Always,
    /// Acknowledge once written to the log; sync at this interval.
    Every(Duration),
}

impl SyncInterval {
    /// The storage policy this setting stands for.
    pub fn policy(self) -> SyncPolicy {
        match self {
            Self::Always => SyncPolicy::Always,
            Self::Every(interval) => SyncPolicy::Interval(interval),
        }
    }
}

/// Settings of the `tidings-server` binary and of [`run`](crate::run).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "tidings-server",
    version,
    about = "Tidings: a durable publish/subscribe broker over gRPC"
)]
pub struct Config {
    /// Address to serve gRPC on. Use port 0 to pick a free port; the chosen
    /// address is printed as `listening on <addr>`.
    #[arg(long, env = "TIDINGS_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address to serve the HTTP event bus on (JSON over HTTP/1.1: publish,
    /// pull, ack, nack). Off unless given; port 0 picks a free port,
    /// printed as `http listening on <addr>`.
    #[arg(long, env = "TIDINGS_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// Directory of the message log and subscription state; created when
    /// missing.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = "./tidings-data")]
    pub data_dir: PathBuf,

    /// When to sync the log to disk. `always` (the default) syncs before a
    /// publish is acknowledged, sharing one sync among concurrent
    /// publishes. A duration such as `100ms` or `1s` acknowledges publishes
    /// once written to the log and syncs at that interval: a power loss can
    /// lose the last interval's messages, a process crash cannot.
    #[arg(
        long,
        env = "TIDINGS_SYNC_INTERVAL",
        default_value = "always",
        value_parser = parse_sync_interval,
        value_name = "always|DURATION"
    )]
    pub sync_interval: SyncInterval,

    /// Create a topic when a message is published to one that does not
    /// exist, instead of failing with NOT_FOUND. The environment variable
    /// takes `true`/`false` (or `1`/`0`, `yes`/`no`).
    #[arg(
        long,
        env = "TIDINGS_AUTO_CREATE_TOPICS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub auto_create_topics: bool,

    /// The largest message accepted (payload, key and attributes), in
    /// bytes. Larger messages are refused with INVALID_ARGUMENT.
    #[arg(
        long,
        env = "TIDINGS_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
        value_parser = parse_max_message_bytes,
        value_name = "BYTES"
    )]
    pub max_message_bytes: usize,

    /// How long a topic created without a retention policy keeps its
    /// messages (for example `7d` or `24h`; `0` keeps them forever). Applies
    /// to topics created after it changes.
    #[arg(
        long,
        env = "TIDINGS_RETENTION_MAX_AGE",
        default_value = "7d",
        value_parser = parse_retention_max_age,
        value_name = "DURATION"
    )]
    pub retention_max_age: Duration,

    /// How long shutdown waits for open requests and connections to finish
    /// before it stops waiting and closes storage (for example `10s`).
    #[arg(
        long,
        env = "TIDINGS_SHUTDOWN_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub shutdown_timeout: Duration,

    /// What to log: a tracing filter directive such as `info`, `debug` or
    /// `info,tidings_server=debug`. Logs go to standard error.
    #[arg(
        long = "log",
        env = "TIDINGS_LOG",
        default_value = DEFAULT_LOG,
        value_parser = parse_log_directive,
        value_name = "DIRECTIVE"
    )]
    pub log: String,

    /// How far ahead delayed messages are handed to subscriptions (see
    /// `BrokerConfig::delay_look_ahead`); not a flag: tests shorten it.
    #[arg(skip = DEFAULT_DELAY_LOOK_AHEAD)]
    pub delay_look_ahead: Duration,
}

impl Config {
    /// The defaults, with data in `data_dir`: what tests start a broker
    /// with. Reads no environment variable.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            http_listen: None,
            data_dir: data_dir.into(),
            sync_interval: SyncInterval::Always,
            auto_create_topics: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log: DEFAULT_LOG.to_owned(),
            delay_look_ahead: DEFAULT_DELAY_LOOK_AHEAD,
        }
    }

    /// The settings of the broker core.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            auto_create_topics: self.auto_create_topics,
            max_message_bytes: self.max_message_bytes,
            default_retention: Retention {
                max_age: (!self.retention_max_age.is_zero()).then_some(self.retention_max_age),
                ..Retention::default()
            },
            delay_look_ahead: self.delay_look_ahead,
            ..BrokerConfig::default()
        }
    }

    /// The largest gRPC request the transport decodes, in bytes. It lies
    /// well above `max_message_bytes`, so that an oversized message reaches
    /// the broker and gets its precise INVALID_ARGUMENT rather than a
    /// generic transport error.
    pub fn max_request_bytes(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(2)
            .saturating_add(TRANSPORT_SLACK)
            .max(MIN_TRANSPORT_LIMIT)
    }
}

/// Parses `always` or a duration such as `100ms`.
fn parse_sync_interval(value: &str) -> Result<SyncInterval, String> {
    if value.trim().eq_ignore_ascii_case("always") {
        return Ok(SyncInterval::Always);
    }
    let interval = humantime::parse_duration(value.trim()).map_err(|err| {
        format!("expected `always` or a duration such as `100ms` or `1s` ({err})")
    })?;
    if interval.is_zero() {
        return Err("a zero interval is not allowed; use `always` to sync on every publish".into());
    }
    Ok(SyncInterval::Every(interval))
}

/// Parses a duration such as `10s`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|err| format!("expected a duration such as `500ms` or `10s` ({err})"))
}

/// Parses a retention age: `0` (keep forever), or from 1 s to 100 years.
fn parse_retention_max_age(value: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(value.trim())
        .map_err(|err| format!("expected a duration such as `7d` or `24h`, or 0 ({err})"))?;
    if !age.is_zero()
        && !(Duration::from_secs(1)..=Duration::from_secs(100 * 365 * 86_400)).contains(&age)
    {
        return Err("must be 0 (keep forever) or from 1s to 100 years".into());
    }
    Ok(age)
}

/// Parses a positive byte count.
fn parse_max_message_bytes(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(bytes) => Ok(bytes),
        Err(err) => Err(format!(
            "expected a number of bytes such as `1048576` ({err})"
        )),
    }
}

/// Checks a tracing filter directive.
fn parse_log_directive(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|err| {
            format!("not a valid log filter such as `info` or `tidings_server=debug` ({err})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("tidings-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_for_data_dir() {
        let config = parse(&["--data-dir", "/tmp/x"]).expect("defaults parse");
        assert_eq!(config, Config::for_data_dir("/tmp/x"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.sync_interval, SyncInterval::Always);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        assert!(!config.auto_create_topics);
    }

    #[test]
    fn default_data_dir_is_relative() {
        let config = parse(&[]).expect("defaults parse");
        assert_eq!(config.data_dir, PathBuf::from("./tidings-data"));
    }

    #[test]
    fn sync_interval_accepts_a_duration() {
        let config = parse(&["--sync-interval", "100ms"]).expect("parses");
        assert_eq!(
            config.sync_interval,
            SyncInterval::Every(Duration::from_millis(100))
        );
        assert!(matches!(
            config.sync_interval.policy(),
            SyncPolicy::Interval(interval) if interval == Duration::from_millis(100)
        ));
        let config = parse(&["--sync-interval", "always"]).expect("parses");
        assert!(matches!(config.sync_interval.policy(), SyncPolicy::Always));
    }

    #[test]
    fn bad_sync_interval_is_a_clear_error() {
        let err = parse(&["--sync-interval", "often"]).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("--sync-interval"), "{text}");
        assert!(text.contains("`always` or a duration"), "{text}");
        let err = parse(&["--sync-interval", "0s"]).expect_err("must fail");
        assert!(err.to_string().contains("use `always`"), "{err}");
    }

    #[test]
    fn other_flags_parse() {
        let config = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--auto-create-topics",
            "--max-message-bytes",
            "2048",
            "--shutdown-timeout",
            "2s",
            "--log",
            "debug,h2=info",
        ])
        .expect("parses");
        assert_eq!(config.listen.port(), 0);
        assert!(config.auto_create_topics);
        assert_eq!(config.max_message_bytes, 2048);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(config.log, "debug,h2=info");
        assert!(config.broker_config().auto_create_topics);
        assert_eq!(config.broker_config().max_message_bytes, 2048);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--max-message-bytes", "0"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--shutdown-timeout", "soon"]).is_err());
        assert!(parse(&["--log", "a=b=c"]).is_err());
    }

    #[test]
    fn transport_limit_lies_above_the_message_limit() {
        let mut config = Config::for_data_dir("x");
        assert_eq!(config.max_request_bytes(), 4 * 1024 * 1024);
        config.max_message_bytes = 8 * 1024 * 1024;
        assert!(config.max_request_bytes() > 2 * config.max_message_bytes);
        config.max_message_bytes = usize::MAX;
        assert_eq!(config.max_request_bytes(), usize::MAX);
    }

    #[test]
    fn help_documents_every_flag() {
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for flag in [
            "--listen",
            "--data-dir",
            "--sync-interval",
            "--auto-create-topics",
            "--max-message-bytes",
            "--shutdown-timeout",
            "--log",
            "TIDINGS_SYNC_INTERVAL",
            "power loss",
        ] {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
        }
    }
}
