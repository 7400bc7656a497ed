//! `Call` and `Reply`: a request published to a topic and answered by a
//! responder that consumes it. Answered, timed out, answered too late, a
//! responder that dies before answering, bad input, and a broker that
//! stops while a call waits.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use tidings::v1::{CallRequest, CallResponse, PublishMessage, ReceivedMessage, ReplyRequest};
use tidings_tests::{
    Client, Deliveries, TestBroker, create_subscription, create_topic, expect_code, get_topic,
    message, subscribe_request, within,
};
use tonic::Code;

fn call_request(topic: &str, payload: &str, timeout: Duration) -> CallRequest {
    CallRequest {
        topic: topic.into(),
        message: Some(message(payload)),
        timeout: prost_types::Duration::try_from(timeout).ok(),
    }
}

async fn call(
    client: &Client,
    request: CallRequest,
) -> Result<tonic::Response<CallResponse>, tonic::Status> {
    client.publisher_service().call(request).await
}

async fn reply(
    client: &Client,
    reply_to: &str,
    payload: &str,
) -> Result<tonic::Response<tidings::v1::ReplyResponse>, tonic::Status> {
    let request = ReplyRequest {
        reply_to: reply_to.into(),
        message: Some(PublishMessage {
            attributes: HashMap::from([("status".to_owned(), "ok".to_owned())]),
            ..message(payload)
        }),
    };
    client.publisher_service().reply(request).await
}

fn reply_to(request: &ReceivedMessage) -> anyhow::Result<String> {
    request
        .attributes
        .get("tidings.reply_to")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the request has no tidings.reply_to: {request:?}"))
}

/// A topic `questions` with a subscription `answerers` on it.
async fn questions(client: &Client) -> anyhow::Result<()> {
    create_topic(client, "questions").await?;
    create_subscription(client, "answerers", "questions", 60).await?;
    Ok(())
}

#[tokio::test]
async fn a_call_gets_the_reply_a_responder_sends() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    let started = SystemTime::now();
    let timeout = Duration::from_secs(60);
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            call(
                &client,
                call_request("questions", "sku-42 in stock?", timeout),
            )
            .await
        }
    });

    let mut responder =
        Deliveries::open(&client, subscribe_request("answerers", "questions")).await?;
    let request = responder.next().await?;
    assert_eq!(request.payload, "sku-42 in stock?".as_bytes());
    let deadline = humantime::parse_rfc3339(&request.attributes["tidings.reply_deadline"])?;
    assert!(
        deadline >= started + timeout - Duration::from_millis(1),
        "{deadline:?}"
    );
    assert!(deadline <= SystemTime::now() + timeout, "{deadline:?}");
    reply(&client, &reply_to(&request)?, "yes, 7").await?;

    let answer = within(pending).await???.into_inner();
    let got = answer.reply.expect("a reply");
    assert_eq!(got.payload, "yes, 7".as_bytes());
    assert_eq!(got.attributes["status"], "ok");
    assert_eq!(answer.offset, request.offset);
    // The token is spent.
    let again = reply(&client, &reply_to(&request)?, "again").await;
    expect_code(again, Code::NotFound)?;
    Ok(())
}

#[tokio::test]
async fn a_call_nobody_answers_times_out_and_a_late_reply_is_not_found() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { call(&client, call_request("questions", "anyone?", timeout)).await }
    });
    // The responder takes the request but answers only after the call
    // gave up.
    let mut responder =
        Deliveries::open(&client, subscribe_request("answerers", "questions")).await?;
    let request = responder.next().await?;
    let status = expect_code(within(pending).await??, Code::DeadlineExceeded)?;
    assert!(
        started.elapsed() >= timeout,
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(status.message().contains("offset 0"), "{status:?}");
    let late = reply(&client, &reply_to(&request)?, "sorry").await;
    let status = expect_code(late, Code::NotFound)?;
    assert!(status.message().contains("reply_to"), "{status:?}");
    // The request stays in the topic.
    assert_eq!(get_topic(&client, "questions").await?.next_offset, 1);
    Ok(())
}

#[tokio::test]
async fn when_a_responder_dies_another_gets_the_request_and_answers_in_time() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            let request = call_request("questions", "reserve 1", Duration::from_secs(60));
            call(&client, request).await
        }
    });
    let mut first = Deliveries::open(&client, subscribe_request("answerers", "questions")).await?;
    let taken = first.next().await?;
    assert_eq!(taken.delivery_attempt, 1);
    drop(first); // dies without answering: the request is delivered again

    let mut second = Deliveries::open(&client, subscribe_request("answerers", "questions")).await?;
    let again = second.next().await?;
    assert_eq!((again.offset, again.delivery_attempt), (taken.offset, 2));
    assert_eq!(reply_to(&again)?, reply_to(&taken)?);
    reply(&client, &reply_to(&again)?, "reserved").await?;
    let answer = within(pending).await???.into_inner();
    assert_eq!(
        answer.reply.expect("a reply").payload,
        "reserved".as_bytes()
    );
    Ok(())
}

#[tokio::test]
async fn bad_calls_and_replies_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    let cases = [
        (
            call_request("questions", "q", Duration::ZERO),
            Code::InvalidArgument,
            "timeout",
        ),
        (
            call_request("questions", "q", Duration::from_secs(601)),
            Code::InvalidArgument,
            "timeout",
        ),
        (
            CallRequest {
                timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..call_request("questions", "q", Duration::from_secs(1))
            },
            Code::InvalidArgument,
            "timeout must be a positive duration",
        ),
        (
            CallRequest {
                message: None,
                ..call_request("questions", "q", Duration::from_secs(1))
            },
            Code::InvalidArgument,
            "message",
        ),
        (
            CallRequest {
                message: Some(PublishMessage {
                    attributes: HashMap::from([(
                        "tidings.reply_to".to_owned(),
                        "forged".to_owned(),
                    )]),
                    ..message("q")
                }),
                ..call_request("questions", "q", Duration::from_secs(1))
            },
            Code::InvalidArgument,
            "tidings.",
        ),
        (
            call_request("nowhere", "q", Duration::from_secs(1)),
            Code::NotFound,
            "nowhere",
        ),
    ];
    for (request, code, named) in cases {
        let status = expect_code(call(&client, request).await, code)?;
        assert!(status.message().contains(named), "{named}: {status:?}");
    }
    assert_eq!(get_topic(&client, "questions").await?.next_offset, 0);
    for token in ["", "not-a-token", &"0".repeat(32)] {
        expect_code(reply(&client, token, "?").await, Code::NotFound)?;
    }
    Ok(())
}

#[tokio::test]
async fn a_call_waiting_when_the_broker_stops_ends_with_unavailable() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            let request = call_request("questions", "still there?", Duration::from_secs(600));
            call(&client, request).await
        }
    });
    let mut responder =
        Deliveries::open(&client, subscribe_request("answerers", "questions")).await?;
    responder.next().await?;
    within(broker.stop()).await??;
    expect_code(within(pending).await??, Code::Unavailable)?;
    Ok(())
}

#[tokio::test]
async fn the_rust_client_calls_and_answers_and_will_not_answer_a_plain_message()
-> anyhow::Result<()> {
    use futures::StreamExt as _;
    use tidings_client::{Error, Message};

    let broker = TestBroker::start().await?;
    let client = broker.client();
    questions(&client).await?;
    tidings_tests::publish(&client, "questions", &["not a request"]).await?;
    let caller = client.call("questions", "price of sku-9?", Duration::from_secs(60));
    let responder = async {
        let mut requests = client.subscriber("answerers").subscribe().await?;
        let plain = requests.next().await.context("no message")??;
        assert_eq!((plain.reply_to(), plain.reply_deadline()), (None, None));
        let refused = client.reply(&plain, "?").await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        plain.ack();
        let request = requests.next().await.context("no request")??;
        assert!(
            request
                .reply_deadline()
                .is_some_and(|d| d > SystemTime::now())
        );
        client
            .reply(
                &request,
                Message::new("12.50").with_attribute("currency", "EUR"),
            )
            .await?;
        request.ack();
        requests.close().await?;
        anyhow::Ok(())
    };
    let (answer, answered) = tokio::join!(within(caller), responder);
    answered?;
    let answer = answer??;
    assert_eq!(answer.offset, 1);
    assert_eq!(answer.reply.payload, "12.50".as_bytes());
    assert_eq!(answer.reply.attributes["currency"], "EUR");
    Ok(())
}
