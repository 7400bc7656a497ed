//! `tidings.v1.AdminService` over the broker: topics and subscriptions
//! created, inspected, listed and deleted. No broker logic lives here.
//!
//! Changes need the caller's `admin` grant on the name in the request;
//! `Get*` and listings need any grant on what they show, since that is
//! what a caller may see.

use tidings::v1;
use tidings::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use super::caller::caller;
use super::convert::{
    PageQuery, next_page_token, optional_topic_name, subscription_name, topic_name,
};
use crate::auth::{Action, Authorizer, Caller, Resource};
use crate::broker::{
    BrokerResult, DeadLetterPolicy, Page, SharedEngine, SubscriptionSpec, SubscriptionUpdate,
    TopicSpec, TopicUpdate,
};

/// The gRPC adapter of the admin service.
#[derive(Clone)]
pub struct Admin {
    broker: SharedEngine,
    auth: Authorizer,
}

impl Admin {
    /// An adapter over `broker`, serving whom `auth` allows.
    pub fn new(broker: SharedEngine, auth: Authorizer) -> Self {
        Self { broker, auth }
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
        let caller = caller(&self.auth, &request)?;
        let spec = TopicSpec::try_from(request.into_inner())?;
        caller.admin(Resource::Topic(spec.name.as_str()))?;
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
        let caller = caller(&self.auth, &request)?;
        let update = TopicUpdate::try_from(request.into_inner())?;
        caller.admin(Resource::Topic(update.name.as_str()))?;
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
        let caller = caller(&self.auth, &request)?;
        let name = topic_name(request.into_inner().name)?;
        caller.see(Resource::Topic(name.as_str()))?;
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
        let caller = caller(&self.auth, &request)?;
        let request = request.into_inner();
        let query = PageQuery::new(request.page_size, request.page_token)?;
        debug!(after = ?query.after, limit = query.limit, "list topics");
        let page = visible_page(
            &query,
            |after, limit| Ok(self.broker.list_topics(after, limit)),
            |topic| caller.sees(Resource::Topic(topic.name.as_str())),
            |topic| topic.name.as_str(),
        )?;
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
        let caller = caller(&self.auth, &request)?;
        let name = topic_name(request.into_inner().name)?;
        caller.admin(Resource::Topic(name.as_str()))?;
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
        let caller = caller(&self.auth, &request)?;
        let spec = SubscriptionSpec::try_from(request.into_inner())?;
        caller.admin(Resource::Subscription(spec.name.as_str()))?;
        // The subscription reads its topic, and the broker publishes to its
        // dead-letter topic.
        caller.either(
            [Action::Subscribe, Action::Admin],
            Resource::Topic(spec.topic.as_str()),
        )?;
        may_dead_letter_to(&caller, spec.dead_letter.as_ref())?;
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
        let caller = caller(&self.auth, &request)?;
        let name = subscription_name(request.into_inner().name)?;
        caller.see(Resource::Subscription(name.as_str()))?;
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
        let caller = caller(&self.auth, &request)?;
        let update = SubscriptionUpdate::try_from(request.into_inner())?;
        caller.admin(Resource::Subscription(update.name.as_str()))?;
        may_dead_letter_to(
            &caller,
            update.dead_letter.as_ref().and_then(Option::as_ref),
        )?;
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
        let caller = caller(&self.auth, &request)?;
        let request = request.into_inner();
        let name = subscription_name(request.subscription)?;
        caller.admin(Resource::Subscription(name.as_str()))?;
        debug!(offsets = request.offsets.len(), "redrive");
        let redriven = self.broker.redrive(&name, &request.offsets).await?;
        Ok(Response::new(v1::RedriveResponse { redriven }))
    }

    #[instrument(name = "ListSubscriptions", skip_all, fields(topic = %request.get_ref().topic))]
    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        let caller = caller(&self.auth, &request)?;
        let request = request.into_inner();
        let topic = optional_topic_name(request.topic)?;
        if let Some(topic) = &topic {
            caller.see(Resource::Topic(topic.as_str()))?;
        }
        let query = PageQuery::new(request.page_size, request.page_token)?;
        debug!(after = ?query.after, limit = query.limit, "list subscriptions");
        let page = visible_page(
            &query,
            |after, limit| self.broker.list_subscriptions(topic.as_ref(), after, limit),
            |subscription| caller.sees(Resource::Subscription(subscription.name.as_str())),
            |subscription| subscription.name.as_str(),
        )?;
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
        let caller = caller(&self.auth, &request)?;
        let name = subscription_name(request.into_inner().name)?;
        caller.admin(Resource::Subscription(name.as_str()))?;
        self.broker.delete_subscription(&name).await?;
        Ok(Response::new(v1::DeleteSubscriptionResponse {}))
    }
}

/// A subscription may send its failures to a dead-letter topic only for a
/// caller that may put messages there itself.
fn may_dead_letter_to(caller: &Caller, policy: Option<&DeadLetterPolicy>) -> Result<(), Status> {
    if let Some(policy) = policy {
        caller.either(
            [Action::Publish, Action::Admin],
            Resource::Topic(policy.topic.as_str()),
        )?;
    }
    Ok(())
}

/// A page of what the caller sees: pages of `fetch` are read, dropping what
/// `visible` refuses, until `query.limit` items are found or the list ends.
/// A page may hold fewer than the limit and still have a next one.
fn visible_page<T>(
    query: &PageQuery,
    mut fetch: impl FnMut(Option<&str>, usize) -> BrokerResult<Page<T>>,
    visible: impl Fn(&T) -> bool,
    name: impl Fn(&T) -> &str,
) -> BrokerResult<Page<T>> {
    let mut after = query.after.clone();
    let mut items = Vec::new();
    loop {
        let page = fetch(after.as_deref(), query.limit)?;
        let mut rest = page.items.into_iter().peekable();
        while let Some(item) = rest.next() {
            if !visible(&item) {
                continue;
            }
            items.push(item);
            if items.len() == query.limit {
                let more = rest.peek().is_some() || page.next_after.is_some();
                let next_after = more
                    .then(|| items.last().map(|i| name(i).to_owned()))
                    .flatten();
                return Ok(Page { items, next_after });
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => {
                return Ok(Page {
                    items,
                    next_after: None,
                });
            }
        }
    }
}
