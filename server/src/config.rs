//! The broker's settings: command-line flags, each also read from a
//! `TIDINGS_*` environment variable and from a TOML file (`--config`).
//!
//! This is the only module that reads the environment or the config file.
//! It parses and checks values; it does not bind sockets or start
//! anything.
//!
//! # The config file
//!
//! Its keys are the flag names with `_` for `-`; a value is what the flag
//! takes, as a TOML string, number or boolean. Clap does all the parsing:
//! each key the command line and the environment leave unset becomes
//! `--flag value` ahead of the real arguments, so a flag wins over the
//! file, the environment wins over the file (its keys are skipped), and
//! the file wins over the defaults. An unknown key is an error that names
//! it and the file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::broker::{
    BrokerConfig, DEFAULT_DELAY_LOOK_AHEAD, DEFAULT_RETENTION_MAX_AGE, DEFAULT_STREAM_HEARTBEAT,
    Limits, Retention,
};
use crate::storage::SyncPolicy;

mod file;
#[cfg(test)]
mod fuzz;

pub use file::ConfigError;

/// The default `--listen` address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// The default `--max-message-bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The default `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `--min-free-disk`: 1 GiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;
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
    about = "Tidings: a durable publish/subscribe broker over gRPC",
    after_help = "`tidings-server hash-token` prints a new bearer token and its SHA-256 for \
                  --auth-file (see `tidings-server hash-token --help`)."
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

    /// Address to serve `GET /metrics` on, in the Prometheus text format.
    /// Off unless given; port 0 picks a free port, printed as `metrics
    /// listening on <addr>`.
    #[arg(long, env = "TIDINGS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

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

    /// Below this much free space on the disk of the data directory,
    /// publishes are refused with RESOURCE_EXHAUSTED (acks, reads and
    /// deletions go on) until space is freed: bytes, or with a unit such as
    /// `512MiB` or `1GiB`; `0` turns the check off.
    #[arg(
        long,
        env = "TIDINGS_MIN_FREE_DISK",
        default_value = "1GiB",
        value_parser = parse_min_free_disk,
        value_name = "BYTES"
    )]
    pub min_free_disk: u64,

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

    /// The most client connections open at once, gRPC and the HTTP bus
    /// together; a connection over it is answered RESOURCE_EXHAUSTED (429
    /// on the HTTP bus) on every request. Unlimited unless set.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", value_name = "N", value_parser = parse_limit)]
    pub max_connections: Option<usize>,

    /// The most topics the broker holds; creating one more is
    /// RESOURCE_EXHAUSTED. Unlimited unless set.
    #[arg(long, env = "TIDINGS_MAX_TOPICS", value_name = "N", value_parser = parse_limit)]
    pub max_topics: Option<usize>,

    /// The most subscriptions the broker holds; creating one more is
    /// RESOURCE_EXHAUSTED. Unlimited unless set.
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS", value_name = "N", value_parser = parse_limit)]
    pub max_subscriptions: Option<usize>,

    /// The most `Subscribe` streams open at once, across all
    /// subscriptions; one more is RESOURCE_EXHAUSTED. Unlimited unless set.
    #[arg(long, env = "TIDINGS_MAX_OPEN_STREAMS", value_name = "N", value_parser = parse_limit)]
    pub max_open_streams: Option<usize>,

    /// How often an idle `Subscribe` stream gets an empty response, so that
    /// proxies and load balancers keep it open and clients can tell a live
    /// stream from a dead one (such as `30s`; `0` sends none).
    #[arg(
        long,
        env = "TIDINGS_STREAM_HEARTBEAT",
        default_value = "30s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub stream_heartbeat: Duration,

    /// Repair damaged storage before starting: keep every readable record
    /// and table, move unreadable files into `lost/` in the data
    /// directory, log per topic how many messages were kept and lost, then
    /// start as usual. Only on the command line: never from the
    /// environment or the config file, so that damage is never repaired
    /// unseen.
    #[arg(long)]
    pub repair: bool,
    /// A PEM file of the broker's certificate (its chain, the broker's own
    /// first): with --tls-key, every listener (gRPC, the HTTP bus,
    /// metrics) speaks TLS only.
    #[arg(long, env = "TIDINGS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// A PEM file of the private key of --tls-cert (PKCS #8, PKCS #1 or
    /// SEC1).
    #[arg(long, env = "TIDINGS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// A PEM file of the CA certificates that sign client certificates:
    /// every listener then requires a client certificate signed by one of
    /// them (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = "TIDINGS_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// How far ahead delayed messages are handed to subscriptions (see
    /// `BrokerConfig::delay_look_ahead`); not a flag: tests shorten it.
    #[arg(skip = DEFAULT_DELAY_LOOK_AHEAD)]
    pub delay_look_ahead: Duration,

    /// A TOML file of settings: keys are the flag names with `_` for `-`
    /// (`data_dir = "/var/lib/tidings"`, `sync_interval = "100ms"`,
    /// `max_message_bytes = "4MiB"`). Flags and environment variables win
    /// over it; an unknown key is an error.
    #[arg(long, env = "TIDINGS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A TOML file of principals (a bearer token's SHA-256, an mTLS
    /// certificate subject) and their grants (publish, subscribe, admin on
    /// topic and subscription name patterns). With it, every request needs
    /// credentials and everything not granted is denied; without it, the
    /// broker is open. SIGHUP reloads it.
    #[arg(long, env = "TIDINGS_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
}

impl Config {
    /// The defaults, with data in `data_dir`: what tests start a broker
    /// with. Reads no environment variable.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            http_listen: None,
            metrics_listen: None,
            data_dir: data_dir.into(),
            sync_interval: SyncInterval::Always,
            auto_create_topics: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log: DEFAULT_LOG.to_owned(),
            delay_look_ahead: DEFAULT_DELAY_LOOK_AHEAD,
            config: None,
            auth_file: None,
            stream_heartbeat: DEFAULT_STREAM_HEARTBEAT,
            max_connections: None,
            max_topics: None,
            max_subscriptions: None,
            max_open_streams: None,
            repair: false,
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
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
            stream_heartbeat: (!self.stream_heartbeat.is_zero()).then_some(self.stream_heartbeat),
            limits: Limits {
                topics: self.max_topics,
                subscriptions: self.max_subscriptions,
                open_streams: self.max_open_streams,
            },
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

/// Parses a positive byte count: a number, or one with a unit such as
/// `1MiB` or `512KB`.
fn parse_max_message_bytes(value: &str) -> Result<usize, String> {
    let value = value.trim();
    let bytes = match value.parse::<u64>() {
        Ok(bytes) => bytes,
        Err(_) => value
            .parse::<bytesize::ByteSize>()
            .map_err(|err| {
                format!("expected a number of bytes such as `1048576` or `1MiB` ({err})")
            })?
            .as_u64(),
    };
    match usize::try_from(bytes) {
        Ok(0) => Err("must be at least 1".into()),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err("is too large for this machine".into()),
    }
}

/// Parses a byte count that may be 0: a number, or one with a unit.
fn parse_min_free_disk(value: &str) -> Result<u64, String> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(bytes) => Ok(bytes),
        Err(_) => value
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|err| format!("expected a number of bytes such as `1GiB` or `0` ({err})")),
    }
}

/// Parses a limit: a positive count.
fn parse_limit(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave the flag out for no limit)".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(format!("expected a count such as `1000` ({err})")),
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
    fn a_config_file_fills_in_what_flags_leave_unset() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("tidings.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/tidings\"\nhttp_listen = \"127.0.0.1:8080\"\n\
             auto_create_topics = true\nmax_message_bytes = \"2MiB\"\nshutdown_timeout = \"3s\"\n",
        )
        .expect("written");
        let path = path.to_str().expect("a UTF-8 path");
        let config = Config::load_from([
            "tidings-server",
            "--config",
            path,
            "--shutdown-timeout",
            "1s",
        ])
        .expect("loads");
        assert_eq!(config.data_dir, PathBuf::from("/srv/tidings"));
        assert_eq!(config.http_listen.map(|a| a.port()), Some(8080));
        assert!(config.auto_create_topics);
        assert_eq!(config.max_message_bytes, 2 * 1024 * 1024);
        assert_eq!(
            config.shutdown_timeout,
            Duration::from_secs(1),
            "the flag wins"
        );
        let without = Config::load_from(["tidings-server", "--data-dir", "d"]).expect("loads");
        assert_eq!(without, Config::for_data_dir("d"));
    }

    #[test]
    fn byte_sizes_take_units() {
        assert_eq!(parse_max_message_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_max_message_bytes("512"), Ok(512));
        assert!(parse_max_message_bytes("0B").is_err());
        assert!(parse_max_message_bytes("lots").is_err());
    }

    #[test]
    fn min_free_disk_takes_units_and_zero() {
        assert_eq!(parse_min_free_disk("1GiB"), Ok(1 << 30));
        assert_eq!(parse_min_free_disk("0"), Ok(0));
        assert_eq!(parse_min_free_disk("512MiB"), Ok(512 << 20));
        assert!(parse_min_free_disk("plenty").is_err());
        let config = parse(&["--min-free-disk", "2GiB"]).expect("parses");
        assert_eq!(config.min_free_disk, 2 << 30);
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
            "--http-listen",
            "--config",
            "--auth-file",
            "TIDINGS_AUTH_FILE",
            "hash-token",
            "--tls-cert",
            "--tls-key",
            "--tls-client-ca",
            "TIDINGS_TLS_CLIENT_CA",
            "TIDINGS_SYNC_INTERVAL",
            "power loss",
        ] {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
        }
    }
}
