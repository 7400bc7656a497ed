//! Turns the error a command failed with into the one line `tidings`
//! prints on standard error.
//!
//! The broker's own message is shown as it is (it already names the topic
//! or subscription and says what to do); transport details are reduced to
//! their root cause. Nothing here prints.

use tidings_client::Error as ClientError;

/// The reason to print after `tidings: `, on one line. `server` is the
/// broker's address, named when it could not be reached.
pub(crate) fn reason(err: &anyhow::Error, server: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(client_err) = cause.downcast_ref::<ClientError>() {
            parts.push(client_reason(client_err, server));
            break;
        }
        parts.push(cause.to_string());
    }
    one_line(&parts.join(": "))
}

/// The reason of a library error: the broker's message for a status, the
/// address and root cause when the broker could not be reached.
fn client_reason(err: &ClientError, server: &str) -> String {
    match err {
        ClientError::Connect { url, .. } => format!(
            "cannot connect to the broker at {url} ({}); is it running? Give its address with --server or TIDINGS_SERVER",
            root_cause(err)
        ),
        ClientError::Status(status) if status.code() == tonic::Code::Unavailable => format!(
            "the broker at {server} is unavailable ({}); is it running?",
            status_message(status)
        ),
        ClientError::Status(status) => status_message(status),
        other => other.to_string(),
    }
}

/// The broker's message, or the code's description when it sent none.
fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        status.message().to_owned()
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

/// Whether the command failed because standard output was closed (the
/// reader of a pipe went away).
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn status_shows_the_brokers_message() {
        let err = anyhow::Error::from(ClientError::Status(tonic::Status::not_found(
            "topic \"x\" does not exist",
        )));
        assert_eq!(reason(&err, "http://h:1"), "topic \"x\" does not exist");
    }

    #[test]
    fn context_comes_first_and_all_stays_on_one_line() {
        let err = Err::<(), _>(ClientError::Status(tonic::Status::internal("a\nb")))
            .context("cannot read standard input")
            .expect_err("is an error");
        assert_eq!(
            reason(&err, "http://h:1"),
            "cannot read standard input: a b"
        );
    }

    #[test]
    fn unavailable_names_the_server() {
        let err = anyhow::Error::from(ClientError::Status(tonic::Status::unavailable("")));
        let text = reason(&err, "http://h:1");
        assert!(text.contains("http://h:1"), "{text}");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
