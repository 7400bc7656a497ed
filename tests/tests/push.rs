//! Push subscriptions: the broker POSTs each message to a real local HTTP
//! endpoint, acks on 2xx, retries failures with backoff, dead-letters what
//! keeps failing, cuts off an endpoint that hangs at the ack deadline and
//! resumes after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Value, json};
use tidings::v1::{
    CreateSubscriptionRequest, DeadLetterPolicy, PushConfig, ReadTopicRequest, RetryPolicy,
    Subscription, UpdateSubscriptionRequest,
};
use tidings_tests::{
    Client, EVENT_TIMEOUT, TestBroker, create_topic, expect_code, get_subscription, publish,
    subscribe_request, within,
};
use tokio::sync::mpsc;
use tonic::Code;

/// What the endpoint does with the n-th POST it receives (0-based).
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// Never answers.
    Hang,
}

/// One POST the endpoint received.
#[derive(Debug)]
struct Post {
    body: Value,
    headers: HeaderMap,
    at: Instant,
}

/// A local HTTP endpoint that answers by a rule and reports every POST.
struct Endpoint {
    url: String,
    posts: mpsc::UnboundedReceiver<Post>,
}

#[derive(Clone)]
struct EndpointState {
    count: Arc<AtomicUsize>,
    answer: Arc<dyn Fn(usize) -> Answer + Send + Sync>,
    posts: mpsc::UnboundedSender<Post>,
}

impl Endpoint {
    async fn start(
        answer: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let (posts_tx, posts) = mpsc::unbounded_channel();
        let state = EndpointState {
            count: Arc::new(AtomicUsize::new(0)),
            answer: Arc::new(answer),
            posts: posts_tx,
        };
        let app = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            posts,
        })
    }

    /// The next POST, within [`EVENT_TIMEOUT`].
    async fn next(&mut self) -> anyhow::Result<Post> {
        within(self.posts.recv())
            .await?
            .context("the endpoint stopped")
    }
}

async fn receive(
    State(state): State<EndpointState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = state.count.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = state.posts.send(Post {
        body,
        headers,
        at: Instant::now(),
    });
    match (state.answer)(n) {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
        Answer::Hang => std::future::pending().await,
    }
}

fn push_config(endpoint: &str) -> PushConfig {
    PushConfig {
        endpoint: endpoint.into(),
        headers: BTreeMap::from([("authorization".to_owned(), "Bearer s3cret".to_owned())])
            .into_iter()
            .collect(),
        max_outstanding: 0,
    }
}

/// Subscription `notify` on `orders`, pushed as `push` says.
fn notify_request(push: PushConfig) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        name: "notify".into(),
        topic: "orders".into(),
        push_config: Some(push),
        ..Default::default()
    }
}

/// A retry policy that waits `wait` after every failure.
fn fixed_backoff(wait: Duration) -> RetryPolicy {
    let wait = prost_types::Duration::try_from(wait).ok();
    RetryPolicy {
        minimum_backoff: wait,
        maximum_backoff: wait,
    }
}

async fn create_push_subscription(
    client: &Client,
    request: CreateSubscriptionRequest,
) -> anyhow::Result<Subscription> {
    client
        .admin_service()
        .create_subscription(request)
        .await?
        .into_inner()
        .subscription
        .context("no subscription")
}

/// Waits until the subscription has nothing unacknowledged.
async fn until_settled(client: &Client, name: &str) -> anyhow::Result<()> {
    within(async {
        loop {
            let sub = get_subscription(client, name).await?;
            if sub.backlog == 0 && sub.in_flight == 0 {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

fn payload_of(post: &Post) -> String {
    post.body["message"]["payload"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_message_is_one_json_post_and_a_2xx_acks_it() -> anyhow::Result<()> {
    let mut endpoint = Endpoint::start(|_| Answer::Status(204)).await?;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    let sub = create_push_subscription(&client, notify_request(push_config(&endpoint.url))).await?;
    let config = sub.push_config.context("push_config reported")?;
    assert_eq!(config.max_outstanding, 100, "the default");
    publish(&client, "orders", &["a", "b", "c"]).await?;

    let mut payloads = BTreeSet::new();
    for _ in 0..3 {
        let post = endpoint.next().await?;
        assert_eq!(post.headers["content-type"], "application/json");
        assert_eq!(post.headers["authorization"], "Bearer s3cret");
        assert_eq!(post.body["subscription"], "notify");
        assert_eq!(post.body["message"]["deliveryAttempt"], 1);
        assert!(post.body["message"]["ackId"].is_string(), "{}", post.body);
        payloads.insert(payload_of(&post));
    }
    assert_eq!(
        payloads,
        BTreeSet::from(["YQ==".into(), "Yg==".into(), "Yw==".into()])
    );
    until_settled(&client, "notify").await?;

    // The broker is its only consumer.
    let refused = client
        .subscriber_service()
        .subscribe(subscribe_request("notify", "orders"))
        .await;
    let status = expect_code(refused, Code::FailedPrecondition)?;
    assert!(status.message().contains("push subscription"), "{status:?}");
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/v1/subscriptions/notify:pull",
            broker.http_url()
        ))
        .body("{}")
        .send()
        .await?;
    assert_eq!(answer.status(), reqwest::StatusCode::PRECONDITION_FAILED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_with_the_default_backoff_until_a_2xx() -> anyhow::Result<()> {
    // 500, then a refusal of another kind, then success.
    let mut endpoint = Endpoint::start(|n| match n {
        0 => Answer::Status(500),
        1 => Answer::Status(404),
        _ => Answer::Status(200),
    })
    .await?;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_push_subscription(&client, notify_request(push_config(&endpoint.url))).await?;
    publish(&client, "orders", &["a"]).await?;
    let first = endpoint.next().await?;
    let second = endpoint.next().await?;
    let third = endpoint.next().await?;
    let attempts: Vec<&Value> = [&first, &second, &third]
        .iter()
        .map(|p| &p.body["message"]["deliveryAttempt"])
        .collect();
    assert_eq!(attempts, [&json!(1), &json!(2), &json!(3)]);
    // Without a retry policy: 1 s, then 2 s (lower bounds only).
    assert!(second.at - first.at >= Duration::from_secs(1));
    assert!(third.at - second.at >= Duration::from_secs(2));
    until_settled(&client, "notify").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_is_down_has_its_messages_dead_lettered() -> anyhow::Result<()> {
    // A port nobody listens on: connections are refused.
    let down: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_topic(&client, "orders.dead").await?;
    create_push_subscription(
        &client,
        CreateSubscriptionRequest {
            retry_policy: Some(fixed_backoff(Duration::from_millis(50))),
            dead_letter_policy: Some(DeadLetterPolicy {
                dead_letter_topic: "orders.dead".into(),
                max_delivery_attempts: 3,
            }),
            ..notify_request(push_config(&format!("http://{down}/hook")))
        },
    )
    .await?;
    publish(&client, "orders", &["a"]).await?;
    let moved = within(async {
        loop {
            let read = client
                .subscriber_service()
                .read_topic(ReadTopicRequest {
                    topic: "orders.dead".into(),
                    offset: 0,
                    max_messages: 10,
                })
                .await?
                .into_inner();
            if let Some(message) = read.messages.into_iter().next() {
                return anyhow::Ok(message);
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    assert_eq!(moved.payload.as_ref(), b"a");
    assert_eq!(moved.attributes["tidings.delivery_attempts"], "3");
    assert_eq!(
        moved.attributes["tidings.dead_letter_reason"],
        "max_delivery_attempts"
    );
    let error = &moved.attributes["tidings.last_error"];
    assert!(error.contains("cannot reach the push endpoint"), "{error}");
    let sub = get_subscription(&client, "notify").await?;
    assert_eq!((sub.dead_lettered, sub.backlog), (1, 0), "{sub:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_hangs_is_cut_off_at_the_ack_deadline() -> anyhow::Result<()> {
    let mut endpoint = Endpoint::start(|n| match n {
        0 => Answer::Hang,
        _ => Answer::Status(200),
    })
    .await?;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_push_subscription(
        &client,
        CreateSubscriptionRequest {
            ack_deadline_seconds: 1,
            retry_policy: Some(fixed_backoff(Duration::ZERO)),
            ..notify_request(push_config(&endpoint.url))
        },
    )
    .await?;
    publish(&client, "orders", &["a"]).await?;
    let hung = endpoint.next().await?;
    let again = endpoint.next().await?;
    assert_eq!(hung.body["message"]["deliveryAttempt"], 1);
    assert_eq!(again.body["message"]["deliveryAttempt"], 2);
    // The deadline runs from when the broker sent the POST, a little
    // before the endpoint saw it: a lower bound with room for that.
    assert!(
        again.at - hung.at >= Duration::from_millis(900),
        "not before the deadline"
    );
    until_settled(&client, "notify").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_resume_after_a_restart_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut endpoint = Endpoint::start(|_| Answer::Status(200)).await?;
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_push_subscription(
        &client,
        notify_request(PushConfig {
            max_outstanding: 4,
            ..push_config(&endpoint.url)
        }),
    )
    .await?;
    let first: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let first_refs: Vec<&str> = first.iter().map(String::as_str).collect();
    publish(&client, "orders", &first_refs).await?;
    let mut seen = BTreeSet::new();
    // Restart in the middle of pushing.
    for _ in 0..5 {
        seen.insert(payload_of(&endpoint.next().await?));
    }
    broker.restart().await?;
    let client = broker.client();
    let second: Vec<String> = (50..60).map(|i| format!("m{i}")).collect();
    let second_refs: Vec<&str> = second.iter().map(String::as_str).collect();
    publish(&client, "orders", &second_refs).await?;
    let expected: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|p| BASE64_STANDARD.encode(p))
        .collect();
    let deadline = Instant::now() + 3 * EVENT_TIMEOUT;
    while seen != expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "missing: {:?}",
            expected.difference(&seen)
        );
        seen.insert(payload_of(&endpoint.next().await?));
    }
    until_settled(&client, "notify").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn push_config_changes_follow_and_bad_ones_are_refused() -> anyhow::Result<()> {
    let mut first = Endpoint::start(|_| Answer::Status(200)).await?;
    let mut second = Endpoint::start(|_| Answer::Status(200)).await?;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_push_subscription(&client, notify_request(push_config(&first.url))).await?;
    publish(&client, "orders", &["one"]).await?;
    assert_eq!(payload_of(&first.next().await?), "b25l");
    until_settled(&client, "notify").await?;

    let update = |push_config: Option<PushConfig>| UpdateSubscriptionRequest {
        subscription: Some(Subscription {
            name: "notify".into(),
            push_config,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["push_config".into()],
        }),
    };
    client
        .admin_service()
        .update_subscription(update(Some(push_config(&second.url))))
        .await?;
    publish(&client, "orders", &["two"]).await?;
    assert_eq!(payload_of(&second.next().await?), "dHdv");
    until_settled(&client, "notify").await?;

    // Without push_config it is an ordinary subscription again.
    let updated = client
        .admin_service()
        .update_subscription(update(None))
        .await?
        .into_inner()
        .subscription
        .context("no subscription")?;
    assert_eq!(updated.push_config, None);
    publish(&client, "orders", &["three"]).await?;
    let mut stream =
        tidings_tests::Deliveries::open(&client, subscribe_request("notify", "orders")).await?;
    assert_eq!(tidings_tests::payloads(&stream.next_n(1).await?), ["three"]);

    for (config, says) in [
        (push_config("ftp://example.com/hook"), "http:// or https://"),
        (push_config("not a url"), "push_config.endpoint"),
        (push_config("/relative"), "absolute"),
        (
            PushConfig {
                headers: [("content-type".to_owned(), "text/plain".to_owned())].into(),
                ..push_config(&first.url)
            },
            "content-type",
        ),
        (
            PushConfig {
                headers: [("bad header".to_owned(), "x".to_owned())].into(),
                ..push_config(&first.url)
            },
            "bad header",
        ),
        (
            PushConfig {
                max_outstanding: 5000,
                ..push_config(&first.url)
            },
            "max_outstanding",
        ),
    ] {
        let refused = client
            .admin_service()
            .create_subscription(CreateSubscriptionRequest {
                name: "bad".into(),
                topic: "orders".into(),
                push_config: Some(config),
                ..Default::default()
            })
            .await;
        let status = expect_code(refused, Code::InvalidArgument)?;
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    Ok(())
}
