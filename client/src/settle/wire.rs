//! The requests of the settlement task: `Ack`, `Reject`, `Nack` and
//! `ModifyAckDeadline` calls, each naming at most a bounded number (and
//! size) of deliveries, by ack_id or else by offset, never both. It decides
//! nothing about retries or failures; `settle.rs` does.

use tidings::v1::{AckRequest, ModifyAckDeadlineRequest, NackRequest, RejectRequest};

use super::SettleConfig;
use crate::lease::{Nack, Queued, Target};
use crate::types::deadline_seconds;

/// Most deliveries named in one settlement request.
const MAX_TARGETS_PER_REQUEST: usize = 2500;
/// Most bytes of ack_ids and offsets in one settlement request, well under
/// the 4 MiB a gRPC server accepts by default: ack_ids are opaque and of
/// any length.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Splits queued acks, rejects or nacks into the runs that go in one request each.
pub(super) fn chunks(queued: Vec<Queued>) -> Vec<Vec<Queued>> {
    let lengths: Vec<usize> = requests(&queued, |q| &q.target)
        .map(<[Queued]>::len)
        .collect();
    let mut rest = queued.into_iter();
    lengths
        .into_iter()
        .map(|len| rest.by_ref().take(len).collect())
        .collect()
}

/// Splits `items` into the runs that go in one request each: at most
/// [`MAX_TARGETS_PER_REQUEST`] of them and about [`MAX_REQUEST_BYTES`]
/// (an ack_id longer than that still goes, alone).
pub(super) fn requests<T>(items: &[T], name: impl Fn(&T) -> &Target) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        for item in rest.iter().take(MAX_TARGETS_PER_REQUEST) {
            bytes += wire_bytes(name(item));
            if len > 0 && bytes > MAX_REQUEST_BYTES {
                break;
            }
            len += 1;
        }
        let (run, after) = rest.split_at(len);
        rest = after;
        Some(run)
    })
}

/// About the bytes `target` takes in a request: its tag, length and text,
/// or a varint.
fn wire_bytes(target: &Target) -> usize {
    match target {
        Target::AckId(ack_id) => ack_id.len() + 4,
        Target::Offset(_) => 10,
    }
}

/// The deliveries of one request, as the request's two fields.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Names {
    offsets: Vec<u64>,
    ack_ids: Vec<String>,
}

impl Names {
    pub(super) fn of<T: AsRef<Target>>(items: &[T]) -> Self {
        let mut names = Self::default();
        for item in items {
            match item.as_ref() {
                Target::AckId(ack_id) => names.ack_ids.push(String::from(&**ack_id)),
                Target::Offset(offset) => names.offsets.push(*offset),
            }
        }
        names
    }
}

pub(super) async fn ack(config: &SettleConfig, names: Names) -> Result<(), tonic::Status> {
    let request = config.client.request(AckRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        ack_ids: names.ack_ids,
    });
    config.client.subscriber_service().ack(request).await?;
    Ok(())
}

pub(super) async fn reject(
    config: &SettleConfig,
    names: Names,
    error: &str,
) -> Result<(), tonic::Status> {
    let request = config.client.request(RejectRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        error: error.to_owned(),
        ack_ids: names.ack_ids,
    });
    config.client.subscriber_service().reject(request).await?;
    Ok(())
}

pub(super) async fn nack(
    config: &SettleConfig,
    names: Names,
    how: &Nack,
) -> Result<(), tonic::Status> {
    let delay = (!how.delay.is_zero())
        .then(|| prost_types::Duration::try_from(how.delay).ok())
        .flatten();
    let request = config.client.request(NackRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        delay,
        ack_ids: names.ack_ids,
        error: how.error.clone(),
    });
    config.client.subscriber_service().nack(request).await?;
    Ok(())
}

pub(super) async fn extend(config: &SettleConfig, names: Names) -> Result<(), tonic::Status> {
    let request = config.client.request(ModifyAckDeadlineRequest {
        subscription: config.subscription.clone(),
        offsets: names.offsets,
        ack_deadline_seconds: deadline_seconds(config.ack_deadline),
        ack_ids: names.ack_ids,
    });
    config
        .client
        .subscriber_service()
        .modify_ack_deadline(request)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ack_id: &str) -> Target {
        Target::AckId(ack_id.into())
    }

    #[test]
    fn a_request_names_each_delivery_once_by_ack_id_or_offset() {
        let names = Names::of(&[id("a"), Target::Offset(4), id("b")]);
        assert_eq!(names.ack_ids, ["a", "b"]);
        assert_eq!(names.offsets, [4]);
    }

    #[test]
    fn requests_are_capped_by_count() {
        let targets: Vec<Target> = (0..MAX_TARGETS_PER_REQUEST as u64 * 2 + 1)
            .map(Target::Offset)
            .collect();
        let sizes: Vec<usize> = requests(&targets, |t| t).map(<[Target]>::len).collect();
        assert_eq!(sizes, [MAX_TARGETS_PER_REQUEST, MAX_TARGETS_PER_REQUEST, 1]);
        assert_eq!(requests(&[], |t: &Target| t).count(), 0);
    }

    #[test]
    fn requests_are_capped_by_bytes() {
        let long = id(&"x".repeat(MAX_REQUEST_BYTES / 3));
        let huge = id(&"y".repeat(MAX_REQUEST_BYTES * 2));
        let targets = [long.clone(), long.clone(), long.clone(), huge, long];
        let sizes: Vec<usize> = requests(&targets, |t| t).map(<[Target]>::len).collect();
        assert_eq!(sizes, [2, 1, 1, 1], "an oversized ack_id goes alone");
    }
}
