//! The admin calls of [`Client`]: topics and subscriptions, created,
//! read, updated, listed (following every page) and deleted.
//!
//! Each call is one request (or one per page) and a conversion to the
//! types of `types.rs`; nothing is cached or retried here.

use tidings::v1;

use crate::client::Client;
use crate::error::Result;
use crate::types::{
    StartPosition, Subscription, SubscriptionConfig, SubscriptionUpdate, Topic, TopicConfig,
    TopicUpdate,
};

impl Client {
    /// Creates a topic with the broker's default retention (its
    /// `--retention-max-age`, 7 days unless set). To choose what the topic
    /// keeps, use [`Client::create_topic_with`].
    ///
    /// # Errors
    /// `ALREADY_EXISTS` when the name is taken, `INVALID_ARGUMENT` for a bad
    /// name (1 to 255 ASCII letters, digits, `.`, `_`, `-`).
    pub async fn create_topic(&self, name: &str) -> Result<Topic> {
        self.create_topic_with(TopicConfig::new(name)).await
    }

    /// Creates a topic as `config` says: with its retention policy, or the
    /// broker's default when it has none.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tidings_client::{Client, Retention, TopicConfig};
    ///
    /// # async fn example(client: Client) -> Result<(), tidings_client::Error> {
    /// // Keeps every message for ever.
    /// client
    ///     .create_topic_with(TopicConfig::new("audit").retention(Retention::unlimited()))
    ///     .await?;
    /// // Keeps an hour of messages, and drops those every subscription acked.
    /// let retention = Retention::unlimited()
    ///     .max_age(Duration::from_secs(3600))
    ///     .discard_acked(true);
    /// let topic = client
    ///     .create_topic_with(TopicConfig::new("clicks").retention(retention))
    ///     .await?;
    /// assert_eq!(topic.retention, retention);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// `ALREADY_EXISTS` when the name is taken, `INVALID_ARGUMENT` for a bad
    /// name or a limit out of range (an age below 1 s or above 100 years).
    pub async fn create_topic_with(&self, config: TopicConfig) -> Result<Topic> {
        let name = config.name.clone();
        let request = self.request(v1::CreateTopicRequest::from(config));
        let response = self.admin_service().create_topic(request).await?;
        Ok(topic_of(response.into_inner().topic, &name))
    }

    /// Changes a topic's retention; the broker applies it within seconds.
    /// Only what `update` sets changes. Returns the topic as it is after
    /// the change.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tidings_client::{Client, TopicUpdate};
    ///
    /// # async fn example(client: Client) -> Result<(), tidings_client::Error> {
    /// // Keeps at most 5000 messages, and removes the age limit.
    /// let update = TopicUpdate::default().max_messages(Some(5000)).max_age(None);
    /// let topic = client.update_topic("order.placed", update).await?;
    /// println!("{} messages retained", topic.retained_messages);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an update that changes nothing or a limit out
    /// of range; `NOT_FOUND` when the topic does not exist;
    /// `UNIMPLEMENTED` from a broker older than topic updates.
    pub async fn update_topic(&self, name: &str, update: TopicUpdate) -> Result<Topic> {
        let request = self.request(update.into_request(name));
        let response = self.admin_service().update_topic(request).await?;
        response.into_inner().topic.map(Topic::from).ok_or_else(|| {
            tonic::Status::internal(format!(
                "the broker answered without topic {name:?}; check the broker version"
            ))
            .into()
        })
    }

    /// Returns a topic with its `next_offset`.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn get_topic(&self, name: &str) -> Result<Topic> {
        let request = self.request(v1::GetTopicRequest { name: name.into() });
        let response = self.admin_service().get_topic(request).await?;
        Ok(topic_of(response.into_inner().topic, name))
    }

    /// Lists every topic in name order, following all pages.
    ///
    /// # Errors
    /// The broker's status when a page cannot be read.
    pub async fn list_topics(&self) -> Result<Vec<Topic>> {
        let mut topics = Vec::new();
        let mut pages = PageTokens::default();
        while let Some(page_token) = pages.next_request()? {
            let request = self.request(v1::ListTopicsRequest {
                page_size: 0,
                page_token,
            });
            let page = self
                .admin_service()
                .list_topics(request)
                .await?
                .into_inner();
            topics.extend(page.topics.into_iter().map(Topic::from));
            pages.answered(page.next_page_token);
        }
        Ok(topics)
    }

    /// Deletes a topic with all its messages and subscriptions.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = self.request(v1::DeleteTopicRequest { name: name.into() });
        self.admin_service().delete_topic(request).await?;
        Ok(())
    }

    /// Creates a subscription.
    ///
    /// # Errors
    /// `ALREADY_EXISTS` when the name is taken, `NOT_FOUND` when the topic
    /// does not exist, `INVALID_ARGUMENT` for a bad name, deadline or start.
    pub async fn create_subscription(&self, config: SubscriptionConfig) -> Result<Subscription> {
        let name = config.name.clone();
        let request = self.request(v1::CreateSubscriptionRequest::from(config));
        let response = self.admin_service().create_subscription(request).await?;
        subscription_of(response.into_inner().subscription, &name)
    }

    /// Changes a subscription's settings; its open streams follow without
    /// reconnecting. Returns the subscription as it is after the change.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an update that changes nothing, a deadline
    /// out of range or a filter that does not parse (the message names the
    /// byte); `NOT_FOUND` when the subscription does not exist.
    pub async fn update_subscription(
        &self,
        name: &str,
        update: SubscriptionUpdate,
    ) -> Result<Subscription> {
        let request = self.request(update.into_request(name));
        let response = self.admin_service().update_subscription(request).await?;
        subscription_of(response.into_inner().subscription, name)
    }

    /// Moves a subscription to `position`: every message from it on is
    /// delivered again (acknowledged or not, attempts counting from 1),
    /// every message before it counts as acknowledged. Open streams get
    /// the messages without reconnecting. Returns once the broker stored it.
    ///
    /// # Errors
    /// `NOT_FOUND` when the subscription does not exist;
    /// `INVALID_ARGUMENT` for an offset above the topic's next offset.
    pub async fn seek(&self, subscription: &str, position: StartPosition) -> Result<()> {
        let request = self.request(v1::SeekRequest {
            subscription: subscription.to_owned(),
            position: Some(position.into()),
        });
        self.subscriber_service().seek(request).await?;
        Ok(())
    }

    /// Brings a subscription's dead-lettered messages back to it: those of
    /// the source `offsets` given (`tidings.source_offset`), or all when
    /// `offsets` is empty. They are delivered again, attempts counting from
    /// 1; their copies stay in the dead-letter topic. Returns how many came
    /// back.
    ///
    /// # Errors
    /// `NOT_FOUND` when the subscription does not exist.
    pub async fn redrive(&self, subscription: &str, offsets: &[u64]) -> Result<u64> {
        let request = self.request(v1::RedriveRequest {
            subscription: subscription.to_owned(),
            offsets: offsets.to_vec(),
        });
        let response = self.admin_service().redrive(request).await?;
        Ok(response.into_inner().redriven)
    }

    /// Returns a subscription with its live figures (backlog, in flight,
    /// ack floor, open streams).
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn get_subscription(&self, name: &str) -> Result<Subscription> {
        let request = self.request(v1::GetSubscriptionRequest { name: name.into() });
        let response = self.admin_service().get_subscription(request).await?;
        subscription_of(response.into_inner().subscription, name)
    }

    /// Lists every subscription in name order, following all pages; only
    /// those of `topic` when it is given.
    ///
    /// # Errors
    /// The broker's status when a page cannot be read.
    pub async fn list_subscriptions(&self, topic: Option<&str>) -> Result<Vec<Subscription>> {
        let mut subscriptions = Vec::new();
        let mut pages = PageTokens::default();
        while let Some(page_token) = pages.next_request()? {
            let request = self.request(v1::ListSubscriptionsRequest {
                topic: topic.unwrap_or_default().to_owned(),
                page_size: 0,
                page_token,
            });
            let page = self
                .admin_service()
                .list_subscriptions(request)
                .await?
                .into_inner();
            subscriptions.extend(page.subscriptions.into_iter().map(Subscription::from));
            pages.answered(page.next_page_token);
        }
        Ok(subscriptions)
    }

    /// Deletes a subscription; its open streams end with `NOT_FOUND`.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        let request = self.request(v1::DeleteSubscriptionRequest { name: name.into() });
        self.admin_service().delete_subscription(request).await?;
        Ok(())
    }
}

/// A topic from a response; a broker that leaves it out still told us the
/// call succeeded, so the name alone stands in (with no figures and no
/// retention policy).
fn topic_of(topic: Option<v1::Topic>, name: &str) -> Topic {
    Topic::from(topic.unwrap_or_else(|| v1::Topic {
        name: name.to_owned(),
        ..v1::Topic::default()
    }))
}

/// A subscription from a response; its figures cannot be made up, so a
/// response without one is an error.
fn subscription_of(subscription: Option<v1::Subscription>, name: &str) -> Result<Subscription> {
    subscription.map(Subscription::from).ok_or_else(|| {
        tonic::Status::internal(format!(
            "the broker answered without subscription {name:?}; check the broker version"
        ))
        .into()
    })
}

/// Walks `page_token`s: the first request has none, and the walk ends on an
/// empty `next_page_token`. A page that hands back the token it was asked
/// with would loop forever, so that is an error.
#[derive(Debug, Default)]
struct PageTokens {
    sent: Option<String>,
    next: Option<String>,
    stuck: bool,
}

impl PageTokens {
    /// The token of the next request, or `None` when every page was read.
    fn next_request(&mut self) -> Result<Option<String>> {
        if self.stuck {
            return Err(tonic::Status::internal(
                "the broker returned the same page token twice; check the broker version",
            )
            .into());
        }
        let token = match (&self.sent, self.next.take()) {
            (None, _) => String::new(),
            (Some(_), Some(next)) => next,
            (Some(_), None) => return Ok(None),
        };
        self.sent = Some(token.clone());
        Ok(Some(token))
    }

    /// Records a page's `next_page_token`.
    fn answered(&mut self, next_page_token: String) {
        if next_page_token.is_empty() {
            return;
        }
        self.stuck = self.sent.as_deref() == Some(next_page_token.as_str());
        self.next = Some(next_page_token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_walk_until_an_empty_token() {
        let mut pages = PageTokens::default();
        assert_eq!(pages.next_request().ok().flatten().as_deref(), Some(""));
        pages.answered("t1".into());
        assert_eq!(pages.next_request().ok().flatten().as_deref(), Some("t1"));
        pages.answered(String::new());
        assert_eq!(pages.next_request().ok().flatten(), None);
    }

    #[test]
    fn a_repeated_page_token_is_an_error() {
        let mut pages = PageTokens::default();
        assert!(pages.next_request().is_ok());
        pages.answered("t1".into());
        assert!(pages.next_request().is_ok());
        pages.answered("t1".into());
        let err = pages.next_request().expect_err("must not loop");
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
