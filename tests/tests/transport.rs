//! The transport under load: many concurrent calls with tiny bodies on one
//! HTTP/2 connection, as a busy subscriber's acks or a publisher's small
//! batches produce them.

use futures::future::try_join_all;
use tidings::v1::{AckRequest, GetTopicRequest};
use tidings_tests::{TestBroker, create_subscription, create_topic, publish};

/// Calls in flight at once on the one connection.
const CONCURRENT_CALLS: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_small_calls_share_one_connection() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    create_subscription(&client, "s", "t", 0).await?;
    publish(&client, "t", &["m"]).await?;

    let acks = (0..CONCURRENT_CALLS).map(|_| {
        let mut service = client.subscriber_service();
        async move {
            service
                .ack(AckRequest {
                    subscription: "s".into(),
                    offsets: vec![0],
                    ack_ids: Vec::new(),
                })
                .await
        }
    });
    let gets = (0..CONCURRENT_CALLS).map(|_| {
        let mut service = client.admin_service();
        async move {
            service
                .get_topic(GetTopicRequest { name: "t".into() })
                .await
        }
    });
    let (acked, topics) = tokio::try_join!(try_join_all(acks), try_join_all(gets))?;
    assert_eq!(acked.len(), CONCURRENT_CALLS);
    assert!(
        topics
            .iter()
            .all(|t| t.get_ref().topic.as_ref().map(|t| t.next_offset) == Some(1)),
        "every call answered in full"
    );
    Ok(())
}
