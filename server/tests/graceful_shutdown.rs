//! Graceful shutdown of the real binary: SIGTERM ends open streams with
//! UNAVAILABLE, the process exits with status 0, and what was acknowledged
//! before is still acknowledged after a restart.

use tidings::v1::{
    AckRequest, CreateTopicRequest, GetSubscriptionRequest, PublishMessage, PublishRequest,
};
use tonic::Code;

mod common;

use common::{Deliveries, ServerProcess, subscribe_request};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_streams_exits_zero_and_keeps_acks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            ..CreateTopicRequest::default()
        })
        .await?;
    let messages = ["0", "1", "2"]
        .map(|p| PublishMessage {
            payload: p.into(),
            ..Default::default()
        })
        .to_vec();
    client
        .publisher_service()
        .publish(PublishRequest {
            topic: "t".into(),
            messages,
        })
        .await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "t")).await?;
    stream.next_n(3).await?;
    client
        .subscriber_service()
        .ack(AckRequest {
            subscription: "s".into(),
            offsets: vec![0],
            ack_ids: Vec::new(),
        })
        .await?;

    server.terminate().await?;
    let status = stream.error().await?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let exit = server.wait_exit().await?;
    assert!(exit.success(), "exit status {exit}; log:\n{}", server.log());

    let mut server = ServerProcess::start(&data_dir, dir.path()).await?;
    let client = server.client().await?;
    let figures = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest { name: "s".into() })
        .await?
        .into_inner()
        .subscription
        .expect("a subscription");
    assert_eq!((figures.ack_floor, figures.backlog), (1, 2), "{figures:?}");
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let again: Vec<u64> = stream.next_n(2).await?.iter().map(|m| m.offset).collect();
    assert_eq!(again, [1, 2]);

    // An idle broker with an open stream shuts down cleanly too.
    server.terminate().await?;
    assert_eq!(stream.error().await?.code(), Code::Unavailable);
    let exit = server.wait_exit().await?;
    assert!(exit.success(), "exit status {exit}; log:\n{}", server.log());
    Ok(())
}
