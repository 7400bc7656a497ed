//! [`Error`]: what every call of this crate can fail with.
//!
//! The broker's `tonic::Status` is kept whole as the error's source, never
//! flattened to a string. This module only describes failures; it does not
//! retry, log or decide anything.

use std::error::Error as _;

/// What a call of this crate can fail with.
///
/// [`Error::code`] gives a gRPC code for every variant, so callers can
/// branch on `NOT_FOUND`, `ALREADY_EXISTS` and so on without matching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker address is not a valid URL.
    #[error("broker address {url:?} is not valid; use a URL such as http://localhost:50051")]
    InvalidUrl {
        /// The address given.
        url: String,
        /// Why it was rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection to the broker could be made.
    #[error("cannot connect to the broker at {url}; is it running?")]
    Connect {
        /// The address dialled.
        url: String,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// A TLS file (a CA certificate, a client certificate or its key)
    /// cannot be read or holds no PEM of its kind.
    #[error("cannot use the {what} file {}", path.display())]
    TlsFile {
        /// What the file should hold, such as `CA certificate`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The broker answered a call with an error status (or the call failed
    /// on the way, which `tonic` also reports as a status).
    #[error("the broker answered {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[source] tonic::Status),
    /// An argument was refused before anything was sent to the broker.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The [`Publisher`](crate::Publisher) or
    /// [`Subscriber`](crate::Subscriber) was closed; make a new one.
    #[error("the publisher or subscriber is closed; create a new one to carry on")]
    Closed,
    /// The [`Publisher`](crate::Publisher)'s queue is full and it was built
    /// to fail rather than wait
    /// ([`WhenQueueFull::Fail`](crate::WhenQueueFull::Fail)); the message
    /// was not queued.
    #[error(
        "the publisher's queue is full ({max_messages} messages or {max_bytes} bytes); \
         await earlier publishes, or raise max_queued_messages or max_queued_bytes"
    )]
    QueueFull {
        /// The publisher's `max_queued_messages`.
        max_messages: usize,
        /// The publisher's `max_queued_bytes`.
        max_bytes: usize,
    },
    /// An ordered [`Publisher`](crate::Publisher) (`max_in_flight(1)`) did
    /// not send this message because an earlier one failed; it sends
    /// nothing until [`Publisher::resume`](crate::Publisher::resume) is
    /// called, so that the failed messages can be published again first.
    #[error(
        "not sent: an earlier message of this ordered publisher failed; \
         call resume(), then publish the failed messages again, in order"
    )]
    Paused {
        /// The failure that paused the publisher.
        #[source]
        cause: Box<Error>,
    },
    /// A settlement (ack, nack or lease extension) was given up: the broker
    /// could not be reached, or did not answer in time, through `attempts`
    /// tries, and the subscriber was closing. Its message may be delivered
    /// again.
    #[error(
        "given up after {attempts} attempts to reach the broker; \
         the message may be delivered again"
    )]
    GaveUp {
        /// How many times it was sent.
        attempts: u32,
        /// The last failure.
        #[source]
        cause: Box<Error>,
    },
    /// Acks, rejects or nacks were not stored: the broker refused some (a
    /// non-retryable status such as `NOT_FOUND` or `FAILED_PRECONDITION`)
    /// and others were given up while closing. Their messages may be
    /// delivered again. Returned by
    /// [`Subscriber::flush`](crate::Subscriber::flush),
    /// [`Subscriber::close`](crate::Subscriber::close) and
    /// [`Subscriber::shutdown`](crate::Subscriber::shutdown).
    #[error(
        "{total} {what} not stored ({refused} refused by the broker, {given_up} given up \
         after retries), so {them} may be delivered again",
        total = refused + given_up,
        what = if refused + given_up == 1 { "ack, reject or nack was" } else { "acks, rejects or nacks were" },
        them = if refused + given_up == 1 { "its message" } else { "their messages" },
    )]
    Unsettled {
        /// How many the broker refused.
        refused: u64,
        /// How many were given up (the broker unreachable or too slow
        /// while the subscriber was closing).
        given_up: u64,
        /// The first failure: the broker's refusal, or
        /// [`Error::GaveUp`].
        #[source]
        cause: Box<Error>,
    },
}

impl Error {
    /// The gRPC status code of the failure: the broker's code for
    /// [`Error::Status`], `UNAVAILABLE` when no connection could be made,
    /// `INVALID_ARGUMENT` for a bad address, argument or TLS file, `CANCELLED` for
    /// [`Error::Closed`], `RESOURCE_EXHAUSTED` for [`Error::QueueFull`] and
    /// `FAILED_PRECONDITION` for [`Error::Paused`], and the code of the
    /// cause for [`Error::GaveUp`] and [`Error::Unsettled`].
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidUrl { .. } | Self::InvalidArgument(_) | Self::TlsFile { .. } => {
                tonic::Code::InvalidArgument
            }
            Self::Connect { .. } => tonic::Code::Unavailable,
            Self::Status(status) => status.code(),
            Self::Closed => tonic::Code::Cancelled,
            Self::QueueFull { .. } => tonic::Code::ResourceExhausted,
            Self::Paused { .. } => tonic::Code::FailedPrecondition,
            Self::GaveUp { cause, .. } | Self::Unsettled { cause, .. } => cause.code(),
        }
    }

    /// Whether a [`Commit`](crate::Commit) was refused because a message
    /// it acknowledges was settled already (`ABORTED`): its work was done,
    /// by this consumer or another, and nothing of it was stored.
    pub fn is_aborted(&self) -> bool {
        self.code() == tonic::Code::Aborted
    }

    /// The broker's status, when the broker answered (for
    /// [`Error::GaveUp`] and [`Error::Unsettled`], that of the cause).
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(status) => Some(status),
            Self::GaveUp { cause, .. } | Self::Unsettled { cause, .. } => cause.status(),
            _ => None,
        }
    }

    /// A copy of this error, for handing one batch's failure to every
    /// message of the batch. Transport errors cannot be cloned, so their
    /// copies become [`Error::Status`] with the same code and text.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Status(status) => Self::Status(status.clone()),
            Self::InvalidArgument(message) => Self::InvalidArgument(message.clone()),
            Self::Closed => Self::Closed,
            Self::QueueFull {
                max_messages,
                max_bytes,
            } => Self::QueueFull {
                max_messages: *max_messages,
                max_bytes: *max_bytes,
            },
            Self::Paused { cause } => Self::Paused {
                cause: Box::new(cause.duplicate()),
            },
            Self::GaveUp { attempts, cause } => Self::GaveUp {
                attempts: *attempts,
                cause: Box::new(cause.duplicate()),
            },
            Self::Unsettled {
                refused,
                given_up,
                cause,
            } => Self::Unsettled {
                refused: *refused,
                given_up: *given_up,
                cause: Box::new(cause.duplicate()),
            },
            other => Self::Status(tonic::Status::new(other.code(), other.to_string())),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// The result of a call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a failed call may succeed when made again on a new connection:
/// `UNAVAILABLE` (the broker is restarting or unreachable), or a failure of
/// the transport itself (a status that `tonic` built from a connection error
/// carries that error as its source; statuses sent by the broker carry none).
pub(crate) fn is_retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => status.source().is_some(),
        _ => false,
    }
}

/// Whether a failed settlement (`Ack`, `Nack`, `ModifyAckDeadline`, all
/// idempotent) is worth sending again: what [`is_retryable`] says, and
/// also a timeout (the broker's `DEADLINE_EXCEEDED`, or the client's own
/// request timeout, which `tonic` reports as `CANCELLED`) and an overloaded
/// broker (`RESOURCE_EXHAUSTED`).
pub(crate) fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    is_retryable(status)
        || matches!(
            status.code(),
            Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
        )
}

/// Whether a failed call certainly never reached the broker: the channel
/// could not open a connection (refused, unreachable, the connect timeout
/// passed, a TLS handshake failed), so the request was never written.
///
/// `tonic` reports such a failure as `UNAVAILABLE` with the connector's
/// [`tonic::ConnectError`] in the status's source chain. Every other
/// failure — a status the broker sent (which has no source), a connection
/// that broke during the call, a request timeout — may come after the
/// broker received the request.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_its_code_and_source() {
        let err = Error::from(tonic::Status::not_found("topic \"x\" does not exist"));
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(
            err.status().map(tonic::Status::message),
            Some("topic \"x\" does not exist")
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn duplicate_keeps_code_and_message() {
        let err = Error::from(tonic::Status::invalid_argument("message too large"));
        let copy = err.duplicate();
        assert_eq!(copy.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            copy.status().map(tonic::Status::message),
            Some("message too large")
        );
        assert!(matches!(Error::Closed.duplicate(), Error::Closed));
    }

    #[test]
    fn closed_and_invalid_argument_have_codes() {
        assert_eq!(Error::Closed.code(), tonic::Code::Cancelled);
        let err = Error::InvalidArgument("bad".into());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.status().is_none());
    }

    #[test]
    fn only_unavailable_and_transport_failures_are_retryable() {
        assert!(is_retryable(&tonic::Status::unavailable("shutting down")));
        assert!(!is_retryable(&tonic::Status::not_found("gone")));
        // The broker's own INTERNAL carries no source: not retried.
        assert!(!is_retryable(&tonic::Status::internal("bug")));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let transport = tonic::Status::from_error(Box::new(io));
        assert_eq!(transport.code(), tonic::Code::Unknown);
        assert!(is_retryable(&transport));
    }

    #[test]
    fn timeouts_and_overload_are_transient_for_settlements() {
        for status in [
            tonic::Status::unavailable("restarting"),
            tonic::Status::deadline_exceeded("too slow"),
            tonic::Status::resource_exhausted("busy"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            assert!(is_transient(&status), "{status:?}");
        }
        for status in [
            tonic::Status::failed_precondition("push subscription"),
            tonic::Status::invalid_argument("bad ack_id"),
            tonic::Status::not_found("gone"),
        ] {
            assert!(!is_transient(&status), "{status:?}");
        }
    }

    #[test]
    fn unsettled_counts_what_failed_and_keeps_the_cause() {
        let err = Error::Unsettled {
            refused: 2,
            given_up: 1,
            cause: Box::new(Error::from(tonic::Status::failed_precondition("no"))),
        };
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.to_string(),
            "3 acks, rejects or nacks were not stored (2 refused by the broker, 1 given up after \
             retries), so their messages may be delivered again"
        );
        assert!(std::error::Error::source(&err).is_some());
        let gave_up = Error::GaveUp {
            attempts: 5,
            cause: Box::new(Error::from(tonic::Status::cancelled("Timeout expired"))),
        };
        assert_eq!(gave_up.duplicate().code(), tonic::Code::Cancelled);
        assert!(gave_up.to_string().contains("5 attempts"), "{gave_up}");
    }

    #[test]
    fn only_a_failure_to_connect_was_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        let status = tonic::Status::from_error(Box::new(connect));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(never_sent(&status));

        // The broker's own UNAVAILABLE (say it is shutting down) came
        // after it read the request.
        assert!(!never_sent(&tonic::Status::unavailable("shutting down")));
        // A connection that broke during the call.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&tonic::Status::from_error(Box::new(reset))));
    }

    #[test]
    fn new_variants_have_codes_and_copies() {
        let full = Error::QueueFull {
            max_messages: 10,
            max_bytes: 100,
        };
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(matches!(
            full.duplicate(),
            Error::QueueFull {
                max_messages: 10,
                max_bytes: 100
            }
        ));
        let paused = Error::Paused {
            cause: Box::new(Error::from(tonic::Status::internal("disk full"))),
        };
        assert_eq!(paused.code(), tonic::Code::FailedPrecondition);
        let copy = paused.duplicate();
        let cause = std::error::Error::source(&copy).expect("the cause is the source");
        assert!(cause.to_string().contains("disk full"), "{cause}");
    }
}
