//! `--stream-heartbeat`: an idle `Subscribe` stream gets empty responses,
//! so proxies keep it open and clients can tell it is alive; a stream that
//! delivers gets none in between, and pulls get none.

use std::time::{Duration, Instant};

use tidings_server::config::Config;
use tidings_tests::{
    TestBroker, create_subscription, create_topic, publish, subscribe_request, within,
};

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_gets_empty_responses_at_the_heartbeat() -> anyhow::Result<()> {
    let heartbeat = Duration::from_millis(200);
    let broker =
        TestBroker::start_with(move |config: &mut Config| config.stream_heartbeat = heartbeat)
            .await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 0).await?;
    let opened = Instant::now();
    let mut stream = client
        .subscriber_service()
        .subscribe(subscribe_request("billing", "orders"))
        .await?
        .into_inner();
    for _ in 0..2 {
        let frame = within(stream.message()).await??;
        let frame = frame.ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        assert!(frame.messages.is_empty(), "{frame:?}");
    }
    assert!(
        opened.elapsed() >= 2 * heartbeat,
        "not before they were due"
    );
    // Messages still come, and a heartbeat carries none of them.
    publish(&client, "orders", &["a"]).await?;
    let delivered = within(async {
        loop {
            let frame = stream
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("ended"))?;
            if !frame.messages.is_empty() {
                return anyhow::Ok(frame.messages);
            }
        }
    })
    .await??;
    assert_eq!(delivered.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_turns_heartbeats_off() -> anyhow::Result<()> {
    let broker =
        TestBroker::start_with(|config: &mut Config| config.stream_heartbeat = Duration::ZERO)
            .await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 0).await?;
    let mut stream = client
        .subscriber_service()
        .subscribe(subscribe_request("billing", "orders"))
        .await?
        .into_inner();
    // Nothing at all comes on an idle stream (a lower bound only: one
    // second, five times the heartbeat of the test above).
    let quiet = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
    assert!(quiet.is_err(), "something came: {quiet:?}");
    Ok(())
}
