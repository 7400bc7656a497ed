//! Fixtures for the end-to-end tests of Tidings.
//!
//! The tests under `tests/tests/` start a real broker in-process on
//! `127.0.0.1:0` through the same `tidings_server::run` the binary uses
//! ([`TestBroker`]) and talk to it over real gRPC with the Rust client,
//! grpcurl and a Python client ([`PythonEnv`]). Waiting is always for an
//! event under a timeout ([`Deliveries`]), never a sleep.
//!
//! This crate holds no test cases itself, and nothing here reaches into the
//! broker's internals: everything goes through the wire API.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail, ensure};
use tidings::v1::start_position::Position;
use tidings::v1::{
    AckRequest, CreateSubscriptionRequest, CreateTopicRequest, GetSubscriptionRequest,
    GetTopicRequest, ListSubscriptionsRequest, ListTopicsRequest, PublishMessage, PublishRequest,
    ReceivedMessage, StartPosition, SubscribeRequest, Subscription, Topic,
};
pub use tidings_client::Client;
use tonic::Code;

mod broker;
mod pki;
mod python;
mod stream;

pub use broker::TestBroker;
pub use pki::TestPki;
pub use python::PythonEnv;
pub use stream::Deliveries;

/// How long a test waits for an event (a delivery, the end of a stream)
/// before it fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future` under [`EVENT_TIMEOUT`].
///
/// # Errors
/// When it has not finished by then.
pub async fn within<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(EVENT_TIMEOUT, future)
        .await
        .map_err(|_| anyhow::anyhow!("nothing happened within {EVENT_TIMEOUT:?}"))
}

/// How long a broker may take to shut down before a test fails.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A message with this payload and nothing else.
pub fn message(payload: impl Into<String>) -> PublishMessage {
    PublishMessage {
        payload: payload.into().into(),
        ..Default::default()
    }
}

/// A `Subscribe` request that creates `subscription` on `topic` when needed,
/// with every other field at its default.
pub fn subscribe_request(subscription: &str, topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        subscription: subscription.to_owned(),
        topic: topic.to_owned(),
        ..Default::default()
    }
}

/// The offsets of `messages`, in order.
pub fn offsets(messages: &[ReceivedMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.offset).collect()
}

/// The payloads of `messages` as text, in order.
pub fn payloads(messages: &[ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// A start position at `offset`.
pub fn start_at_offset(offset: u64) -> StartPosition {
    StartPosition {
        position: Some(Position::Offset(offset)),
    }
}

/// A start position after the last message published so far.
pub fn start_latest() -> StartPosition {
    StartPosition {
        position: Some(Position::Latest(true)),
    }
}

/// A start position at the first message published at or after `time`.
pub fn start_at_time(time: SystemTime) -> StartPosition {
    StartPosition {
        position: Some(Position::Time(time.into())),
    }
}

/// The publish time of a delivered message.
///
/// # Errors
/// When the message carries none, or one that is not a valid time.
pub fn publish_time(message: &ReceivedMessage) -> anyhow::Result<SystemTime> {
    let time = message
        .publish_time
        .context("the message carries no publish_time")?;
    SystemTime::try_from(time).context("the publish_time is not a valid time")
}

/// Creates a topic.
///
/// # Errors
/// The broker's status, as an error.
pub async fn create_topic(client: &Client, name: &str) -> anyhow::Result<Topic> {
    let response = client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: name.into(),
            ..CreateTopicRequest::default()
        })
        .await
        .with_context(|| format!("create topic {name:?}"))?;
    response
        .into_inner()
        .topic
        .context("CreateTopic returned no topic")
}

/// Returns a topic.
///
/// # Errors
/// The broker's status, as an error.
pub async fn get_topic(client: &Client, name: &str) -> anyhow::Result<Topic> {
    let response = client
        .admin_service()
        .get_topic(GetTopicRequest { name: name.into() })
        .await
        .with_context(|| format!("get topic {name:?}"))?;
    response
        .into_inner()
        .topic
        .context("GetTopic returned no topic")
}

/// Publishes one message per payload in one request; returns the offsets.
///
/// # Errors
/// The broker's status, as an error.
pub async fn publish(client: &Client, topic: &str, payloads: &[&str]) -> anyhow::Result<Vec<u64>> {
    let messages = payloads.iter().map(|p| message(*p)).collect();
    publish_messages(client, topic, messages).await
}

/// Publishes `messages` in one request; returns the offsets.
///
/// # Errors
/// The broker's status, as an error.
pub async fn publish_messages(
    client: &Client,
    topic: &str,
    messages: Vec<PublishMessage>,
) -> anyhow::Result<Vec<u64>> {
    let count = messages.len();
    let response = client
        .publisher_service()
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
        })
        .await
        .with_context(|| format!("publish {count} messages to {topic:?}"))?;
    Ok(response.into_inner().offsets)
}

/// Creates a subscription with the given ack deadline (0 for the default)
/// starting at the earliest message.
///
/// # Errors
/// The broker's status, as an error.
pub async fn create_subscription(
    client: &Client,
    name: &str,
    topic: &str,
    ack_deadline_seconds: u32,
) -> anyhow::Result<Subscription> {
    let request = CreateSubscriptionRequest {
        name: name.into(),
        topic: topic.into(),
        ack_deadline_seconds,
        ..CreateSubscriptionRequest::default()
    };
    let response = client
        .admin_service()
        .create_subscription(request)
        .await
        .with_context(|| format!("create subscription {name:?} on {topic:?}"))?;
    response
        .into_inner()
        .subscription
        .context("CreateSubscription returned no subscription")
}

/// Returns a subscription with its live figures.
///
/// # Errors
/// The broker's status, as an error.
pub async fn get_subscription(client: &Client, name: &str) -> anyhow::Result<Subscription> {
    let response = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest { name: name.into() })
        .await
        .with_context(|| format!("get subscription {name:?}"))?;
    response
        .into_inner()
        .subscription
        .context("GetSubscription returned no subscription")
}

/// Acknowledges `offsets` on `subscription`.
///
/// # Errors
/// The broker's status, as an error.
pub async fn ack(client: &Client, subscription: &str, offsets: &[u64]) -> anyhow::Result<()> {
    client
        .subscriber_service()
        .ack(AckRequest {
            subscription: subscription.into(),
            offsets: offsets.to_vec(),
            ack_ids: Vec::new(),
        })
        .await
        .with_context(|| format!("ack {offsets:?} on {subscription:?}"))?;
    Ok(())
}

/// The most pages a listing may take before a test gives up on it: more
/// than any test makes, fewer than a broker that repeats a page forever.
const MAX_PAGES: usize = 1000;

/// The topic names of every page of `ListTopics` with `page_size`, page by
/// page, following `next_page_token` until it is empty.
///
/// # Errors
/// The broker's status, or more than a thousand pages.
pub async fn topic_pages(client: &Client, page_size: u32) -> anyhow::Result<Vec<Vec<String>>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTopicsRequest {
            page_size,
            page_token,
        };
        let page = client
            .admin_service()
            .list_topics(request)
            .await
            .with_context(|| format!("list topics, page {}", pages.len() + 1))?
            .into_inner();
        pages.push(page.topics.into_iter().map(|t| t.name).collect());
        if page.next_page_token.is_empty() {
            return Ok(pages);
        }
        ensure!(pages.len() < MAX_PAGES, "ListTopics never ends");
        page_token = page.next_page_token;
    }
}

/// The subscription names of every page of `ListSubscriptions` of `topic`
/// (every topic when empty) with `page_size`, page by page.
///
/// # Errors
/// The broker's status, or more than a thousand pages.
pub async fn subscription_pages(
    client: &Client,
    topic: &str,
    page_size: u32,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSubscriptionsRequest {
            topic: topic.to_owned(),
            page_size,
            page_token,
        };
        let page = client
            .admin_service()
            .list_subscriptions(request)
            .await
            .with_context(|| format!("list subscriptions, page {}", pages.len() + 1))?
            .into_inner();
        pages.push(page.subscriptions.into_iter().map(|s| s.name).collect());
        if page.next_page_token.is_empty() {
            return Ok(pages);
        }
        ensure!(pages.len() < MAX_PAGES, "ListSubscriptions never ends");
        page_token = page.next_page_token;
    }
}

/// Checks that `pages` split `expected` (in order) into full pages of
/// `page_size` names and a last, shorter one (or an empty one after the
/// last full page, which the API allows): the pages join up without a gap,
/// a repeat or a name out of order.
///
/// # Errors
/// When a page has the wrong length or the pages joined are not `expected`.
pub fn check_pages(
    pages: &[Vec<String>],
    expected: &[String],
    page_size: usize,
) -> anyhow::Result<()> {
    let mut lengths: Vec<usize> = pages.iter().map(Vec::len).collect();
    if lengths.len() > 1 && lengths.last() == Some(&0) {
        lengths.pop();
    }
    let mut want: Vec<usize> = expected.chunks(page_size).map(<[String]>::len).collect();
    if want.is_empty() {
        want.push(0);
    }
    ensure!(
        lengths == want,
        "pages of {lengths:?} names, expected {want:?} for {} names a page",
        page_size
    );
    let joined: Vec<&String> = pages.iter().flatten().collect();
    let expected: Vec<&String> = expected.iter().collect();
    ensure!(
        joined == expected,
        "the pages joined are not the names in order: {joined:?}"
    );
    Ok(())
}

/// Checks that a call failed with `code`; returns its status so the caller
/// can check the message.
///
/// # Errors
/// When the call succeeded or failed with another code.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
) -> anyhow::Result<tonic::Status> {
    match result {
        Ok(response) => bail!(
            "expected {code:?}, the call succeeded with {:?}",
            response.into_inner()
        ),
        Err(status) if status.code() == code => Ok(status),
        Err(status) => bail!("expected {code:?}, got {status:?}"),
    }
}
