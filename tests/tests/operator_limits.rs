//! The limits an operator sets (`--max-topics`, `--max-subscriptions`,
//! `--max-open-streams`, `--max-connections` over gRPC and the HTTP bus):
//! one more is RESOURCE_EXHAUSTED with a message
//! naming the limit and its flag, and room made by a deletion or a closed
//! stream can be used again.

use tidings::v1::CreateSubscriptionRequest;
use tidings_tests::{
    Client, Deliveries, TestBroker, create_subscription, create_topic, expect_code,
    subscribe_request, within,
};
use tonic::Code;

fn says_limit(status: &tonic::Status, flag: &str, limit: usize) {
    let message = status.message();
    assert!(
        message.contains(flag) && message.contains(&format!("holds {limit} ")),
        "{message}"
    );
}

/// Repeats `call` while it is refused for a limit, until it succeeds.
async fn until_room<F, Fut>(call: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    within(async {
        loop {
            match call().await {
                Ok(()) => return anyhow::Ok(()),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    })
    .await?
}

async fn delete_topic(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .admin_service()
        .delete_topic(tidings::v1::DeleteTopicRequest { name: name.into() })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_and_subscriptions_stop_at_their_limits() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| {
        config.max_topics = Some(2);
        config.max_subscriptions = Some(1);
    })
    .await?;
    let client = broker.client();
    create_topic(&client, "a").await?;
    create_topic(&client, "b").await?;
    let refused = client
        .admin_service()
        .create_topic(tidings::v1::CreateTopicRequest {
            name: "c".into(),
            ..Default::default()
        })
        .await;
    says_limit(
        &expect_code(refused, Code::ResourceExhausted)?,
        "--max-topics",
        2,
    );
    delete_topic(&client, "b").await?;
    create_topic(&client, "c").await?;

    create_subscription(&client, "s1", "a", 0).await?;
    let refused = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "s2".into(),
            topic: "a".into(),
            ..Default::default()
        })
        .await;
    says_limit(
        &expect_code(refused, Code::ResourceExhausted)?,
        "--max-subscriptions",
        1,
    );
    // Subscribe's own creation counts too.
    let refused = client
        .subscriber_service()
        .subscribe(subscribe_request("s3", "c"))
        .await;
    says_limit(
        &expect_code(refused, Code::ResourceExhausted)?,
        "--max-subscriptions",
        1,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_stop_at_their_limit_and_a_closed_one_makes_room() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_open_streams = Some(1)).await?;
    let client = broker.client();
    create_topic(&client, "a").await?;
    create_subscription(&client, "s", "a", 0).await?;
    let first = Deliveries::open(&client, subscribe_request("s", "a")).await?;
    let refused = client
        .subscriber_service()
        .subscribe(subscribe_request("s", "a"))
        .await;
    says_limit(
        &expect_code(refused, Code::ResourceExhausted)?,
        "--max-open-streams",
        1,
    );
    // Pulls are not streams.
    client
        .subscriber_service()
        .pull(tidings::v1::PullRequest {
            subscription: "s".into(),
            ..Default::default()
        })
        .await?;
    drop(first);
    // The stream's place comes back once its task notices the client left.
    until_room(|| async {
        client
            .subscriber_service()
            .subscribe(subscribe_request("s", "a"))
            .await
            .map(drop)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_over_the_limit_is_told_so_and_a_closed_one_makes_room() -> anyhow::Result<()>
{
    let broker = TestBroker::start_with(|config| config.max_connections = Some(2)).await?;
    // The fixture's own client holds one place; this one the other.
    let second = Client::connect(broker.url()).await?;
    create_topic(&second, "a").await?;
    let third = Client::connect(broker.url()).await?;
    let refused = third
        .admin_service()
        .create_topic(tidings::v1::CreateTopicRequest {
            name: "b".into(),
            ..Default::default()
        })
        .await;
    let status = expect_code(refused, Code::ResourceExhausted)?;
    assert!(
        status.message().contains("--max-connections") && status.message().contains("serves 2 "),
        "{status:?}"
    );
    drop(third);
    drop(second);
    // Once the second connection is gone, a new one is served.
    until_room(|| async {
        let fresh = Client::connect(broker.url())
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        fresh
            .admin_service()
            .list_topics(tidings::v1::ListTopicsRequest::default())
            .await
            .map(drop)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bus_connections_share_the_connection_limit() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_connections = Some(1)).await?;
    // The fixture's gRPC client holds the one place.
    create_topic(&broker.client(), "orders").await?;
    let url = format!("{}/v1/topics/orders:publish", broker.http_url());
    let response = within(
        reqwest::Client::new()
            .post(&url)
            .body(r#"{"messages": [{"payload": "aGk="}]}"#)
            .send(),
    )
    .await??;
    assert_eq!(response.status(), 429);
    let body = response.text().await?;
    assert!(
        body.contains("RESOURCE_EXHAUSTED") && body.contains("--max-connections"),
        "{body}"
    );
    Ok(())
}
