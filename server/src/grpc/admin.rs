//! `tidings.v1.AdminService` over the broker: topics and subscriptions
//! created, inspected, listed and deleted. No broker logic lives here.

use tidings::v1;
use tidings::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use super::convert;
use super::convert::{
    PageQuery, next_page_token, optional_topic_name, subscription_name, topic_name,
};
use crate::broker::{SharedEngine, SubscriptionSpec, SubscriptionUpdate, TopicSpec, TopicUpdate};

/// The gRPC adapter of the admin service.
#[derive(Clone)]
pub struct Admin {
    broker: SharedEngine,
}

impl Admin {
    /// An adapter over `broker`.
    pub fn new(broker: SharedEngine) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    #[instrument(name = "CreateTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        debug!("create topic");
        let request = request.into_inner();
        let name = topic_name(request.name)?;
        let spec = TopicSpec {
            name,
            retention: request.retention.map(convert::retention).transpose()?,
            dedup_window: convert::dedup_window(request.dedup_window)?,
            storage: convert::storage_class(request.storage)?,
        };
        let topic = self.broker.create_topic_with(spec).await?;
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(topic.into()),
        }))
    }

    #[instrument(
        name = "UpdateTopic",
        skip_all,
        fields(topic = ?request.get_ref().topic.as_ref().map(|t| &t.name))
    )]
    async fn update_topic(
        &self,
        request: Request<v1::UpdateTopicRequest>,
    ) -> Result<Response<v1::UpdateTopicResponse>, Status> {
        let update = TopicUpdate::try_from(request.into_inner())?;
        debug!(?update, "update topic");
        let topic = self.broker.update_topic(update).await?;
        Ok(Response::new(v1::UpdateTopicResponse {
            topic: Some(topic.into()),
        }))
    }

    #[instrument(name = "GetTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn get_topic(
        &self,
        request: Request<v1::GetTopicRequest>,
    ) -> Result<Response<v1::GetTopicResponse>, Status> {
        debug!("get topic");
        let name = topic_name(request.into_inner().name)?;
        let topic = self.broker.get_topic(&name)?;
        Ok(Response::new(v1::GetTopicResponse {
            topic: Some(topic.into()),
        }))
    }

    #[instrument(name = "ListTopics", skip_all)]
    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let request = request.into_inner();
        let query = PageQuery::new(request.page_size, request.page_token)?;
        debug!(after = ?query.after, limit = query.limit, "list topics");
        let page = self.broker.list_topics(query.after.as_deref(), query.limit);
        let next_page_token = next_page_token(&page);
        Ok(Response::new(v1::ListTopicsResponse {
            topics: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "DeleteTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        debug!("delete topic");
        let name = topic_name(request.into_inner().name)?;
        self.broker.delete_topic(&name).await?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    #[instrument(
        name = "CreateSubscription",
        skip_all,
        fields(subscription = %request.get_ref().name, topic = %request.get_ref().topic)
    )]
    async fn create_subscription(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> Result<Response<v1::CreateSubscriptionResponse>, Status> {
        let spec = SubscriptionSpec::try_from(request.into_inner())?;
        debug!(start = ?spec.start, ack_deadline = ?spec.ack_deadline, "create subscription");
        let subscription = self.broker.create_subscription(spec).await?;
        Ok(Response::new(v1::CreateSubscriptionResponse {
            subscription: Some(subscription.into()),
        }))
    }

    #[instrument(name = "GetSubscription", skip_all, fields(subscription = %request.get_ref().name))]
    async fn get_subscription(
        &self,
        request: Request<v1::GetSubscriptionRequest>,
    ) -> Result<Response<v1::GetSubscriptionResponse>, Status> {
        debug!("get subscription");
        let name = subscription_name(request.into_inner().name)?;
        let subscription = self.broker.get_subscription(&name)?;
        Ok(Response::new(v1::GetSubscriptionResponse {
            subscription: Some(subscription.into()),
        }))
    }

    #[instrument(
        name = "UpdateSubscription",
        skip_all,
        fields(subscription = ?request.get_ref().subscription.as_ref().map(|s| &s.name))
    )]
    async fn update_subscription(
        &self,
        request: Request<v1::UpdateSubscriptionRequest>,
    ) -> Result<Response<v1::UpdateSubscriptionResponse>, Status> {
        let update = SubscriptionUpdate::try_from(request.into_inner())?;
        debug!(ack_deadline = ?update.ack_deadline, filter = ?update.filter, "update subscription");
        let subscription = self.broker.update_subscription(update).await?;
        Ok(Response::new(v1::UpdateSubscriptionResponse {
            subscription: Some(subscription.into()),
        }))
    }

    #[instrument(name = "Redrive", skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn redrive(
        &self,
        request: Request<v1::RedriveRequest>,
    ) -> Result<Response<v1::RedriveResponse>, Status> {
        let request = request.into_inner();
        let name = subscription_name(request.subscription)?;
        debug!(offsets = request.offsets.len(), "redrive");
        let redriven = self.broker.redrive(&name, &request.offsets).await?;
        Ok(Response::new(v1::RedriveResponse { redriven }))
    }

    #[instrument(name = "ListSubscriptions", skip_all, fields(topic = %request.get_ref().topic))]
    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        let request = request.into_inner();
        let topic = optional_topic_name(request.topic)?;
        let query = PageQuery::new(request.page_size, request.page_token)?;
        debug!(after = ?query.after, limit = query.limit, "list subscriptions");
        let page =
            self.broker
                .list_subscriptions(topic.as_ref(), query.after.as_deref(), query.limit)?;
        let next_page_token = next_page_token(&page);
        Ok(Response::new(v1::ListSubscriptionsResponse {
            subscriptions: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "DeleteSubscription", skip_all, fields(subscription = %request.get_ref().name))]
    async fn delete_subscription(
        &self,
        request: Request<v1::DeleteSubscriptionRequest>,
    ) -> Result<Response<v1::DeleteSubscriptionResponse>, Status> {
        debug!("delete subscription");
        let name = subscription_name(request.into_inner().name)?;
        self.broker.delete_subscription(&name).await?;
        Ok(Response::new(v1::DeleteSubscriptionResponse {}))
    }
}
