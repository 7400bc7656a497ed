//! Stored data is unchanged by random requests: a broker holding known
//! messages and a subscription's acknowledgements takes runs of arbitrary
//! requests of every RPC (mostly invalid; some valid, on topics and
//! subscriptions of the few names random requests use most, which each
//! run creates first), and afterwards the known topic and
//! subscription read back byte for byte as before, no call failed as a
//! broker fault, nothing panicked, and the broker still answers.
//!
//! Requests come from `tidings_server::fuzzing::message`. 24 requests per
//! case, 16 cases (about 400 requests); `PROPTEST_CASES` raises the cases
//! (one case here for every 16 there: `PROPTEST_CASES=4096` runs 256).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message as _;
use tidings::v1;
use tidings_server::fuzzing::{NAMES, message};
use tidings_tests::{
    Client, Deliveries, TestBroker, ack, create_topic, get_subscription, subscribe_request, within,
};
use tokio::runtime::Runtime;
use tonic::Code;

/// The topic and subscription the random requests must leave alone. No
/// random name has capitals (see `fuzzing::text`).
const TOPIC: &str = "Known-Topic";
const SUBSCRIPTION: &str = "Known-Sub";

/// How long one random call may take: pulls, calls and streams that wait
/// for messages are given up after it (a cancelled call changes nothing).
const CALL_TIME: Duration = Duration::from_millis(300);

/// One request of any RPC.
#[derive(Debug, Clone)]
enum Rpc {
    CreateTopic(v1::CreateTopicRequest),
    GetTopic(v1::GetTopicRequest),
    ListTopics(v1::ListTopicsRequest),
    DeleteTopic(v1::DeleteTopicRequest),
    UpdateTopic(v1::UpdateTopicRequest),
    CreateSubscription(v1::CreateSubscriptionRequest),
    GetSubscription(v1::GetSubscriptionRequest),
    ListSubscriptions(v1::ListSubscriptionsRequest),
    DeleteSubscription(v1::DeleteSubscriptionRequest),
    UpdateSubscription(v1::UpdateSubscriptionRequest),
    Redrive(v1::RedriveRequest),
    Publish(v1::PublishRequest),
    Commit(v1::CommitRequest),
    Call(v1::CallRequest),
    Reply(v1::ReplyRequest),
    Subscribe(v1::SubscribeRequest),
    Ack(v1::AckRequest),
    Nack(v1::NackRequest),
    ModifyAckDeadline(v1::ModifyAckDeadlineRequest),
    ReadTopic(v1::ReadTopicRequest),
    Seek(v1::SeekRequest),
    Reject(v1::RejectRequest),
    Pull(v1::PullRequest),
}

fn rpc() -> impl Strategy<Value = Rpc> {
    prop_oneof![
        message().prop_map(Rpc::CreateTopic),
        message().prop_map(Rpc::GetTopic),
        message().prop_map(Rpc::ListTopics),
        message().prop_map(Rpc::DeleteTopic),
        message().prop_map(Rpc::UpdateTopic),
        message().prop_map(Rpc::CreateSubscription),
        message().prop_map(Rpc::GetSubscription),
        message().prop_map(Rpc::ListSubscriptions),
        message().prop_map(Rpc::DeleteSubscription),
        message().prop_map(Rpc::UpdateSubscription),
        message().prop_map(Rpc::Redrive),
        message().prop_map(Rpc::Publish),
        message().prop_map(Rpc::Commit),
        message().prop_map(Rpc::Call),
        message().prop_map(Rpc::Reply),
        message().prop_map(Rpc::Subscribe),
        message().prop_map(Rpc::Ack),
        message().prop_map(Rpc::Nack),
        message().prop_map(Rpc::ModifyAckDeadline),
        message().prop_map(Rpc::ReadTopic),
        message().prop_map(Rpc::Seek),
        message().prop_map(Rpc::Reject),
        message().prop_map(Rpc::Pull),
    ]
}

/// Sends one request; `None` when it was given up after [`CALL_TIME`].
async fn send(client: &Client, rpc: Rpc) -> Option<Result<(), tonic::Status>> {
    let (mut admin, mut publisher, mut subscriber) = (
        client.admin_service(),
        client.publisher_service(),
        client.subscriber_service(),
    );
    let call = async move {
        match rpc {
            Rpc::CreateTopic(r) => admin.create_topic(r).await.map(drop),
            Rpc::GetTopic(r) => admin.get_topic(r).await.map(drop),
            Rpc::ListTopics(r) => admin.list_topics(r).await.map(drop),
            Rpc::DeleteTopic(r) => admin.delete_topic(r).await.map(drop),
            Rpc::UpdateTopic(r) => admin.update_topic(r).await.map(drop),
            Rpc::CreateSubscription(r) => admin.create_subscription(r).await.map(drop),
            Rpc::GetSubscription(r) => admin.get_subscription(r).await.map(drop),
            Rpc::ListSubscriptions(r) => admin.list_subscriptions(r).await.map(drop),
            Rpc::DeleteSubscription(r) => admin.delete_subscription(r).await.map(drop),
            Rpc::UpdateSubscription(r) => admin.update_subscription(r).await.map(drop),
            Rpc::Redrive(r) => admin.redrive(r).await.map(drop),
            Rpc::Publish(r) => publisher.publish(r).await.map(drop),
            Rpc::Commit(r) => publisher.commit(r).await.map(drop),
            Rpc::Call(r) => publisher.call(r).await.map(drop),
            Rpc::Reply(r) => publisher.reply(r).await.map(drop),
            Rpc::Subscribe(r) => {
                // The stream's first event, whatever it is.
                let mut stream = subscriber.subscribe(r).await?.into_inner();
                stream.message().await.map(drop)
            }
            Rpc::Ack(r) => subscriber.ack(r).await.map(drop),
            Rpc::Nack(r) => subscriber.nack(r).await.map(drop),
            Rpc::ModifyAckDeadline(r) => subscriber.modify_ack_deadline(r).await.map(drop),
            Rpc::ReadTopic(r) => subscriber.read_topic(r).await.map(drop),
            Rpc::Seek(r) => subscriber.seek(r).await.map(drop),
            Rpc::Reject(r) => subscriber.reject(r).await.map(drop),
            Rpc::Pull(r) => subscriber.pull(r).await.map(drop),
        }
    };
    tokio::time::timeout(CALL_TIME, call).await.ok()
}

/// The known topic's messages and settings and the subscription's state,
/// as the broker encodes them.
async fn stored(client: &Client) -> anyhow::Result<Vec<Vec<u8>>> {
    let read = v1::ReadTopicRequest {
        topic: TOPIC.into(),
        offset: 0,
        max_messages: 100,
    };
    let messages = client.subscriber_service().read_topic(read).await?;
    let topic = v1::GetTopicRequest { name: TOPIC.into() };
    let topic = client.admin_service().get_topic(topic).await?;
    let subscription = v1::GetSubscriptionRequest {
        name: SUBSCRIPTION.into(),
    };
    let subscription = client
        .admin_service()
        .get_subscription(subscription)
        .await?;
    Ok(vec![
        messages.into_inner().encode_to_vec(),
        topic.into_inner().encode_to_vec(),
        subscription.into_inner().encode_to_vec(),
    ])
}

/// A topic of 20 varied messages, and a subscription that acknowledged
/// some of them and holds none.
async fn known_data(client: &Client) -> anyhow::Result<()> {
    create_topic(client, TOPIC).await?;
    let messages = (0..20)
        .map(|i| v1::PublishMessage {
            payload: format!("payload {i}").into_bytes().into(),
            key: format!("key-{}", i % 3),
            attributes: [("n".to_owned(), i.to_string())].into(),
            id: format!("id-{i}"),
            ..Default::default()
        })
        .collect();
    let publish = v1::PublishRequest {
        topic: TOPIC.into(),
        messages,
    };
    client.publisher_service().publish(publish).await?;
    let mut stream = Deliveries::open(client, subscribe_request(SUBSCRIPTION, TOPIC)).await?;
    stream.next_n(20).await?;
    ack(client, SUBSCRIPTION, &[0, 1, 2, 3, 7, 11, 12]).await?;
    // The rest go back: nothing stays leased, so nothing expires later.
    let nack = v1::NackRequest {
        subscription: SUBSCRIPTION.into(),
        offsets: (0..20).collect(),
        ..Default::default()
    };
    client.subscriber_service().nack(nack).await?;
    drop(stream);
    Ok(())
}

/// Topics and subscriptions (one of each name on the topic of that name)
/// of the names random requests use most, so that those requests reach
/// past the lookup: publish, acknowledge, seek, delete. Those that exist
/// already are left as they are.
async fn existing(client: &Client) {
    for &name in NAMES {
        let topic = v1::CreateTopicRequest {
            name: name.into(),
            ..Default::default()
        };
        let _ = client.admin_service().create_topic(topic).await;
        let subscription = v1::CreateSubscriptionRequest {
            name: name.into(),
            topic: name.into(),
            ..Default::default()
        };
        let _ = client
            .admin_service()
            .create_subscription(subscription)
            .await;
    }
}

/// One case of the property: one for every 16 of `PROPTEST_CASES` (256
/// unless set), at least 16.
fn cases() -> u32 {
    let asked = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(256);
    (asked / 16).max(16)
}

#[test]
fn stored_data_is_unchanged_by_random_requests() -> anyhow::Result<()> {
    // A panic anywhere in the broker is a failure, even one its task
    // survives.
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&panics);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));

    let runtime = Runtime::new()?;
    let broker = runtime.block_on(TestBroker::start())?;
    let client = broker.client();
    runtime.block_on(known_data(&client))?;
    // The stream's end reaches the subscription in its own time.
    let before = runtime.block_on(within(async {
        loop {
            let known = get_subscription(&client, SUBSCRIPTION).await?;
            if known.open_streams == 0 && known.in_flight == 0 {
                return stored(&client).await;
            }
            tokio::task::yield_now().await;
        }
    }))??;

    let mut runner = TestRunner::new(Config {
        cases: cases(),
        // The broker's state carries over between cases: shrinking a
        // failure would replay other requests, not the failing run.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let requests = prop::collection::vec(rpc(), 24);
    let outcome = runner.run(&requests, |requests| {
        runtime.block_on(async {
            existing(&client).await;
            for request in requests {
                let shown = format!("{request:?}");
                if let Some(Err(status)) = send(&client, request).await {
                    let fault = matches!(status.code(), Code::Internal | Code::Unknown);
                    prop_assert!(!fault, "{} answered {:?}", shown, status);
                    prop_assert!(
                        !status.message().is_empty(),
                        "{} answered {:?}",
                        shown,
                        status
                    );
                }
            }
            let after = stored(&client).await.map_err(|err| {
                TestCaseError::fail(format!("the broker stopped answering: {err:#}"))
            })?;
            prop_assert!(after == before, "the known topic or subscription changed");
            Ok(())
        })
    });
    let _ = std::panic::take_hook();
    outcome.map_err(|err| anyhow::anyhow!("{err}"))?;
    assert_eq!(panics.load(Ordering::SeqCst), 0, "the broker panicked");
    Ok(())
}
