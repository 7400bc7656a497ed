//! Property tests: every request conversion takes any request, however
//! malformed, without panicking, and refuses what it refuses with
//! `INVALID_ARGUMENT` and a message. Requests come from
//! [`fuzzing::message`], which fills any message type with arbitrary
//! fields. 256 cases per conversion; `PROPTEST_CASES=10000 cargo test -p
//! tidings-server --lib fuzz` runs more.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tidings::v1;
use tonic::{Code, Status};

use super::*;
use crate::broker::{TopicSpec, TopicUpdate};
use crate::fuzzing::message;

/// A conversion either succeeds or is refused clearly.
fn clear<T: Debug>(converted: BrokerResult<T>) -> Result<(), TestCaseError> {
    if let Err(err) = converted {
        let status = Status::from(err);
        prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
        prop_assert!(!status.message().is_empty(), "{:?}", status);
    }
    Ok(())
}

proptest! {
    #[test]
    fn publish(request in message::<v1::PublishRequest>()) {
        clear(PublishCommand::try_from(request))?;
    }

    #[test]
    fn commit(request in message::<v1::CommitRequest>()) {
        clear(commit_spec(request))?;
    }

    #[test]
    fn call(request in message::<v1::CallRequest>()) {
        clear(CallCommand::try_from(request))?;
    }

    #[test]
    fn reply(request in message::<v1::ReplyRequest>()) {
        clear(ReplyCommand::try_from(request))?;
    }

    #[test]
    fn subscribe(request in message::<v1::SubscribeRequest>()) {
        clear(SubscribeSpec::try_from(request))?;
    }

    #[test]
    fn ack(request in message::<v1::AckRequest>()) {
        clear(AckCommand::try_from(request))?;
    }

    #[test]
    fn nack(request in message::<v1::NackRequest>()) {
        clear(NackCommand::try_from(request))?;
    }

    #[test]
    fn modify_ack_deadline(request in message::<v1::ModifyAckDeadlineRequest>()) {
        clear(DeadlineCommand::try_from(request))?;
    }

    #[test]
    fn reject(request in message::<v1::RejectRequest>()) {
        clear(RejectCommand::try_from(request))?;
    }

    #[test]
    fn read_topic(request in message::<v1::ReadTopicRequest>()) {
        clear(ReadTopicCommand::try_from(request))?;
    }

    #[test]
    fn seek(request in message::<v1::SeekRequest>()) {
        clear(SeekCommand::try_from(request))?;
    }

    #[test]
    fn pull(request in message::<v1::PullRequest>()) {
        clear(PullSpec::try_from(request))?;
    }

    #[test]
    fn create_topic(request in message::<v1::CreateTopicRequest>()) {
        clear(TopicSpec::try_from(request))?;
    }

    #[test]
    fn update_topic(request in message::<v1::UpdateTopicRequest>()) {
        clear(TopicUpdate::try_from(request))?;
    }

    #[test]
    fn create_subscription(request in message::<v1::CreateSubscriptionRequest>()) {
        clear(SubscriptionSpec::try_from(request))?;
    }

    #[test]
    fn update_subscription(request in message::<v1::UpdateSubscriptionRequest>()) {
        clear(SubscriptionUpdate::try_from(request))?;
    }

    #[test]
    fn names_and_pages(
        topics in message::<v1::ListSubscriptionsRequest>(),
        get in message::<v1::GetSubscriptionRequest>(),
        redrive in message::<v1::RedriveRequest>(),
        list in message::<v1::ListTopicsRequest>(),
    ) {
        clear(optional_topic_name(topics.topic.clone()))?;
        clear(topic_name(topics.topic))?;
        clear(PageQuery::new(topics.page_size, topics.page_token))?;
        clear(subscription_name(get.name))?;
        clear(subscription_name(redrive.subscription))?;
        clear(PageQuery::new(list.page_size, list.page_token))?;
    }
}
