//! The HTTP event bus: publish, pull, ack and nack as JSON over HTTP/1.1,
//! with gRPC's validation, errors and leases, checked from both sides
//! (what HTTP stored is what gRPC reads, and the other way round).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_tests::{
    TestBroker, create_subscription, create_topic, get_subscription, get_topic, publish, within,
};
use tokio::task::JoinHandle;

/// A POST of `body` (raw bytes) to the broker's HTTP bus; the status and
/// the body as JSON.
async fn post_raw(
    broker: &TestBroker,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", broker.http_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = response.status();
    let text = response.text().await.context("read the answer")?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("POST {path} answered {status} with no JSON: {text:?}"))?;
    Ok((status, value))
}

async fn post(
    broker: &TestBroker,
    path: &str,
    body: &Value,
) -> anyhow::Result<(StatusCode, Value)> {
    post_raw(broker, path, serde_json::to_vec(body)?).await
}

/// Asserts an error answer: its status, its code and part of its message.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str, says: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

fn pulled(body: &Value) -> Vec<Value> {
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// A pull of subscription `billing` with `wait`, made in the background;
/// returns once it waits (the subscription has a stream open for it), with
/// its answer to come.
async fn waiting_pull(
    broker: &TestBroker,
    wait: &str,
) -> anyhow::Result<JoinHandle<anyhow::Result<(StatusCode, Value)>>> {
    let url = format!("{}/v1/subscriptions/billing:pull", broker.http_url());
    let body = json!({ "wait": wait });
    let answer = tokio::spawn(async move {
        let response = reqwest::Client::new().post(url).json(&body).send().await?;
        let status = response.status();
        anyhow::Ok((status, response.json::<Value>().await?))
    });
    let client = broker.client();
    within(async {
        while get_subscription(&client, "billing").await?.open_streams == 0 {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_over_http_is_read_over_grpc_with_the_same_fields() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    let (status, body) = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": [
            {"payload": "aGVsbG8=", "key": "k1", "attributes": {"kind": "placed"}, "id": "o-1"},
            {"payload": "d29ybGQ="},
        ]}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // 64-bit integers are strings; defaults (offset 0, false) are written.
    assert_eq!(
        body,
        json!({"offsets": ["0", "1"], "duplicates": [false, false]})
    );

    // The same id again, with proto field names: not stored again.
    let (status, body) = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": [{"payload": "aGVsbG8=", "id": "o-1"}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"offsets": ["0"], "duplicates": [true]}));

    let read = client
        .subscriber_service()
        .read_topic(tidings::v1::ReadTopicRequest {
            topic: "orders".into(),
            offset: 0,
            max_messages: 10,
        })
        .await?
        .into_inner();
    assert_eq!(read.messages.len(), 2);
    assert_eq!(read.messages[0].payload.as_ref(), b"hello");
    assert_eq!(read.messages[0].key, "k1");
    assert_eq!(read.messages[0].id, "o-1");
    assert_eq!(read.messages[0].attributes["kind"], "placed");
    assert_eq!(read.messages[1].payload.as_ref(), b"world");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_leases_without_a_stream_and_ack_settles() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 60).await?;

    // Nothing yet: without a wait the answer comes at once, empty.
    let (status, body) = post(&broker, "/v1/subscriptions/billing:pull", &json!({})).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"messages": []}));

    publish(&client, "orders", &["a", "b", "c"]).await?;
    let (status, body) = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"maxMessages": 2}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = pulled(&body);
    assert_eq!(first.len(), 2, "{body}");
    assert_eq!(first[0]["offset"], "0");
    assert_eq!(first[0]["payload"], "YQ==");
    assert_eq!(first[0]["deliveryAttempt"], 1);
    assert!(
        first[0]["publishTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );

    // The pull ended, but its leases did not: the next pull gets only "c".
    let (_, body) = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"max_messages": 10}),
    )
    .await?;
    let second = pulled(&body);
    assert_eq!(second.len(), 1, "{body}");
    assert_eq!(second[0]["offset"], "2");

    // Ack by ack id and by offset; the backlog empties.
    let (status, body) = post(
        &broker,
        "/v1/subscriptions/billing:ack",
        &json!({"ackIds": [first[0]["ackId"], first[1]["ackId"]], "offsets": ["2"]}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let sub = get_subscription(&client, "billing").await?;
    assert_eq!(sub.backlog, 0);
    assert_eq!(sub.in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_gives_back_and_the_next_pull_counts_the_attempt() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 60).await?;
    publish(&client, "orders", &["a"]).await?;

    let (_, body) = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"wait": "10s"}),
    )
    .await?;
    let first = pulled(&body);
    assert_eq!(first.len(), 1, "{body}");
    let (status, body) = post(
        &broker,
        "/v1/subscriptions/billing:nack",
        &json!({"ackIds": [first[0]["ackId"]], "error": "try later"}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"wait": "10s"}),
    )
    .await?;
    let again = pulled(&body);
    assert_eq!(again.len(), 1, "{body}");
    assert_eq!(again[0]["offset"], "0");
    assert_eq!(again[0]["deliveryAttempt"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_with_a_wait_answers_when_a_message_comes() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 60).await?;

    let waiting = waiting_pull(&broker, "30s").await?;
    publish(&client, "orders", &["late"]).await?;
    let (status, body) = within(waiting).await???;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages = pulled(&body);
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["payload"], "bGF0ZQ==");

    // With nothing to come, the wait is served in full (a lower bound only).
    let started = Instant::now();
    let (status, body) = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"wait": "0.3s"}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"messages": []}));
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_pull_answers_503_when_the_broker_shuts_down() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 60).await?;
    let waiting = waiting_pull(&broker, "60s").await?;
    broker.stop().await?;
    let answer = within(waiting).await???;
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "shutting down",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_its_status_and_a_json_body() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_message_bytes = 64 * 1024).await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "billing", "orders", 60).await?;
    publish(&client, "orders", &["a"]).await?;

    let answer = post(
        &broker,
        "/v1/topics/nowhere:publish",
        &json!({"messages": [{"payload": ""}]}),
    )
    .await?;
    assert_error(&answer, StatusCode::NOT_FOUND, "NOT_FOUND", "nowhere");
    let answer = post(&broker, "/v1/subscriptions/nobody:pull", &json!({})).await?;
    assert_error(&answer, StatusCode::NOT_FOUND, "NOT_FOUND", "nobody");

    // Bad JSON says where.
    let answer = post_raw(
        &broker,
        "/v1/topics/orders:publish",
        b"{\"messages\": [}".to_vec(),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "line 1 column 15",
    );
    let answer = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"mesages": []}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "mesages",
    );
    let answer = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": [{"payload": "%%"}]}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "base64",
    );

    // gRPC's own validation, with its messages.
    let answer = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": []}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "no message",
    );
    let answer = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": [{"payload": "", "attributes": {"tidings.x": "1"}}]}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "tidings.",
    );
    let answer = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"maxMessages": 5000}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "max_messages",
    );
    let answer = post(
        &broker,
        "/v1/subscriptions/billing:pull",
        &json!({"wait": "-1s"}),
    )
    .await?;
    assert_error(&answer, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "wait");
    let answer = post(
        &broker,
        "/v1/subscriptions/billing:ack",
        &json!({"ackIds": ["x"]}),
    )
    .await?;
    assert_error(&answer, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "ack");
    let answer = post(
        &broker,
        "/v1/subscriptions/billing:ack",
        &json!({"subscription": "other", "offsets": ["0"]}),
    )
    .await?;
    assert_error(&answer, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "path");
    let answer = post(
        &broker,
        "/v1/topics/bad%20name:publish",
        &json!({"messages": [{"payload": ""}]}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "bad name",
    );
    // A message over the broker's limit, and a body over the transport's.
    let big = "QUFB".repeat(30 * 1024);
    let answer = post(
        &broker,
        "/v1/topics/orders:publish",
        &json!({"messages": [{"payload": big}]}),
    )
    .await?;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "bytes",
    );
    let huge = vec![b' '; 8 * 1024 * 1024];
    let answer = post_raw(&broker, "/v1/topics/orders:publish", huge).await?;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RESOURCE_EXHAUSTED",
        "larger",
    );

    // Routes that do not exist, and methods a route does not take.
    let answer = post(&broker, "/v1/topics/orders:delete", &json!({})).await?;
    assert_error(&answer, StatusCode::NOT_FOUND, "NOT_FOUND", "no route");
    let answer = post(&broker, "/v1/topics/orders", &json!({})).await?;
    assert_error(&answer, StatusCode::NOT_FOUND, "NOT_FOUND", "colon");
    let answer = post(&broker, "/v2/anything", &json!({})).await?;
    assert_error(&answer, StatusCode::NOT_FOUND, "NOT_FOUND", "/v2/anything");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/topics/orders:publish", broker.http_url()))
        .send()
        .await?;
    let status = response.status();
    let answer = (status, response.json::<Value>().await?);
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        "POST",
    );

    // None of it stored anything.
    assert_eq!(get_topic(&client, "orders").await?.next_offset, 1);
    Ok(())
}
