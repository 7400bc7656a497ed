//! [`Sender`]: sends one batch with `Publish` and reports one result per
//! message. It never makes a call again (the broker may have stored a
//! batch whose answer was lost); after a refusal of the batch's content it
//! sends the messages one by one.
//!
//! It answers no futures and changes no publisher state: the task does
//! that with the [`Sent`] it returns.

use tidings::v1::{PublishMessage, PublishRequest};
use tracing::debug;

use crate::batch::{Batch, Pending};
use crate::client::Client;
use crate::error::{Error, Result};

/// What every send of one publisher needs.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) client: Client,
    pub(crate) topic: String,
    /// Stop at a message's failure: the messages after it are not sent.
    pub(crate) ordered: bool,
}

/// A batch after its send: the messages, and a result for each one that
/// was sent, in order. An ordered sender leaves the results short when it
/// stopped at a failure; the messages without a result were not sent.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) seq: u64,
    pub(crate) pendings: Vec<Pending>,
    pub(crate) results: Vec<Result<u64>>,
}

impl Sender {
    /// Sends batch `seq`.
    pub(crate) async fn send(&self, (seq, pendings): Batch) -> Sent {
        debug!(topic = %self.topic, seq, messages = pendings.len(), "publishing a batch");
        let results = match self.call(&pendings).await {
            Ok(offsets) => offsets.into_iter().map(Ok).collect(),
            Err(error) if pendings.len() > 1 && is_per_message(&error) => {
                debug!(topic = %self.topic, seq, %error, "batch refused; sending its messages one by one");
                self.one_by_one(&pendings).await
            }
            Err(error) => pendings.iter().map(|_| Err(error.duplicate())).collect(),
        };
        Sent {
            seq,
            pendings,
            results,
        }
    }

    /// Sends each message alone, in order; an ordered sender stops at the
    /// first failure.
    async fn one_by_one(&self, pendings: &[Pending]) -> Vec<Result<u64>> {
        let mut results = Vec::with_capacity(pendings.len());
        for pending in pendings {
            let result = self
                .call(std::slice::from_ref(pending))
                .await
                .map(|offsets| offsets[0]);
            let failed = result.is_err();
            results.push(result);
            if failed && self.ordered {
                break;
            }
        }
        results
    }

    /// One `Publish` of `pendings`.
    async fn call(&self, pendings: &[Pending]) -> Result<Vec<u64>> {
        let messages = pendings.iter().map(|p| p.message.clone()).collect();
        publish(&self.client, &self.topic, messages).await
    }
}

/// Whether a refused batch may hold good messages beside a bad one: the
/// broker (or the transport, for an oversized request) refused its content.
fn is_per_message(error: &Error) -> bool {
    matches!(
        error.code(),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange
    )
}

/// One `Publish` call; checks that the broker answered one offset per
/// message.
async fn publish(client: &Client, topic: &str, messages: Vec<PublishMessage>) -> Result<Vec<u64>> {
    let count = messages.len();
    let request = client.request(PublishRequest {
        topic: topic.to_owned(),
        messages,
    });
    let offsets = client
        .publisher_service()
        .publish(request)
        .await?
        .into_inner()
        .offsets;
    if offsets.len() != count {
        return Err(tonic::Status::internal(format!(
            "the broker answered {} offsets for {count} messages published to {topic:?}",
            offsets.len()
        ))
        .into());
    }
    Ok(offsets)
}
