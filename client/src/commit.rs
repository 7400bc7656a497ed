//! [`Commit`]: publishes and acknowledgements stored together, or not at
//! all, by one `PublisherService.Commit` call.

use tidings::v1::{AckRequest, CommitRequest, PublishRequest};

use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::types::{Message, Published};

/// Publishes to any topics and acknowledgements on any subscriptions,
/// stored by the broker in one atomic, durable write when
/// [sent](Self::send): all of it, or none of it, even across a crash.
///
/// This is how a consumer that publishes what it makes of a message
/// processes each message exactly once: it acknowledges its input in the
/// commit that publishes its output. Should the message be delivered twice
/// (a lease expired, a consumer crashed), the broker stores only the first
/// of the two commits that acknowledge it; the second fails with
/// [`Error::is_aborted`](crate::Error::is_aborted) and stores nothing.
///
/// ```no_run
/// # async fn handle(client: tidings_client::Client, delivery: tidings_client::Delivery) -> tidings_client::Result<()> {
/// use tidings_client::Message;
///
/// let decision = Message::new("reserved").with_key("order-17");
/// match client
///     .commit()
///     .publish("stock.reserved", [decision])
///     .ack_delivery(delivery)
///     .send()
///     .await
/// {
///     Ok(_) => {}
///     // Handled already, by this consumer or another: nothing to do.
///     Err(err) if err.is_aborted() => {}
///     Err(err) => return Err(err),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a commit does nothing until it is sent"]
pub struct Commit {
    client: Client,
    publishes: Vec<PublishRequest>,
    acks: Vec<AckRequest>,
    deliveries: Vec<Delivery>,
}

impl Commit {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            publishes: Vec::new(),
            acks: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// Publishes `messages` to `topic`, in order, as one batch (their
    /// offsets are consecutive, as with
    /// [`Client::publish_batch`]). Several batches, to one topic or
    /// several, are stored in the order they were added.
    pub fn publish<M: Into<Message>>(
        mut self,
        topic: impl Into<String>,
        messages: impl IntoIterator<Item = M>,
    ) -> Self {
        self.publishes.push(PublishRequest {
            topic: topic.into(),
            messages: messages.into_iter().map(|m| m.into().into()).collect(),
        });
        self
    }

    /// Acknowledges the messages at `offsets` on `subscription`. Each must
    /// be unacknowledged when the commit is stored, leased or not.
    pub fn ack(
        mut self,
        subscription: impl Into<String>,
        offsets: impl IntoIterator<Item = u64>,
    ) -> Self {
        self.acks.push(AckRequest {
            subscription: subscription.into(),
            offsets: offsets.into_iter().collect(),
            ack_ids: Vec::new(),
        });
        self
    }

    /// Acknowledges a delivery's message, and settles the delivery with
    /// the commit: once the commit is stored it is acknowledged (which
    /// the broker already did), and if the commit fails it is given back
    /// to be delivered again, as dropping it would.
    pub fn ack_delivery(mut self, delivery: Delivery) -> Self {
        let (offsets, ack_ids) = match delivery.ack_id() {
            "" => (vec![delivery.offset()], Vec::new()),
            ack_id => (Vec::new(), vec![ack_id.to_owned()]),
        };
        self.acks.push(AckRequest {
            subscription: delivery.subscription().to_owned(),
            offsets,
            ack_ids,
        });
        self.deliveries.push(delivery);
        self
    }

    /// Sends the commit; returns what each [`publish`](Self::publish)
    /// stored, in the order they were added.
    ///
    /// # Errors
    /// The broker's status, and nothing is stored: `ABORTED`
    /// ([`Error::is_aborted`](crate::Error::is_aborted)) when a message
    /// it acknowledges was acknowledged or dead-lettered already,
    /// `NOT_FOUND` for an unknown topic or subscription,
    /// `INVALID_ARGUMENT` for an empty commit or a bad part (the message
    /// names it, as `publishes[1]`). A commit that was sent but not
    /// answered (the connection broke) may have been stored; sending it
    /// again is safe when it acknowledges something, since the repeat is
    /// then `ABORTED`, or when its messages carry ids.
    pub async fn send(self) -> Result<Vec<Vec<Published>>> {
        let Self {
            client,
            publishes,
            acks,
            deliveries,
        } = self;
        let counts: Vec<usize> = publishes.iter().map(|p| p.messages.len()).collect();
        let request = client.request(CommitRequest { publishes, acks });
        // On an error the deliveries are dropped: given back.
        let response = client
            .publisher_service()
            .commit(request)
            .await?
            .into_inner();
        for delivery in deliveries {
            delivery.ack();
        }
        Ok(response
            .publishes
            .into_iter()
            .zip(counts)
            .map(|(answer, count)| {
                let mut duplicates = answer.duplicates.into_iter();
                let published: Vec<Published> = answer
                    .offsets
                    .into_iter()
                    .map(|offset| Published {
                        offset,
                        duplicate: duplicates.next().unwrap_or(false),
                    })
                    .collect();
                debug_assert_eq!(published.len(), count);
                published
            })
            .collect())
    }
}
