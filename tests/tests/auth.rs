//! Tokens and permissions (`--auth-file`): each principal × each action ×
//! allowed and denied resources, over gRPC and the HTTP bus; missing and
//! wrong tokens; denials that say nothing of what exists; filtered
//! listings; health and reflection open to all.
//!
//! The principals of every test here:
//!
//! | principal | grants |
//! |---|---|
//! | `ops` | admin and publish on every topic, admin on every subscription |
//! | `orders` | publish and subscribe on topics `orders.*`, subscribe on subscriptions `orders-*` |
//! | `audit` | subscribe on topics `orders.*` (ReadTopic), nothing else |

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::subscriber_service_client::SubscriberServiceClient;
use tidings::v1::{
    AckRequest, CallRequest, CommitRequest, CreateSubscriptionRequest, CreateTopicRequest,
    DeleteSubscriptionRequest, DeleteTopicRequest, GetSubscriptionRequest, GetTopicRequest,
    ListSubscriptionsRequest, ListTopicsRequest, ModifyAckDeadlineRequest, NackRequest,
    PublishRequest, PullRequest, ReadTopicRequest, RejectRequest, SeekRequest, SubscribeRequest,
};
use tidings_server::auth::token_sha256;
use tidings_tests::{TestBroker, message, start_at_offset, subscribe_request, within};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

const OPS: &str = "ops-token";
const ORDERS: &str = "orders-token";
const AUDIT: &str = "audit-token";

/// The auth file of the module documentation.
fn auth_file(dir: &TempDir) -> anyhow::Result<PathBuf> {
    let path = dir.path().join("auth.toml");
    let text = format!(
        r#"
[[principal]]
name = "ops"
token_sha256 = "{ops}"

[[principal]]
name = "orders"
token_sha256 = "{orders}"

[[principal]]
name = "audit"
token_sha256 = "{audit}"

[[grant]]
principal = "ops"
actions = ["admin", "publish"]
topics = ["*"]
subscriptions = ["*"]

[[grant]]
principal = "orders"
actions = ["publish", "subscribe"]
topics = ["orders.*"]

[[grant]]
principal = "orders"
actions = ["subscribe"]
subscriptions = ["orders-*"]

[[grant]]
principal = "audit"
actions = ["subscribe"]
topics = ["orders.*"]
"#,
        ops = token_sha256(OPS),
        orders = token_sha256(ORDERS),
        audit = token_sha256(AUDIT),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Adds `authorization: Bearer TOKEN` (or what it is given) to each call.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            let value = value
                .parse()
                .map_err(|_| Status::internal("a test token is not ASCII"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The three services, as one principal (or nobody) calls them.
struct As {
    publisher: PublisherServiceClient<Authed>,
    subscriber: SubscriberServiceClient<Authed>,
    admin: AdminServiceClient<Authed>,
}

impl As {
    /// Calls with `Bearer token`; `None` sends no authorization at all.
    fn token(broker: &TestBroker, token: Option<&str>) -> Self {
        Self::header(broker, token.map(|token| format!("Bearer {token}")))
    }

    /// Calls with this authorization value.
    fn header(broker: &TestBroker, value: Option<String>) -> Self {
        // A channel of its own: the fixture client's adds its own token.
        let channel = Endpoint::from_shared(broker.url())
            .expect("the broker's URL is valid")
            .connect_lazy();
        let bearer = Bearer(value);
        Self {
            publisher: PublisherServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            subscriber: SubscriberServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminServiceClient::with_interceptor(channel, bearer),
        }
    }
}

/// A broker with the auth file, and as `ops`: topics `orders.created` and
/// `payments`, one message in each, subscriptions `orders-sub` and
/// `payments-sub` on them.
async fn start() -> anyhow::Result<(TempDir, TestBroker)> {
    let dir = tempfile::tempdir()?;
    let path = auth_file(&dir)?;
    let broker =
        TestBroker::start_with(move |config| config.auth_file = Some(path.clone())).await?;
    let mut ops = As::token(&broker, Some(OPS));
    for (topic, subscription) in [
        ("orders.created", "orders-sub"),
        ("payments", "payments-sub"),
    ] {
        create_topic(&mut ops, topic).await?;
        publish(&mut ops, topic).await?;
        ops.admin
            .create_subscription(CreateSubscriptionRequest {
                name: subscription.to_owned(),
                topic: topic.to_owned(),
                ..Default::default()
            })
            .await?;
    }
    Ok((dir, broker))
}

async fn create_topic(who: &mut As, name: &str) -> Result<(), Status> {
    who.admin
        .create_topic(CreateTopicRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn publish(who: &mut As, topic: &str) -> Result<(), Status> {
    who.publisher
        .publish(PublishRequest {
            topic: topic.to_owned(),
            messages: vec![message("m")],
        })
        .await
        .map(drop)
}

/// One call of the matrix.
#[derive(Debug, Clone, Copy)]
enum Op {
    Publish(&'static str),
    Subscribe(&'static str),
    Pull(&'static str),
    Ack(&'static str),
    Nack(&'static str),
    ModifyAckDeadline(&'static str),
    Reject(&'static str),
    Seek(&'static str),
    ReadTopic(&'static str),
    CreateTopic(&'static str),
    GetTopic(&'static str),
    DeleteTopic(&'static str),
    CreateSubscription(&'static str, &'static str),
    GetSubscription(&'static str),
    DeleteSubscription(&'static str),
}

/// Makes the call `op` as `who`.
async fn attempt(who: &mut As, op: Op) -> Result<(), Status> {
    let name = |name: &str| name.to_owned();
    match op {
        Op::Publish(topic) => publish(who, topic).await,
        Op::Subscribe(subscription) => who
            .subscriber
            .subscribe(SubscribeRequest {
                subscription: name(subscription),
                max_messages: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Pull(subscription) => who
            .subscriber
            .pull(PullRequest {
                subscription: name(subscription),
                max_messages: 1,
                wait: Some(prost_types::Duration::default()),
            })
            .await
            .map(drop),
        Op::Ack(subscription) => who
            .subscriber
            .ack(AckRequest {
                subscription: name(subscription),
                offsets: vec![0],
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Nack(subscription) => who
            .subscriber
            .nack(NackRequest {
                subscription: name(subscription),
                offsets: vec![0],
                ..Default::default()
            })
            .await
            .map(drop),
        Op::ModifyAckDeadline(subscription) => who
            .subscriber
            .modify_ack_deadline(ModifyAckDeadlineRequest {
                subscription: name(subscription),
                offsets: vec![0],
                ack_deadline_seconds: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Reject(subscription) => who
            .subscriber
            .reject(RejectRequest {
                subscription: name(subscription),
                offsets: vec![0],
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Seek(subscription) => who
            .subscriber
            .seek(SeekRequest {
                subscription: name(subscription),
                position: Some(start_at_offset(0)),
            })
            .await
            .map(drop),
        Op::ReadTopic(topic) => who
            .subscriber
            .read_topic(ReadTopicRequest {
                topic: name(topic),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::CreateTopic(topic) => create_topic(who, topic).await,
        Op::GetTopic(topic) => who
            .admin
            .get_topic(GetTopicRequest { name: name(topic) })
            .await
            .map(drop),
        Op::DeleteTopic(topic) => who
            .admin
            .delete_topic(DeleteTopicRequest { name: name(topic) })
            .await
            .map(drop),
        Op::CreateSubscription(subscription, topic) => who
            .admin
            .create_subscription(CreateSubscriptionRequest {
                name: name(subscription),
                topic: name(topic),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::GetSubscription(subscription) => who
            .admin
            .get_subscription(GetSubscriptionRequest {
                name: name(subscription),
            })
            .await
            .map(drop),
        Op::DeleteSubscription(subscription) => who
            .admin
            .delete_subscription(DeleteSubscriptionRequest {
                name: name(subscription),
            })
            .await
            .map(drop),
    }
}

/// Allowed: the call got past the auth checks (it may still fail for
/// another reason, such as nothing to ack). Denied: PERMISSION_DENIED.
async fn check(who: &mut As, principal: &str, op: Op, allowed: bool) {
    let outcome = attempt(who, op).await;
    let code = outcome.as_ref().err().map(Status::code);
    if allowed {
        assert!(
            !matches!(code, Some(Code::PermissionDenied | Code::Unauthenticated)),
            "{principal} {op:?} should be allowed: {outcome:?}"
        );
    } else {
        assert_eq!(
            code,
            Some(Code::PermissionDenied),
            "{principal} {op:?} should be denied: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_principal_may_do_what_it_is_granted_and_nothing_else() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let allowed = true;
    let denied = false;
    let matrix: [(&str, &[(Op, bool)]); 3] = [
        (
            ORDERS,
            &[
                (Op::Publish("orders.created"), allowed),
                (Op::Publish("payments"), denied),
                (Op::Subscribe("orders-sub"), allowed),
                (Op::Subscribe("payments-sub"), denied),
                (Op::Pull("orders-sub"), allowed),
                (Op::Pull("payments-sub"), denied),
                (Op::Ack("orders-sub"), allowed),
                (Op::Ack("payments-sub"), denied),
                (Op::Nack("orders-sub"), allowed),
                (Op::Nack("payments-sub"), denied),
                (Op::ModifyAckDeadline("orders-sub"), allowed),
                (Op::ModifyAckDeadline("payments-sub"), denied),
                (Op::Reject("orders-sub"), allowed),
                (Op::Reject("payments-sub"), denied),
                (Op::Seek("orders-sub"), allowed),
                (Op::Seek("payments-sub"), denied),
                (Op::ReadTopic("orders.created"), allowed),
                (Op::ReadTopic("payments"), denied),
                (Op::GetTopic("orders.created"), allowed),
                (Op::GetTopic("payments"), denied),
                (Op::GetSubscription("orders-sub"), allowed),
                (Op::GetSubscription("payments-sub"), denied),
                (Op::CreateTopic("orders.new"), denied),
                (Op::DeleteTopic("orders.created"), denied),
                (
                    Op::CreateSubscription("orders-new", "orders.created"),
                    denied,
                ),
                (Op::DeleteSubscription("orders-sub"), denied),
            ],
        ),
        (
            AUDIT,
            &[
                (Op::ReadTopic("orders.created"), allowed),
                (Op::ReadTopic("payments"), denied),
                (Op::GetTopic("orders.created"), allowed),
                (Op::Publish("orders.created"), denied),
                (Op::Subscribe("orders-sub"), denied),
                (Op::Ack("orders-sub"), denied),
                (Op::GetSubscription("orders-sub"), denied),
                (Op::CreateTopic("orders.new"), denied),
                (Op::DeleteTopic("orders.created"), denied),
            ],
        ),
        (
            OPS,
            &[
                (Op::Publish("payments"), allowed),
                (Op::Subscribe("payments-sub"), denied),
                (Op::Pull("payments-sub"), denied),
                (Op::Ack("payments-sub"), denied),
                (Op::Seek("payments-sub"), denied),
                (Op::ReadTopic("payments"), denied),
                (Op::CreateTopic("scratch"), allowed),
                (Op::GetTopic("scratch"), allowed),
                (Op::CreateSubscription("scratch-sub", "scratch"), allowed),
                (Op::GetSubscription("scratch-sub"), allowed),
                (Op::DeleteSubscription("scratch-sub"), allowed),
                (Op::DeleteTopic("scratch"), allowed),
            ],
        ),
    ];
    for (token, ops) in matrix {
        let mut who = As::token(&broker, Some(token));
        for &(op, allowed) in ops {
            check(&mut who, token, op, allowed).await;
        }
    }
    // The denied changes changed nothing.
    let mut ops = As::token(&broker, Some(OPS));
    let topic = ops
        .admin
        .get_topic(GetTopicRequest {
            name: "orders.created".to_owned(),
        })
        .await?;
    assert_eq!(
        topic.get_ref().topic.as_ref().map(|t| t.next_offset),
        Some(2)
    );
    let missing = ops
        .admin
        .get_topic(GetTopicRequest {
            name: "orders.new".to_owned(),
        })
        .await
        .expect_err("never created");
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_reads_the_same_for_an_existing_and_a_missing_resource() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let mut orders = As::token(&broker, Some(ORDERS));
    for (existing, missing) in [
        (Op::Publish("payments"), Op::Publish("nowhere")),
        (Op::GetTopic("payments"), Op::GetTopic("nowhere")),
        (Op::ReadTopic("payments"), Op::ReadTopic("nowhere")),
        (Op::Ack("payments-sub"), Op::Ack("nowhere")),
        (
            Op::GetSubscription("payments-sub"),
            Op::GetSubscription("nowhere"),
        ),
        (Op::Subscribe("payments-sub"), Op::Subscribe("nowhere")),
    ] {
        let existing_err = attempt(&mut orders, existing).await.expect_err("denied");
        let missing_err = attempt(&mut orders, missing).await.expect_err("denied");
        assert_eq!(existing_err.code(), Code::PermissionDenied, "{existing:?}");
        assert_eq!(missing_err.code(), Code::PermissionDenied, "{missing:?}");
        let unnamed = |status: &Status| {
            status
                .message()
                .replace("payments-sub", "NAME")
                .replace("payments", "NAME")
                .replace("nowhere", "NAME")
        };
        assert_eq!(unnamed(&existing_err), unnamed(&missing_err));
        assert!(
            existing_err
                .message()
                .contains("principal \"orders\" has no"),
            "{}",
            existing_err.message()
        );
    }
    // Allowed on a name that does not exist: now the caller may know.
    let missing = attempt(&mut orders, Op::Publish("orders.none")).await;
    assert_eq!(missing.map_err(|s| s.code()), Err(Code::NotFound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_are_unauthenticated() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    for value in [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Basic {ORDERS}")),
        Some("Bearer".to_owned()),
    ] {
        let mut nobody = As::header(&broker, value.clone());
        for op in [
            Op::Publish("orders.created"),
            Op::Subscribe("orders-sub"),
            Op::Ack("orders-sub"),
            Op::CreateTopic("t"),
        ] {
            let err = attempt(&mut nobody, op).await.expect_err("refused");
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{value:?} {op:?}: {err:?}"
            );
        }
        let err = nobody
            .admin
            .list_topics(ListTopicsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut nobody = As::token(&broker, None);
    let err = attempt(&mut nobody, Op::Publish("t"))
        .await
        .expect_err("refused");
    assert!(
        err.message().contains("authorization: Bearer TOKEN"),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_need_no_token() -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_dir, broker) = start().await?;
    let channel = broker.client().channel().clone();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    assert_eq!(health.get_ref().status(), ServingStatus::Serving);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = within(answers.message()).await??.expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        anyhow::bail!("not a list of services: {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tidings.v1.PublisherService"), "{names:?}");
    Ok(())
}

/// Every page of topics `who` lists, `page_size` at a time, flattened.
async fn listed_topics(who: &mut As, page_size: u32) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = who
            .admin
            .list_topics(ListTopicsRequest {
                page_size,
                page_token,
            })
            .await?
            .into_inner();
        names.extend(page.topics.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            return Ok(names);
        }
        page_token = page.next_page_token;
    }
}

async fn listed_subscriptions(who: &mut As, topic: &str) -> Result<Vec<String>, Status> {
    let page = who
        .admin
        .list_subscriptions(ListSubscriptionsRequest {
            topic: topic.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page.subscriptions.into_iter().map(|s| s.name).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_show_only_what_the_caller_holds_a_grant_on() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let mut ops = As::token(&broker, Some(OPS));
    for topic in ["a-hidden", "orders.more", "z-hidden"] {
        create_topic(&mut ops, topic).await?;
    }
    let everything = [
        "a-hidden",
        "orders.created",
        "orders.more",
        "payments",
        "z-hidden",
    ];
    assert_eq!(listed_topics(&mut ops, 0).await?, everything);
    let mut orders = As::token(&broker, Some(ORDERS));
    let mut audit = As::token(&broker, Some(AUDIT));
    for page_size in [0, 1, 2] {
        assert_eq!(
            listed_topics(&mut orders, page_size).await?,
            ["orders.created", "orders.more"],
            "pages of {page_size}"
        );
        assert_eq!(
            listed_topics(&mut audit, page_size).await?,
            ["orders.created", "orders.more"]
        );
    }
    assert_eq!(
        listed_subscriptions(&mut ops, "").await?,
        ["orders-sub", "payments-sub"]
    );
    assert_eq!(listed_subscriptions(&mut orders, "").await?, ["orders-sub"]);
    assert_eq!(
        listed_subscriptions(&mut orders, "orders.created").await?,
        ["orders-sub"]
    );
    assert!(listed_subscriptions(&mut audit, "").await?.is_empty());
    let err = listed_subscriptions(&mut orders, "payments")
        .await
        .expect_err("the topic is not the caller's to see");
    assert_eq!(err.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_that_names_a_topic_needs_subscribe_on_the_topic() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let mut orders = As::token(&broker, Some(ORDERS));
    let err = orders
        .subscriber
        .subscribe(subscribe_request("orders-new", "payments"))
        .await
        .expect_err("may not read payments");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("topic \"payments\""), "{err:?}");
    let mut request = subscribe_request("orders-new", "orders.created");
    request.max_messages = 1;
    let mut stream = orders.subscriber.subscribe(request).await?.into_inner();
    let delivered = within(stream.message()).await??.expect("a delivery");
    assert_eq!(delivered.messages.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_needs_publish_on_each_topic_and_subscribe_on_each_acked_subscription()
-> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let mut orders = As::token(&broker, Some(ORDERS));
    let part = |topic: &str| PublishRequest {
        topic: topic.to_owned(),
        messages: vec![message("c")],
    };
    let ack = |subscription: &str| AckRequest {
        subscription: subscription.to_owned(),
        offsets: vec![0],
        ..Default::default()
    };
    for (publishes, acks) in [
        (vec![part("orders.created"), part("payments")], vec![]),
        (vec![part("orders.created")], vec![ack("payments-sub")]),
    ] {
        let err = orders
            .publisher
            .commit(CommitRequest { publishes, acks })
            .await
            .expect_err("a part is not granted");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let mut ops = As::token(&broker, Some(OPS));
    let next_offset = |topic: tidings::v1::GetTopicResponse| topic.topic.map(|t| t.next_offset);
    let stored = ops
        .admin
        .get_topic(GetTopicRequest {
            name: "orders.created".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(
        next_offset(stored),
        Some(1),
        "nothing of a denied commit is stored"
    );
    orders
        .publisher
        .commit(CommitRequest {
            publishes: vec![part("orders.created")],
            acks: vec![ack("orders-sub")],
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn call_needs_publish_on_the_request_topic() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let mut orders = As::token(&broker, Some(ORDERS));
    let call = |topic: &str| CallRequest {
        topic: topic.to_owned(),
        message: Some(message("q")),
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 1_000_000,
        }),
    };
    let err = orders
        .publisher
        .call(call("payments"))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = orders
        .publisher
        .call(call("orders.created"))
        .await
        .expect_err("nobody answers");
    assert_eq!(
        err.code(),
        Code::DeadlineExceeded,
        "allowed, and waited: {err:?}"
    );
    Ok(())
}

/// A POST to the HTTP bus with `token`; the status and the JSON body. A
/// 401 must name the scheme it wants.
async fn post(
    broker: &TestBroker,
    token: Option<&str>,
    path: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", broker.http_url()))
        .json(&body);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await?;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let scheme = response.headers().get("www-authenticate");
        assert_eq!(scheme.and_then(|v| v.to_str().ok()), Some("Bearer"));
    }
    Ok((status, response.json().await?))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_bus_obeys_the_auth_file() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let publish_body = json!({"messages": [{"payload": "aGk="}]});
    let publish_path = |topic: &str| format!("/v1/topics/{topic}:publish");
    for token in [None, Some("wrong")] {
        let (status, body) = post(
            &broker,
            token,
            &publish_path("orders.created"),
            publish_body.clone(),
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    let (status, body) = post(
        &broker,
        Some(ORDERS),
        &publish_path("orders.created"),
        publish_body.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, existing) = post(
        &broker,
        Some(ORDERS),
        &publish_path("payments"),
        publish_body.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{existing}");
    assert_eq!(existing["code"], "PERMISSION_DENIED");
    let (status, missing) = post(
        &broker,
        Some(ORDERS),
        &publish_path("nowhere"),
        publish_body,
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{missing}");
    let unnamed = |body: &Value| {
        body["message"]
            .as_str()
            .unwrap_or_default()
            .replace("payments", "NAME")
            .replace("nowhere", "NAME")
    };
    assert_eq!(unnamed(&existing), unnamed(&missing));
    for (action, body) in [
        ("pull", json!({"maxMessages": 1})),
        ("ack", json!({"offsets": ["0"]})),
        ("nack", json!({"offsets": ["0"]})),
    ] {
        let path = |subscription: &str| format!("/v1/subscriptions/{subscription}:{action}");
        let (status, answer) =
            post(&broker, Some(ORDERS), &path("orders-sub"), body.clone()).await?;
        assert_eq!(status, StatusCode::OK, "{action}: {answer}");
        let (status, answer) =
            post(&broker, Some(ORDERS), &path("payments-sub"), body.clone()).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {answer}");
        let (status, answer) = post(&broker, Some(OPS), &path("orders-sub"), body).await?;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "ops may not consume; {action}: {answer}"
        );
    }
    Ok(())
}

#[test]
fn the_readme_example_auth_file_loads_and_means_what_it_says() -> anyhow::Result<()> {
    use tidings_server::auth::{Authorizer, Resource};
    let readme = include_str!("../../README.md");
    let (_, rest) = readme
        .split_once("<!-- auth-file:start -->")
        .expect("the README has the example");
    let (block, _) = rest.split_once("<!-- auth-file:end -->").expect("closed");
    let text = block
        .trim()
        .strip_prefix("```toml")
        .and_then(|text| text.strip_suffix("```"))
        .expect("one toml block");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, text)?;
    let auth = Authorizer::load(&path)?;
    // The README's orders hash is the SHA-256 of "test".
    let orders = auth.caller(Some("test"), None)?;
    assert_eq!(orders.publish("order.created"), Ok(()));
    assert_eq!(
        orders.subscribe(Resource::Subscription("orders-eu")),
        Ok(())
    );
    assert_eq!(orders.subscribe(Resource::Topic("public.news")), Ok(()));
    assert!(orders.admin(Resource::Topic("order.created")).is_err());
    let ops = auth.caller(None, Some("CN=ops"))?;
    assert_eq!(ops.admin(Resource::Subscription("anything")), Ok(()));
    assert!(ops.publish("order.created").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_client_sends_its_token_on_its_publish_streams() -> anyhow::Result<()> {
    let (_dir, broker) = start().await?;
    let orders = tidings_client::Client::builder(broker.url())
        .bearer_token(ORDERS)
        .connect()
        .await?;
    // The publisher's batches go on a PublishStream: the stream carries the
    // token, and the grant holds for each request on it.
    let publisher = orders.publisher("orders.created");
    assert_eq!(within(publisher.publish("paid")).await??, 1);
    let stream = orders.publish_stream();
    let refused = within(stream.publish_batch("payments", vec![message("x")]))
        .await?
        .expect_err("orders may not publish to payments");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let stored = within(stream.publish_batch("orders.created", vec![message("y")])).await??;
    assert_eq!(stored[0].offset, 2, "the stream goes on after a denial");

    let anonymous = broker.client().publisher("orders.created");
    let err = within(anonymous.publish("z")).await?.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    Ok(())
}
