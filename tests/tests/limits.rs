//! Requests over the transport limit (`max_request_bytes`, derived from
//! `--max-message-bytes`) answer RESOURCE_EXHAUSTED naming the limit and the
//! flag, on every tidings service; requests under it still reach the
//! broker's own per-message check.
//!
//! The calls go through the generated clients with no sending limit of
//! their own, so the oversized requests really reach the broker.

use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::subscriber_service_client::SubscriberServiceClient;
use tidings::v1::{AckRequest, CreateTopicRequest, PublishMessage, PublishRequest};
use tidings_client::Transport;
use tidings_server::config::Config;
use tidings_tests::{
    Client, TestBroker, create_topic, expect_code, get_topic, publish, subscribe_request,
};
use tonic::{Code, Status};

const MIB: usize = 1024 * 1024;

/// The transport limit of a broker with the default configuration.
fn default_request_limit() -> usize {
    Config::for_data_dir("unused").max_request_bytes()
}

fn publisher(client: &Client) -> PublisherServiceClient<Transport> {
    PublisherServiceClient::new(client.channel().clone()).max_encoding_message_size(usize::MAX)
}

fn subscriber(client: &Client) -> SubscriberServiceClient<Transport> {
    SubscriberServiceClient::new(client.channel().clone()).max_encoding_message_size(usize::MAX)
}

fn admin(client: &Client) -> AdminServiceClient<Transport> {
    AdminServiceClient::new(client.channel().clone()).max_encoding_message_size(usize::MAX)
}

fn payload_of(len: usize) -> PublishMessage {
    PublishMessage {
        payload: vec![b'x'; len].into(),
        ..Default::default()
    }
}

/// Checks that `status` tells a person what happened and what to do: the
/// request's size (over `limit`), the limit and the flag.
fn assert_names_the_limit(status: &Status, limit: usize) {
    let text = status.message();
    let size: usize = text
        .strip_prefix("request of ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(size, _)| size.parse().ok())
        .unwrap_or_else(|| panic!("the message does not start with the request's size: {text}"));
    assert!(size > limit, "{text}");
    assert!(text.contains(&format!("limit of {limit} bytes")), "{text}");
    assert!(text.contains("--max-message-bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_over_the_transport_limit_is_resource_exhausted_naming_limit_and_flag()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["before"]).await?;

    // Twenty messages of 1 MiB: each within --max-message-bytes, together
    // five times the transport limit.
    let request = PublishRequest {
        topic: "t".into(),
        messages: (0..20).map(|_| payload_of(MIB)).collect(),
    };
    let published = publisher(&client).publish(request).await;
    let status = expect_code(published, Code::ResourceExhausted)?;
    assert_names_the_limit(&status, default_request_limit());
    assert!(status.message().contains("4194304"), "{status:?}");

    assert_eq!(get_topic(&client, "t").await?.next_offset, 1);
    // The connection is still good for the next request.
    assert_eq!(publish(&client, "t", &["after"]).await?, [1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_limit_follows_max_message_bytes() -> anyhow::Result<()> {
    let configure = |config: &mut Config| config.max_message_bytes = 3 * MIB;
    let broker = TestBroker::start_with(configure).await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut config = Config::for_data_dir("unused");
    configure(&mut config);
    let limit = config.max_request_bytes();
    assert!(limit > default_request_limit());

    let request = PublishRequest {
        topic: "t".into(),
        messages: (0..3).map(|_| payload_of(3 * MIB)).collect(),
    };
    let published = publisher(&client).publish(request).await;
    let status = expect_code(published, Code::ResourceExhausted)?;
    assert_names_the_limit(&status, limit);
    assert_eq!(get_topic(&client, "t").await?.next_offset, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn request_under_the_transport_limit_with_an_oversized_message_is_invalid_argument()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let limit = default_request_limit();
    let max_message = Config::for_data_dir("unused").max_message_bytes;

    // Payloads adding up to 1 KiB under the transport limit (protobuf
    // framing adds a few bytes per message), the first one byte over
    // --max-message-bytes.
    let first = max_message + 1;
    let second = max_message;
    let third = max_message;
    let last = limit - 1024 - first - second - third;
    assert!(last <= max_message);
    let request = |last: usize| PublishRequest {
        topic: "t".into(),
        messages: [first, second, third, last]
            .into_iter()
            .map(payload_of)
            .collect(),
    };
    let published = publisher(&client).publish(request(last)).await;
    let status = expect_code(published, Code::InvalidArgument)?;
    assert!(status.message().contains("message 0"), "{status:?}");
    assert!(
        status.message().contains("--max-message-bytes"),
        "{status:?}"
    );

    // The same request 1 KiB larger is over the transport limit: the one
    // above was just under it.
    let published = publisher(&client).publish(request(last + 1024)).await;
    expect_code(published, Code::ResourceExhausted)?;
    assert_eq!(get_topic(&client, "t").await?.next_offset, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_subscribe_ack_and_admin_requests_are_resource_exhausted() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let limit = default_request_limit();
    let huge_name = "s".repeat(limit + 1);

    // Subscribe answers before any stream opens.
    let subscribed = subscriber(&client)
        .subscribe(subscribe_request(&huge_name, "t"))
        .await;
    let status = expect_code(subscribed, Code::ResourceExhausted)?;
    assert_names_the_limit(&status, limit);

    let acked = subscriber(&client)
        .ack(AckRequest {
            subscription: "s".into(),
            // Ten bytes per offset on the wire.
            offsets: vec![u64::MAX; limit / 8],
            ack_ids: Vec::new(),
        })
        .await;
    let status = expect_code(acked, Code::ResourceExhausted)?;
    assert_names_the_limit(&status, limit);

    let created = admin(&client)
        .create_topic(CreateTopicRequest {
            name: huge_name,
            ..CreateTopicRequest::default()
        })
        .await;
    let status = expect_code(created, Code::ResourceExhausted)?;
    assert_names_the_limit(&status, limit);
    Ok(())
}
