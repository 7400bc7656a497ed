//! `Commit` from the wire: each publish converted as `Publish` converts
//! one, each ack as `Ack` does, errors naming the part.

use tidings::v1;

use super::{AckCommand, PublishCommand};
use crate::broker::{BrokerError, BrokerResult, CommitAcks, CommitSpec};

/// A validated `Commit` request.
///
/// # Errors
/// What `Publish` and `Ack` refuse, under [`BrokerError::InPart`] naming
/// `publishes[i]` or `acks[i]`.
pub(crate) fn commit_spec(request: v1::CommitRequest) -> BrokerResult<CommitSpec> {
    let publishes = request
        .publishes
        .into_iter()
        .enumerate()
        .map(|(index, publish)| {
            let command = PublishCommand::try_from(publish)
                .map_err(|e: BrokerError| e.in_part(format!("publishes[{index}]")))?;
            Ok((command.topic, command.messages))
        })
        .collect::<BrokerResult<_>>()?;
    let acks = request
        .acks
        .into_iter()
        .enumerate()
        .map(|(index, ack)| {
            let command = AckCommand::try_from(ack)
                .map_err(|e: BrokerError| e.in_part(format!("acks[{index}]")))?;
            Ok(CommitAcks {
                subscription: command.subscription,
                offsets: command.offsets,
                ack_ids: command.ack_ids,
            })
        })
        .collect::<BrokerResult<_>>()?;
    Ok(CommitSpec { publishes, acks })
}
