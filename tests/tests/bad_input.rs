//! Every kind of bad input gets a clear status and leaves stored data
//! intact.

use std::collections::HashMap;

use futures::TryStreamExt as _;
use tidings::v1::{
    AckRequest, CreateSubscriptionRequest, CreateTopicRequest, DeleteTopicRequest,
    GetSubscriptionRequest, GetTopicRequest, ModifyAckDeadlineRequest, NackRequest, PublishMessage,
    PublishRequest, PublishResponse, PublishStreamResponse, SubscribeRequest,
};
use tidings_client::Client;
use tidings_tests::{
    Deliveries, TestBroker, create_subscription, create_topic, expect_code, get_subscription,
    get_topic, offsets, payloads, publish, subscribe_request, subscription_pages, topic_pages,
};
use tonic::Code;

/// A broker with topic `t` holding three messages and subscription `s` on it.
async fn broker_with_data() -> anyhow::Result<TestBroker> {
    let broker = TestBroker::start_with(|config| config.max_message_bytes = 1024).await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["0", "1", "2"]).await?;
    create_subscription(&client, "s", "t", 0).await?;
    Ok(broker)
}

/// Checks that the broker holds exactly `topics` and `subscriptions`
/// (in name order): nothing a refused call named was created.
async fn assert_only(
    client: &Client,
    topics: &[&str],
    subscriptions: &[&str],
) -> anyhow::Result<()> {
    let listed_topics = topic_pages(client, 0).await?.concat();
    assert_eq!(listed_topics, topics, "the topics");
    let listed_subscriptions = subscription_pages(client, "", 0).await?.concat();
    assert_eq!(listed_subscriptions, subscriptions, "the subscriptions");
    Ok(())
}

/// Checks that `name` is no subscription: `GetSubscription` answers
/// NOT_FOUND.
async fn assert_no_subscription(client: &Client, name: &str) -> anyhow::Result<()> {
    let got = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest { name: name.into() })
        .await;
    expect_code(got, Code::NotFound)?;
    Ok(())
}

/// Checks that the data of [`broker_with_data`] is intact and usable, and
/// that no other topic or subscription was created.
async fn assert_data_intact(client: &Client) -> anyhow::Result<()> {
    assert_data_intact_beside(client, &[]).await
}

/// As [`assert_data_intact`], with the topics `also` made by the test.
async fn assert_data_intact_beside(client: &Client, also: &[&str]) -> anyhow::Result<()> {
    let mut topics = [&["t"][..], also].concat();
    topics.sort_unstable();
    assert_only(client, &topics, &["s"]).await?;
    assert_eq!(get_topic(client, "t").await?.next_offset, 3);
    let figures = get_subscription(client, "s").await?;
    assert_eq!(
        (figures.topic.as_str(), figures.ack_deadline_seconds),
        ("t", 30),
        "{figures:?}"
    );
    assert_eq!((figures.backlog, figures.ack_floor), (3, 0), "{figures:?}");
    assert_eq!(publish(client, "t", &["3"]).await?, [3]);
    let mut stream = Deliveries::open(client, subscribe_request("s", "")).await?;
    let received = stream.next_n(4).await?;
    assert_eq!(offsets(&received), [0, 1, 2, 3]);
    assert_eq!(payloads(&received), ["0", "1", "2", "3"]);
    Ok(())
}

fn publish_request(topic: &str, messages: Vec<PublishMessage>) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        messages,
    }
}

fn payload_of(len: usize) -> PublishMessage {
    PublishMessage {
        payload: vec![b'x'; len].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_invalid_argument_naming_the_grammar() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    for bad in ["has space", ".hidden", "-dash", "a/b", "ünicode"] {
        let created = client
            .admin_service()
            .create_topic(CreateTopicRequest {
                name: bad.into(),
                ..CreateTopicRequest::default()
            })
            .await;
        let status = expect_code(created, Code::InvalidArgument)?;
        assert!(
            status.message().contains("letters, digits"),
            "{bad}: {status:?}"
        );
        assert!(status.message().contains(bad), "{bad}: {status:?}");

        let published = client
            .publisher_service()
            .publish(publish_request(bad, vec![payload_of(1)]))
            .await;
        expect_code(published, Code::InvalidArgument)?;
        let subscription = client
            .admin_service()
            .create_subscription(CreateSubscriptionRequest {
                name: bad.into(),
                topic: "t".into(),
                ..Default::default()
            })
            .await;
        let status = expect_code(subscription, Code::InvalidArgument)?;
        assert!(
            status.message().contains("letters, digits"),
            "{bad}: {status:?}"
        );
        let stream = Deliveries::open_expecting_error(&client, subscribe_request(bad, "t")).await?;
        assert_eq!(stream.code(), Code::InvalidArgument, "{bad}: {stream:?}");
    }
    let empty = client
        .admin_service()
        .create_topic(CreateTopicRequest::default())
        .await;
    let status = expect_code(empty, Code::InvalidArgument)?;
    assert!(status.message().contains("empty"), "{status:?}");
    let long = client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: "x".repeat(256),
            ..CreateTopicRequest::default()
        })
        .await;
    let status = expect_code(long, Code::InvalidArgument)?;
    assert!(status.message().contains("255"), "{status:?}");
    let long = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "x".repeat(256),
            topic: "t".into(),
            ..Default::default()
        })
        .await;
    let status = expect_code(long, Code::InvalidArgument)?;
    assert!(status.message().contains("255"), "{status:?}");
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_invalid_argument_naming_the_limit() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let too_big = client
        .publisher_service()
        .publish(publish_request("t", vec![payload_of(2000)]))
        .await;
    let status = expect_code(too_big, Code::InvalidArgument)?;
    assert!(status.message().contains("1024"), "{status:?}");

    // A batch with one oversized message stores none of it.
    let mixed = client
        .publisher_service()
        .publish(publish_request("t", vec![payload_of(10), payload_of(4000)]))
        .await;
    expect_code(mixed, Code::InvalidArgument)?;
    // Key and attributes count towards the limit too.
    let heavy = PublishMessage {
        payload: vec![b'x'; 600].into(),
        key: "k".repeat(300),
        attributes: HashMap::from([("a".to_owned(), "v".repeat(300))]),
        ..PublishMessage::default()
    };
    let heavy = client
        .publisher_service()
        .publish(publish_request("t", vec![heavy]))
        .await;
    expect_code(heavy, Code::InvalidArgument)?;
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_publish_and_empty_attribute_name_are_invalid_argument() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let empty = client
        .publisher_service()
        .publish(publish_request("t", Vec::new()))
        .await;
    let status = expect_code(empty, Code::InvalidArgument)?;
    assert!(status.message().contains("at least one"), "{status:?}");
    let unnamed = PublishMessage {
        attributes: HashMap::from([(String::new(), "v".to_owned())]),
        ..payload_of(1)
    };
    let unnamed = client
        .publisher_service()
        .publish(publish_request("t", vec![unnamed]))
        .await;
    expect_code(unnamed, Code::InvalidArgument)?;
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_named_like_the_brokers_own_are_refused() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let forged = PublishMessage {
        attributes: HashMap::from([("tidings.source_topic".to_owned(), "orders".to_owned())]),
        ..payload_of(1)
    };
    // The whole request is refused, the good message with it.
    let refused = client
        .publisher_service()
        .publish(publish_request("t", vec![payload_of(0), forged]))
        .await;
    let status = expect_code(refused, Code::InvalidArgument)?;
    assert!(
        status.message().contains("message 1")
            && status.message().contains("\"tidings.source_topic\"")
            && status.message().contains("reserved"),
        "{status:?}"
    );
    assert_data_intact(&client).await?;
    // The prefix is case-sensitive, and only a prefix.
    let fine = PublishMessage {
        attributes: HashMap::from([
            ("Tidings.note".to_owned(), "v".to_owned()),
            ("my.tidings.x".to_owned(), "v".to_owned()),
        ]),
        ..payload_of(2)
    };
    client
        .publisher_service()
        .publish(publish_request("t", vec![fine]))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_and_subscriptions_are_not_found() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let published = client
        .publisher_service()
        .publish(publish_request("nowhere", vec![payload_of(1)]))
        .await;
    let status = expect_code(published, Code::NotFound)?;
    assert!(status.message().contains("nowhere"), "{status:?}");
    let topic = client
        .admin_service()
        .get_topic(GetTopicRequest {
            name: "nowhere".into(),
        })
        .await;
    expect_code(topic, Code::NotFound)?;
    let deleted = client
        .admin_service()
        .delete_topic(DeleteTopicRequest {
            name: "nowhere".into(),
        })
        .await;
    expect_code(deleted, Code::NotFound)?;
    let subscription = client
        .admin_service()
        .get_subscription(GetSubscriptionRequest {
            name: "nobody".into(),
        })
        .await;
    let status = expect_code(subscription, Code::NotFound)?;
    assert!(status.message().contains("nobody"), "{status:?}");
    let on_nothing = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "orphan".into(),
            topic: "nowhere".into(),
            ..Default::default()
        })
        .await;
    expect_code(on_nothing, Code::NotFound)?;

    let without_topic =
        Deliveries::open_expecting_error(&client, subscribe_request("nobody", "")).await?;
    assert_eq!(without_topic.code(), Code::NotFound, "{without_topic:?}");
    let on_unknown_topic =
        Deliveries::open_expecting_error(&client, subscribe_request("nobody", "nowhere")).await?;
    assert_eq!(
        on_unknown_topic.code(),
        Code::NotFound,
        "{on_unknown_topic:?}"
    );
    let acked = client
        .subscriber_service()
        .ack(AckRequest {
            subscription: "nobody".into(),
            offsets: vec![0],
            ack_ids: Vec::new(),
        })
        .await;
    expect_code(acked, Code::NotFound)?;
    let nacked = client
        .subscriber_service()
        .nack(NackRequest {
            subscription: "nobody".into(),
            offsets: vec![0],
            delay: None,
            ack_ids: Vec::new(),
            error: String::new(),
        })
        .await;
    expect_code(nacked, Code::NotFound)?;
    // Neither "nowhere" nor "orphan" nor "nobody" was created.
    assert_no_subscription(&client, "orphan").await?;
    assert_no_subscription(&client, "nobody").await?;
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_already_exists() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let topic = client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            ..CreateTopicRequest::default()
        })
        .await;
    let status = expect_code(topic, Code::AlreadyExists)?;
    assert!(status.message().contains("\"t\""), "{status:?}");
    // Other settings do not make it a different subscription: the one
    // there keeps its own (the default deadline, the earliest start).
    let subscription = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "s".into(),
            topic: "t".into(),
            ack_deadline_seconds: 60,
            start: Some(tidings_tests::start_latest()),
            ..Default::default()
        })
        .await;
    let status = expect_code(subscription, Code::AlreadyExists)?;
    assert!(status.message().contains("\"s\""), "{status:?}");
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_name_is_taken_on_every_topic() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    create_topic(&client, "other").await?;
    // Subscribe naming another topic than the subscription's own.
    let status = Deliveries::open_expecting_error(&client, subscribe_request("s", "other")).await?;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("other"), "{status:?}");
    // Creating the name again on another topic.
    let created = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "s".into(),
            topic: "other".into(),
            ..Default::default()
        })
        .await;
    let status = expect_code(created, Code::AlreadyExists)?;
    assert!(status.message().contains("\"s\""), "{status:?}");
    assert_eq!(get_subscription(&client, "s").await?.topic, "t");
    assert_data_intact_beside(&client, &["other"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn acking_an_unpublished_offset_is_invalid_argument_and_acks_nothing() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let acked = client
        .subscriber_service()
        .ack(AckRequest {
            subscription: "s".into(),
            offsets: vec![0, 99],
            ack_ids: Vec::new(),
        })
        .await;
    let status = expect_code(acked, Code::InvalidArgument)?;
    assert!(status.message().contains("99"), "{status:?}");
    // Offset 0, named in the same request, is still unacknowledged.
    assert_data_intact(&client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_on_flow_control_and_deadlines_are_invalid_argument() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let client = broker.client();
    let too_many = SubscribeRequest {
        max_outstanding_messages: 100_001,
        ..subscribe_request("s", "")
    };
    let status = Deliveries::open_expecting_error(&client, too_many).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("100000"), "{status:?}");

    let long_deadline = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "slow".into(),
            topic: "t".into(),
            ack_deadline_seconds: 601,
            start: None,
            ..Default::default()
        })
        .await;
    expect_code(long_deadline, Code::InvalidArgument)?;
    let created_by_subscribe = SubscribeRequest {
        ack_deadline_seconds: 601,
        ..subscribe_request("slow", "t")
    };
    let status = Deliveries::open_expecting_error(&client, created_by_subscribe).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let extended = client
        .subscriber_service()
        .modify_ack_deadline(ModifyAckDeadlineRequest {
            subscription: "s".into(),
            offsets: vec![0],
            ack_deadline_seconds: 601,
            ack_ids: Vec::new(),
        })
        .await;
    expect_code(extended, Code::InvalidArgument)?;
    let delayed = client
        .subscriber_service()
        .nack(NackRequest {
            subscription: "s".into(),
            offsets: vec![0],
            delay: Some(prost_types::Duration {
                seconds: 601,
                nanos: 0,
            }),
            ack_ids: Vec::new(),
            error: String::new(),
        })
        .await;
    expect_code(delayed, Code::InvalidArgument)?;
    let beyond = client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "beyond".into(),
            topic: "t".into(),
            ack_deadline_seconds: 0,
            start: Some(tidings_tests::start_at_offset(4)),
            ..Default::default()
        })
        .await;
    expect_code(beyond, Code::InvalidArgument)?;

    // None of the refused subscriptions was created.
    for name in ["slow", "beyond"] {
        assert_no_subscription(&client, name).await?;
    }
    assert_data_intact(&client).await
}

/// `PublishRequest` as a client that writes its own bytes may send it: an
/// id that is not UTF-8, which generated clients cannot produce.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPublishRequest {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(message, repeated, tag = "2")]
    messages: Vec<RawPublishMessage>,
}

/// `PublishMessage`'s payload and id, the id as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPublishMessage {
    #[prost(bytes = "vec", tag = "1")]
    payload: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    id: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_that_is_not_utf8_is_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let broker = broker_with_data().await?;
    let channel = tonic::transport::Endpoint::from_shared(broker.url())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let request = RawPublishRequest {
        topic: "t".into(),
        messages: vec![
            RawPublishMessage {
                payload: b"fine".to_vec(),
                id: b"order-1".to_vec(),
            },
            RawPublishMessage {
                payload: b"broken".to_vec(),
                id: b"order-\xff".to_vec(),
            },
        ],
    };

    grpc.ready().await?;
    let unary = grpc
        .unary(
            tonic::Request::new(request.clone()),
            "/tidings.v1.PublisherService/Publish".parse()?,
            tonic_prost::ProstCodec::<RawPublishRequest, PublishResponse>::default(),
        )
        .await;
    let status = expect_code(unary, Code::InvalidArgument)?;
    assert!(status.message().contains("messages[1].id"), "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");

    // On a stream the request is answered with the same error, and the
    // stream goes on.
    grpc.ready().await?;
    let fixed = RawPublishRequest {
        messages: vec![request.messages[0].clone()],
        ..request.clone()
    };
    let answers = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter([request, fixed])),
            "/tidings.v1.PublisherService/PublishStream".parse()?,
            tonic_prost::ProstCodec::<RawPublishRequest, PublishStreamResponse>::default(),
        )
        .await?;
    let answers: Vec<PublishStreamResponse> = answers.into_inner().try_collect().await?;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(
        answers[0].error_code,
        Code::InvalidArgument as i32,
        "{answers:?}"
    );
    assert!(
        answers[0].error_message.contains("messages[1].id"),
        "{answers:?}"
    );
    assert_eq!(answers[1].error_code, 0, "{answers:?}");
    assert_eq!(
        answers[1].offsets,
        [3],
        "the first message stored on its own"
    );
    Ok(())
}
