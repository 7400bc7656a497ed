//! [`Client::read_topic`]: the stored messages of a topic read by offset,
//! without a subscription, and the plain data it returns ([`TopicRead`],
//! [`StoredMessage`]).
//!
//! Reading takes nothing from anyone: no lease, no acknowledgement, no
//! count, so live consumers are not disturbed. One call is one
//! `ReadTopic` request; paging through a topic is the caller's loop (pass
//! [`TopicRead::next_offset`] back in). Nothing is cached or retried here.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use tidings::v1;

use crate::client::Client;
use crate::error::Result;

/// A message as stored in its topic, read with [`Client::read_topic`]:
/// unlike a [`Delivery`](crate::Delivery) it is nobody's to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message's offset in its topic.
    pub offset: u64,
    /// The body as published.
    pub payload: Bytes,
    /// The key as published (empty when none).
    pub key: String,
    /// The attributes as published.
    pub attributes: HashMap<String, String>,
    /// The id it was published with (empty when none).
    pub id: String,
    /// When the broker stored the message, when it says.
    pub publish_time: Option<SystemTime>,
}

impl From<v1::ReceivedMessage> for StoredMessage {
    fn from(message: v1::ReceivedMessage) -> Self {
        Self {
            offset: message.offset,
            payload: message.payload,
            key: message.key,
            attributes: message.attributes,
            id: message.id,
            publish_time: message
                .publish_time
                .and_then(|t| SystemTime::try_from(t).ok()),
        }
    }
}

/// One answer of [`Client::read_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRead {
    /// The messages read, in offset order.
    pub messages: Vec<StoredMessage>,
    /// Where to go on: the offset to pass to the next call. Equal to
    /// `end_offset` once everything up to the end was read.
    pub next_offset: u64,
    /// The topic's next offset when it was read: its end, for now.
    pub end_offset: u64,
}

impl TopicRead {
    /// Whether everything up to the topic's end (as of this read) was read.
    pub fn is_at_end(&self) -> bool {
        self.next_offset >= self.end_offset
    }
}

impl From<v1::ReadTopicResponse> for TopicRead {
    fn from(response: v1::ReadTopicResponse) -> Self {
        Self {
            messages: response
                .messages
                .into_iter()
                .map(StoredMessage::from)
                .collect(),
            next_offset: response.next_offset,
            end_offset: response.end_offset,
        }
    }
}

impl Client {
    /// Reads the stored messages of `topic` from `offset` on (from its
    /// first retained message when `offset` is below it), at most
    /// `max_messages` of them (0 means the broker's default of 100; the
    /// broker returns at most 1000, and fewer when they add up to about
    /// 4 MiB). Nothing is leased or acknowledged: subscriptions are not
    /// touched.
    ///
    /// ```no_run
    /// # async fn example(client: tidings_client::Client) -> tidings_client::Result<()> {
    /// // Every message of the topic as it is now, a page at a time.
    /// let mut offset = 0;
    /// loop {
    ///     let read = client.read_topic("order.placed", offset, 500).await?;
    ///     for message in &read.messages {
    ///         println!("{} {:?}", message.offset, message.payload);
    ///     }
    ///     if read.is_at_end() || read.messages.is_empty() {
    ///         break;
    ///     }
    ///     offset = read.next_offset;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// `NOT_FOUND` when the topic does not exist, `INVALID_ARGUMENT` for a
    /// bad topic name.
    pub async fn read_topic(
        &self,
        topic: &str,
        offset: u64,
        max_messages: u32,
    ) -> Result<TopicRead> {
        let request = self.request(v1::ReadTopicRequest {
            topic: topic.to_owned(),
            offset,
            max_messages,
        });
        let response = self.subscriber_service().read_topic(request).await?;
        Ok(TopicRead::from(response.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_response_converts_with_its_messages_in_order() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let response = v1::ReadTopicResponse {
            messages: vec![
                v1::ReceivedMessage {
                    offset: 4,
                    payload: Bytes::from_static(b"a"),
                    key: "k".into(),
                    attributes: HashMap::from([("n".to_owned(), "v".to_owned())]),
                    publish_time: Some(time.into()),
                    delivery_attempt: 0,
                    ack_id: String::new(),
                    id: "order-1".into(),
                },
                v1::ReceivedMessage {
                    offset: 5,
                    ..Default::default()
                },
            ],
            next_offset: 6,
            end_offset: 9,
        };
        let read = TopicRead::from(response);
        let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [4, 5]);
        assert_eq!(read.messages[0].key, "k");
        assert_eq!(read.messages[0].attributes["n"], "v");
        assert_eq!(read.messages[0].id, "order-1");
        assert_eq!(read.messages[0].publish_time, Some(time));
        assert_eq!(read.messages[1].publish_time, None);
        assert!(!read.is_at_end());
    }

    #[test]
    fn caught_up_when_next_reaches_the_end() {
        let read = TopicRead {
            messages: Vec::new(),
            next_offset: 9,
            end_offset: 9,
        };
        assert!(read.is_at_end());
    }
}
