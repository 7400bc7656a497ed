//! Turns the error a command failed with into what `tidings` reports: one
//! line on standard error (`tidings: …`, or a JSON object with `--json`),
//! a status code, and the exit status.
//!
//! The broker's messages are kept, except that the common ones, which name
//! gRPC calls (`create it first (AdminService.CreateTopic)`), are phrased as
//! the `tidings` command that helps. Transport details are reduced to their
//! root cause. Nothing here prints.

use std::fmt;

use serde_json::json;
use tidings_client::Error as ClientError;

/// The exit status of a failed command.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// The exit status of a command stopped by Ctrl-C before it was done: 128
/// plus SIGINT's number, as shells report a process that SIGINT ended.
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// A failure of a command itself, as opposed to a failed call: what to
/// say, the code `--json` reports, the exit status, and the library error
/// behind it, if any (its reason follows the message).
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: tonic::Code,
    exit: u8,
    source: Option<ClientError>,
}

impl Failure {
    /// A failure with this code and message; exit status 1.
    pub(crate) fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
            exit: EXIT_FAILURE,
            source: None,
        }
    }

    /// A failure caused by `source`, whose code it reports; its reason is
    /// printed after `message`.
    pub(crate) fn from_client(message: impl Into<String>, source: ClientError) -> Self {
        Self {
            message: message.into(),
            code: source.code(),
            exit: EXIT_FAILURE,
            source: Some(source),
        }
    }

    /// Ctrl-C stopped the command before it was done: CANCELLED, exit
    /// status 130.
    pub(crate) fn interrupted(message: impl Into<String>) -> Self {
        Self {
            exit: EXIT_INTERRUPTED,
            ..Self::new(tonic::Code::Cancelled, message)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// What `tidings` reports about a failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// The gRPC status code: the broker's, UNAVAILABLE when it could not
    /// be reached, or the command's own (CANCELLED for Ctrl-C); UNKNOWN
    /// for anything else, such as an unreadable file.
    pub(crate) code: tonic::Code,
    /// The reason, on one line.
    pub(crate) message: String,
    /// The exit status.
    pub(crate) exit: u8,
}

impl Report {
    /// The report of `err`; `server` is the broker's address, named when
    /// it could not be reached.
    pub(crate) fn of(err: &anyhow::Error, server: &str) -> Self {
        let mut parts: Vec<String> = Vec::new();
        let mut code = None;
        let mut exit = EXIT_FAILURE;
        for cause in err.chain() {
            if let Some(failure) = cause.downcast_ref::<Failure>() {
                if code.is_none() {
                    code = Some(failure.code);
                    exit = failure.exit;
                }
                if !failure.message.is_empty() {
                    parts.push(failure.message.clone());
                }
                continue;
            }
            if let Some(client_err) = cause.downcast_ref::<ClientError>() {
                code.get_or_insert(client_err.code());
                parts.push(client_reason(client_err, server));
                break;
            }
            parts.push(cause.to_string());
        }
        Self {
            code: code.unwrap_or(tonic::Code::Unknown),
            message: one_line(&parts.join(": ")),
            exit,
        }
    }

    /// The line for people: `tidings: <reason>`.
    pub(crate) fn text(&self) -> String {
        format!("tidings: {}", self.message)
    }

    /// The line for programs: `{"code":"NOT_FOUND","message":"…"}`.
    pub(crate) fn json(&self) -> String {
        json!({ "code": code_name(self.code), "message": self.message }).to_string()
    }
}

/// The reason of a library error: the broker's message (phrased for the
/// command line) for a status, the address and root cause when the broker
/// could not be reached.
fn client_reason(err: &ClientError, server: &str) -> String {
    match err {
        ClientError::Connect { url, .. } => format!(
            "cannot connect to the broker at {url} ({}); is it running? Give its address with --server or TIDINGS_SERVER",
            root_cause(err)
        ),
        ClientError::Status(status)
            if status.code() == tonic::Code::Unavailable
                && status.message().starts_with("broker is shutting down") =>
        {
            format!("the broker at {server} is shutting down; try again once it is back")
        }
        ClientError::Status(status) if status.code() == tonic::Code::Unavailable => format!(
            "the broker at {server} is unavailable ({}); is it running?",
            transport_message(status)
        ),
        ClientError::Status(status) => advise(status.code(), &status_message(status)),
        ClientError::GaveUp { cause, .. } | ClientError::Unsettled { cause, .. } => {
            format!("{err}: {}", client_reason(cause, server))
        }
        ClientError::TlsFile { source, .. } => format!("{err}: {source}"),
        other => other.to_string(),
    }
}

/// The broker's message with its advice phrased as `tidings` commands:
/// the broker names its RPCs, which a command-line user never calls.
fn advise(code: tonic::Code, message: &str) -> String {
    use tonic::Code;
    let quoted = |prefix: &str, suffix: &str| quoted_name(message, prefix, suffix);
    match code {
        Code::NotFound => {
            if let Some(topic) = quoted("topic \"", " does not exist") {
                return format!(
                    "topic \"{topic}\" does not exist; create it with `tidings topics create {topic}`"
                );
            }
            if let Some(sub) = quoted("subscription \"", " does not exist") {
                return format!(
                    "subscription \"{sub}\" does not exist; create it with \
                     `tidings subs create {sub} --topic TOPIC`, or give `tidings sub` its --topic"
                );
            }
        }
        Code::AlreadyExists => {
            if let Some(topic) = quoted("topic \"", " already exists") {
                return format!(
                    "topic \"{topic}\" already exists; see it with `tidings topics describe {topic}`"
                );
            }
            if let Some(sub) = quoted("subscription \"", " already exists") {
                return format!(
                    "subscription \"{sub}\" already exists; see it with `tidings subs describe {sub}`"
                );
            }
        }
        Code::FailedPrecondition => {
            if let Some(start) =
                message.strip_suffix("use another subscription name or leave the topic empty")
            {
                return format!("{start}use another subscription name, or leave out --topic");
            }
        }
        Code::Unimplemented => {
            return format!(
                "the broker does not offer this (it may be older than this tidings): {message}"
            );
        }
        Code::InvalidArgument => {
            return message.replace(
                "(--max-message-bytes)",
                "(the broker's --max-message-bytes)",
            );
        }
        _ => {}
    }
    message.to_owned()
}

/// The name in `message` between `prefix` (which ends with a quote) and
/// the closing quote, when `suffix` follows that quote.
fn quoted_name<'a>(message: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let (name, after) = message.strip_prefix(prefix)?.split_once('"')?;
    after.starts_with(suffix).then_some(name)
}

/// The broker's message, or the code's description when it sent none.
fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        status.message().to_owned()
    }
}

/// The message of a status the transport made, with its root cause
/// (`tcp connect error: Connection refused (os error 111)`).
fn transport_message(status: &tonic::Status) -> String {
    let message = status_message(status);
    let Some(source) = std::error::Error::source(status) else {
        return message;
    };
    let root = root_cause(source);
    if message.contains(&root) {
        message
    } else {
        format!("{message}: {root}")
    }
}

/// The innermost source of `err`, such as `Connection refused (os error 111)`.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Joins the lines of `text` so that the reason stays one line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A code as gRPC spells it: `NOT_FOUND`, `UNAVAILABLE`, …
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether the command failed because standard output was closed (the
/// reader of a pipe went away). A broken pipe under a library error is the
/// network's (a broker that refused a TLS handshake, say), not ours.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let from_the_network = err
        .chain()
        .any(|cause| cause.downcast_ref::<ClientError>().is_some());
    !from_the_network
        && err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use tonic::{Code, Status};

    use super::*;

    fn report(err: impl Into<anyhow::Error>) -> Report {
        Report::of(&err.into(), "http://h:1")
    }

    fn status(code: Code, message: &str) -> ClientError {
        ClientError::Status(Status::new(code, message))
    }

    #[test]
    fn a_missing_topic_is_phrased_as_the_command_that_creates_it() {
        let err = status(
            Code::NotFound,
            "topic \"invoices\" does not exist; create it first (AdminService.CreateTopic)",
        );
        let report = report(err);
        assert_eq!(
            report.text(),
            "tidings: topic \"invoices\" does not exist; create it with `tidings topics create invoices`"
        );
        assert_eq!(report.code, Code::NotFound);
        assert_eq!(report.exit, 1);
    }

    #[test]
    fn other_common_refusals_name_commands_not_rpcs() {
        let cases = [
            (
                status(
                    Code::NotFound,
                    "subscription \"billing\" does not exist; create it \
                     (AdminService.CreateSubscription) or pass a topic to Subscribe",
                ),
                "subscription \"billing\" does not exist; create it with `tidings subs create \
                 billing --topic TOPIC`, or give `tidings sub` its --topic",
            ),
            (
                status(Code::AlreadyExists, "topic \"orders\" already exists"),
                "topic \"orders\" already exists; see it with `tidings topics describe orders`",
            ),
            (
                status(
                    Code::FailedPrecondition,
                    "subscription \"s\" is on topic \"a\", not \"b\"; use another subscription \
                     name or leave the topic empty",
                ),
                "subscription \"s\" is on topic \"a\", not \"b\"; use another subscription \
                 name, or leave out --topic",
            ),
            (
                status(
                    Code::Unavailable,
                    "broker is shutting down; reconnect and retry",
                ),
                "the broker at http://h:1 is shutting down; try again once it is back",
            ),
            (
                status(
                    Code::InvalidArgument,
                    "the limit is 5 bytes (--max-message-bytes)",
                ),
                "the limit is 5 bytes (the broker's --max-message-bytes)",
            ),
            // Anything else keeps the broker's words.
            (
                status(Code::NotFound, "topic \"x\" was deleted"),
                "topic \"x\" was deleted",
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(report(err).message, expected);
        }
    }

    #[test]
    fn json_reports_carry_the_code_and_the_message() {
        let report = report(status(Code::NotFound, "gone"));
        let value: serde_json::Value =
            serde_json::from_str(&report.json()).expect("the report is JSON");
        assert_eq!(
            value,
            serde_json::json!({ "code": "NOT_FOUND", "message": "gone" })
        );
        assert!(!report.json().contains('\n'));
    }

    #[test]
    fn failures_give_their_code_and_exit_status_and_the_cause_follows() {
        let interrupted = report(Failure::interrupted("interrupted after 2 of 5 messages"));
        assert_eq!(
            (interrupted.code, interrupted.exit),
            (Code::Cancelled, EXIT_INTERRUPTED)
        );
        let caused = report(Failure::from_client(
            "stored 3 of 9 messages",
            status(Code::InvalidArgument, "message 4 is too large"),
        ));
        assert_eq!(
            caused.message,
            "stored 3 of 9 messages: message 4 is too large"
        );
        assert_eq!(caused.code, Code::InvalidArgument);
        let local = report(anyhow::anyhow!("cannot read x"));
        assert_eq!(local.code, Code::Unknown);
    }

    #[test]
    fn context_comes_first_and_all_stays_on_one_line() {
        let err = Err::<(), _>(status(Code::Internal, "a\nb"))
            .context("cannot read standard input")
            .expect_err("is an error");
        assert_eq!(report(err).message, "cannot read standard input: a b");
    }

    #[test]
    fn unavailable_names_the_server() {
        let text = report(status(Code::Unavailable, "")).message;
        assert!(text.contains("http://h:1"), "{text}");
    }

    #[test]
    fn a_transport_failure_shows_its_root_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(refused));
        let text = report(ClientError::Status(status)).message;
        assert!(
            text.starts_with("the broker at http://h:1 is unavailable (tcp connect error: "),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
