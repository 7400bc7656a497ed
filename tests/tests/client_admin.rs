//! The Rust client's admin calls and health check against a real broker,
//! including listings that span several pages.

use std::time::{Duration, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _};
use tidings_client::{Client, Error, StartPosition, SubscriptionConfig};
use tidings_tests::{TestBroker, check_pages, subscription_pages, topic_pages, within};
use tonic::Code;

/// How many admin calls the tests make at once. (Hundreds at once on one
/// fresh connection can outrun the HTTP/2 settings exchange.)
const CONCURRENT_CALLS: usize = 16;

/// Names on a page of a listing, by default and at most (README, "Names
/// and limits").
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_read_listed_and_deleted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let before = SystemTime::now() - Duration::from_secs(1);
    let created = client.create_topic("order.placed").await?;
    assert_eq!(
        (created.name.as_str(), created.next_offset),
        ("order.placed", 0)
    );
    assert!(
        created.create_time.is_some_and(|t| t >= before),
        "{created:?}"
    );

    let taken = client
        .create_topic("order.placed")
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert!(matches!(taken, Error::Status(_)), "{taken:?}");
    let bad = client
        .create_topic("no spaces")
        .await
        .expect_err("bad name");
    assert_eq!(bad.code(), Code::InvalidArgument);

    tidings_tests::publish(&client, "order.placed", &["a", "b"]).await?;
    assert_eq!(client.get_topic("order.placed").await?.next_offset, 2);
    client.delete_topic("order.placed").await?;
    let gone = client.get_topic("order.placed").await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        client
            .delete_topic("order.placed")
            .await
            .map_err(|e| e.code()),
        Err(Code::NotFound)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_topics_follows_every_page() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    // 1001 topics: eleven pages of the broker's default page size (100),
    // and two of its largest (1000).
    let mut names: Vec<String> = (0..1001).map(|i| format!("topic-{i:04}")).collect();
    let creates = futures::stream::iter(&names).map(|name| client.create_topic(name));
    within(
        creates
            .buffer_unordered(CONCURRENT_CALLS)
            .try_collect::<Vec<_>>(),
    )
    .await??;
    names.sort();
    let by_default = within(topic_pages(&client, 0)).await??;
    check_pages(&by_default, &names, DEFAULT_PAGE_SIZE)?;
    let at_most = within(topic_pages(&client, 5000)).await??;
    check_pages(&at_most, &names, MAX_PAGE_SIZE)?;

    // The client follows the pages and joins them up.
    let listed = within(client.list_topics()).await??;
    let listed: Vec<String> = listed.into_iter().map(|t| t.name).collect();
    assert_eq!(listed, names);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_are_created_read_listed_and_deleted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("big").await?;
    client.create_topic("small").await?;
    tidings_tests::publish(&client, "small", &["a", "b", "c"]).await?;

    let config = SubscriptionConfig::new("audit", "small")
        .ack_deadline(Duration::from_secs(45))
        .start(StartPosition::Offset(1));
    let created = client.create_subscription(config).await?;
    assert_eq!(created.topic, "small");
    assert_eq!(created.ack_deadline, Duration::from_secs(45));
    let audit = client.get_subscription("audit").await?;
    assert_eq!((audit.ack_floor, audit.backlog, audit.in_flight), (1, 2, 0));
    assert_eq!(audit.open_streams, 0);
    let latest = SubscriptionConfig::new("tail", "small").start(StartPosition::Latest);
    assert_eq!(client.create_subscription(latest).await?.backlog, 0);

    // 120 subscriptions on "big": two pages of the default size.
    let mut big: Vec<String> = (0..120).map(|i| format!("sub-{i:03}")).collect();
    let creates = futures::stream::iter(&big)
        .map(|name| client.create_subscription(SubscriptionConfig::new(name.as_str(), "big")));
    within(
        creates
            .buffer_unordered(CONCURRENT_CALLS)
            .try_collect::<Vec<_>>(),
    )
    .await??;
    big.sort();
    let pages = within(subscription_pages(&client, "big", 0)).await??;
    check_pages(&pages, &big, DEFAULT_PAGE_SIZE)?;
    let listed = within(client.list_subscriptions(Some("big"))).await??;
    assert_eq!(
        listed.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        big
    );
    let small = within(client.list_subscriptions(Some("small"))).await??;
    assert_eq!(
        small.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["audit", "tail"]
    );
    assert_eq!(within(client.list_subscriptions(None)).await??.len(), 122);

    let taken = client
        .create_subscription(SubscriptionConfig::new("audit", "small"))
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    let orphan = client
        .create_subscription(SubscriptionConfig::new("orphan", "nope"))
        .await
        .expect_err("no topic");
    assert_eq!(orphan.code(), Code::NotFound);
    client.delete_subscription("audit").await?;
    let gone = client.get_subscription("audit").await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_unavailable_once_stopped() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = Client::builder(broker.url())
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    assert!(client.health().await?);
    broker.stop().await?;
    let err = within(client.health()).await?.expect_err("stopped");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_client_connects_on_its_first_call() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let url = broker.url();
    // Nothing listens while the client is made: an eager connect would fail.
    broker.stop().await?;
    let client = Client::builder(url).connect_lazy()?;
    broker.resume_on_same_port().await?;
    assert!(client.health().await?);
    assert!(client.list_topics().await?.is_empty());
    Ok(())
}
