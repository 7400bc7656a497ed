//! The one mapping from [`BrokerError`] to a gRPC [`Status`].
//!
//! Every handler returns broker errors through this `From`, so a variant gets
//! the same code everywhere. Storage failures are logged here, once, with
//! their whole chain; the client gets a short message. Nothing else lives
//! here.

use tonic::{Code, Status};
use tracing::error;

use crate::broker::BrokerError;

impl From<BrokerError> for Status {
    fn from(err: BrokerError) -> Self {
        let code = code_of(&err);
        if let BrokerError::Storage(source) = err.innermost() {
            error!(error = %error_chain(source), "storage failed while serving a request");
        }
        Status::new(code, err.to_string())
    }
}

/// The gRPC code of each broker error.
fn code_of(err: &BrokerError) -> Code {
    match err {
        BrokerError::InvalidName(_)
        | BrokerError::EmptyBatch
        | BrokerError::MessageTooLarge { .. }
        | BrokerError::IdTooLong { .. }
        | BrokerError::TooFarAhead { .. }
        | BrokerError::EmptyAttributeName { .. }
        | BrokerError::ReservedAttribute { .. }
        | BrokerError::OffsetNotPublished { .. }
        | BrokerError::DurationOutOfRange { .. }
        | BrokerError::CountOutOfRange { .. }
        | BrokerError::InvalidAckId(_)
        | BrokerError::InvalidFilter(_)
        | BrokerError::NothingToUpdate(_)
        | BrokerError::Invalid(_) => Code::InvalidArgument,
        BrokerError::TopicNotFound(_)
        | BrokerError::DeadLetterTopicNotFound(_)
        | BrokerError::SubscriptionNotFound(_)
        | BrokerError::TopicDeleted(_)
        | BrokerError::SubscriptionDeleted(_) => Code::NotFound,
        BrokerError::TopicExists(_) | BrokerError::SubscriptionExists(_) => Code::AlreadyExists,
        BrokerError::TopicMismatch { .. } | BrokerError::PushSubscription(_) => {
            Code::FailedPrecondition
        }
        BrokerError::AlreadySettled { .. } => Code::Aborted,
        BrokerError::CallTimedOut { .. } => Code::DeadlineExceeded,
        BrokerError::CallNotFound(_) => Code::NotFound,
        BrokerError::InPart { source, .. } => code_of(source),
        BrokerError::ShuttingDown => Code::Unavailable,
        BrokerError::LimitReached { .. } | BrokerError::NoSpace(_) => Code::ResourceExhausted,
        BrokerError::Storage(_) => Code::Internal,
    }
}

/// An error and its sources, joined with `": "`.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::names::{NameError, SubscriptionName, TopicName};
    use crate::storage::StoreError;

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).expect("valid topic name")
    }

    fn subscription(name: &str) -> SubscriptionName {
        SubscriptionName::new(name).expect("valid subscription name")
    }

    fn status(err: BrokerError) -> Status {
        Status::from(err)
    }

    #[test]
    fn bad_input_is_invalid_argument() {
        let errors = [
            BrokerError::InvalidName(NameError::Empty { kind: "topic" }),
            BrokerError::EmptyBatch,
            BrokerError::MessageTooLarge {
                index: 0,
                size: 10,
                limit: 5,
            },
            BrokerError::EmptyAttributeName { index: 1 },
            BrokerError::OffsetNotPublished {
                topic: topic("t"),
                offset: 9,
                next_offset: 3,
            },
            BrokerError::DurationOutOfRange {
                what: "ack deadline",
                given: Duration::from_secs(601),
                min: Duration::from_secs(1),
                max: Duration::from_secs(600),
            },
            BrokerError::CountOutOfRange {
                what: "max_outstanding_messages",
                given: 7,
                max: 5,
            },
            BrokerError::InvalidAckId("x".into()),
            BrokerError::Invalid("nope".into()),
        ];
        for err in errors {
            let display = err.to_string();
            let status = status(err);
            assert_eq!(status.code(), Code::InvalidArgument, "{display}");
            assert_eq!(status.message(), display);
        }
    }

    #[test]
    fn missing_things_are_not_found() {
        for err in [
            BrokerError::TopicNotFound(topic("orders")),
            BrokerError::SubscriptionNotFound(subscription("billing")),
            BrokerError::TopicDeleted(topic("orders")),
            BrokerError::SubscriptionDeleted(subscription("billing")),
        ] {
            assert_eq!(status(err).code(), Code::NotFound);
        }
        let status = status(BrokerError::TopicNotFound(topic("orders")));
        assert!(
            status.message().contains("\"orders\""),
            "{}",
            status.message()
        );
    }

    #[test]
    fn taken_names_are_already_exists() {
        assert_eq!(
            status(BrokerError::TopicExists(topic("a"))).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            status(BrokerError::SubscriptionExists(subscription("a"))).code(),
            Code::AlreadyExists
        );
    }

    #[test]
    fn topic_mismatch_is_failed_precondition() {
        let err = BrokerError::TopicMismatch {
            subscription: subscription("s"),
            actual: topic("a"),
            requested: topic("b"),
        };
        assert_eq!(status(err).code(), Code::FailedPrecondition);
    }

    #[test]
    fn shutting_down_is_unavailable() {
        let status = status(BrokerError::ShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("shutting down"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_closed_store_is_unavailable_not_internal() {
        // What a request still running after the drain timeout meets.
        let status = status(BrokerError::from(StoreError::Closed));
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    #[test]
    fn storage_failure_is_internal_with_a_short_message() {
        let err = BrokerError::Storage(StoreError::Engine {
            context: "appending",
            source: "disk on fire at sector 7".into(),
        });
        let status = status(err);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "storage failed");
    }

    #[test]
    fn error_chain_joins_sources() {
        let err = StoreError::Engine {
            context: "appending",
            source: "disk full".into(),
        };
        assert_eq!(
            error_chain(&err),
            "storage engine failed while appending: disk full"
        );
    }
}
