//! `PublisherService.PublishStream`: many publishes on one call, stored in
//! request order and answered in it; failed requests answered in place;
//! flow control; half-close; graceful shutdown.

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tempfile::TempDir;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::{
    CreateTopicRequest, PublishMessage, PublishRequest, PublishStreamResponse, ReadTopicRequest,
    StorageClass,
};
use tidings_server::auth::token_sha256;
use tidings_tests::{Client, TestBroker, create_topic, get_topic, message, within};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

/// A request of one message with this payload.
fn one(topic: &str, payload: impl Into<String>) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        messages: vec![message(payload)],
    }
}

/// A channel of its own to `broker`.
async fn channel(broker: &TestBroker) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(broker.url())?.connect().await?)
}

/// Opens a `PublishStream` sending `requests`.
async fn open(
    channel: Channel,
    requests: impl Stream<Item = PublishRequest> + Send + 'static,
) -> Result<Streaming<PublishStreamResponse>, Status> {
    let mut publisher = PublisherServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    Ok(publisher.publish_stream(requests).await?.into_inner())
}

/// Reads answers until the stream ends; returns them and the status it
/// ended with (`None` for OK).
async fn read_to_end(
    answers: &mut Streaming<PublishStreamResponse>,
) -> anyhow::Result<(Vec<PublishStreamResponse>, Option<Status>)> {
    let mut got = Vec::new();
    loop {
        match within(answers.message()).await? {
            Ok(Some(answer)) => got.push(answer),
            Ok(None) => return Ok((got, None)),
            Err(status) => return Ok((got, Some(status))),
        }
    }
}

/// The single offset of a one-message request's successful answer.
fn single_offset(answer: &PublishStreamResponse) -> anyhow::Result<u64> {
    anyhow::ensure!(
        answer.error_code == 0 && answer.offsets.len() == 1,
        "expected one offset, got {answer:?}"
    );
    Ok(answer.offsets[0])
}

/// The payloads of `topic` from offset 0, as text.
async fn stored_payloads(client: &Client, topic: &str) -> anyhow::Result<Vec<String>> {
    let mut subscriber = client.subscriber_service();
    let mut payloads = Vec::new();
    loop {
        let read = subscriber
            .read_topic(ReadTopicRequest {
                topic: topic.to_owned(),
                offset: payloads.len() as u64,
                max_messages: 1000,
            })
            .await?
            .into_inner();
        if read.messages.is_empty() {
            return Ok(payloads);
        }
        for stored in read.messages {
            anyhow::ensure!(stored.offset == payloads.len() as u64, "a gap in {topic}");
            payloads.push(String::from_utf8(stored.payload.to_vec())?);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_stored_and_answered_in_request_order_across_topics() -> anyhow::Result<()> {
    const PER_TOPIC: usize = 2000;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let topics = ["disk-a", "disk-b", "memory"];
    create_topic(&client, "disk-a").await?;
    create_topic(&client, "disk-b").await?;
    client
        .admin_service()
        .create_topic(CreateTopicRequest {
            name: "memory".into(),
            storage: StorageClass::Memory.into(),
            ..Default::default()
        })
        .await?;
    // One message per request, the topics interleaved, all sent at once:
    // many requests are in flight together.
    let requests: Vec<PublishRequest> = (0..PER_TOPIC)
        .flat_map(|i| topics.map(|topic| one(topic, format!("{topic}-{i}"))))
        .collect();
    let mut answers = open(channel(&broker).await?, futures::stream::iter(requests)).await?;
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    assert_eq!(got.len(), PER_TOPIC * topics.len());
    for (t, topic) in topics.iter().enumerate() {
        // Each topic's answers, in request order, name offsets 0, 1, 2...
        let offsets = got
            .iter()
            .skip(t)
            .step_by(topics.len())
            .map(single_offset)
            .collect::<anyhow::Result<Vec<_>>>()?;
        assert_eq!(offsets.len(), PER_TOPIC);
        let misplaced = offsets.iter().enumerate().find(|&(i, &o)| o != i as u64);
        assert_eq!(misplaced, None, "{topic}: (request, offset) out of order");
        // ...and what is stored there is what was sent, in order.
        let stored = stored_payloads(&client, topic).await?;
        assert_eq!(stored.len(), PER_TOPIC);
        let misplaced = stored
            .iter()
            .enumerate()
            .find(|&(i, payload)| *payload != format!("{topic}-{i}"));
        assert_eq!(misplaced, None, "{topic}: (offset, message) out of order");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_is_answered_in_place_and_the_stream_goes_on() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_message_bytes = 1024).await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let bad = [
        (one("missing", "x"), Code::NotFound),
        (
            PublishRequest {
                topic: "t".into(),
                messages: vec![],
            },
            Code::InvalidArgument,
        ),
        (one("t", "x".repeat(2000)), Code::InvalidArgument),
        (one("no spaces allowed", "x"), Code::InvalidArgument),
        (
            PublishRequest {
                topic: "t".into(),
                messages: vec![PublishMessage {
                    attributes: [("tidings.forged".to_owned(), "x".to_owned())].into(),
                    ..message("x")
                }],
            },
            Code::InvalidArgument,
        ),
    ];
    // Good requests between the bad ones: t gets 0, 1, ... in order.
    let mut requests = vec![one("t", "good-0")];
    for (i, (request, _)) in bad.iter().enumerate() {
        requests.push(request.clone());
        requests.push(one("t", format!("good-{}", i + 1)));
    }
    let mut answers = open(channel(&broker).await?, futures::stream::iter(requests)).await?;
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    assert_eq!(got.len(), 1 + 2 * bad.len());
    for (i, answer) in got.iter().step_by(2).enumerate() {
        assert_eq!(single_offset(answer)?, i as u64, "good request {i}");
    }
    for ((request, code), answer) in bad.into_iter().zip(got.iter().skip(1).step_by(2)) {
        // The same code and words as Publish gives.
        let unary = client
            .publisher_service()
            .publish(request)
            .await
            .expect_err("Publish refuses it");
        assert_eq!(unary.code(), code, "{unary:?}");
        assert_eq!(answer.error_code, code as i32, "{answer:?}");
        assert_eq!(answer.error_message, unary.message());
        assert!(answer.offsets.is_empty() && answer.duplicates.is_empty());
    }
    let stored = stored_payloads(&client, "t").await?;
    let expected: Vec<String> = (0..=5).map(|i| format!("good-{i}")).collect();
    assert_eq!(stored, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_id_is_flagged_as_a_duplicate_with_the_original_offset() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let with_id = |id: &str, payload: &str| PublishMessage {
        id: id.to_owned(),
        ..message(payload)
    };
    let requests = vec![
        PublishRequest {
            topic: "t".into(),
            messages: vec![with_id("a", "first"), with_id("b", "second")],
        },
        PublishRequest {
            topic: "t".into(),
            messages: vec![with_id("b", "again"), with_id("c", "third")],
        },
    ];
    let mut answers = open(channel(&broker).await?, futures::stream::iter(requests)).await?;
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    assert_eq!(got[0].offsets, [0, 1]);
    assert_eq!(got[0].duplicates, [false, false]);
    assert_eq!(got[1].offsets, [1, 2]);
    assert_eq!(got[1].duplicates, [true, false]);
    assert_eq!(
        stored_payloads(&client, "t").await?,
        ["first", "second", "third"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_that_half_closes_gets_every_answer_then_ok() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let (requests_tx, requests_rx) = mpsc::channel(16);
    let mut answers = open(channel(&broker).await?, ReceiverStream::new(requests_rx)).await?;
    for i in 0..500 {
        requests_tx.send(one("t", format!("{i}"))).await?;
    }
    drop(requests_tx);
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    let offsets = got
        .iter()
        .map(single_offset)
        .collect::<anyhow::Result<Vec<_>>>()?;
    assert_eq!(offsets, (0..500).collect::<Vec<u64>>());
    assert_eq!(get_topic(&client, "t").await?.next_offset, 500);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_that_reads_no_answers_is_held_back() -> anyhow::Result<()> {
    // Far more than the broker's window and every buffer on the way.
    const TOTAL: usize = 40_000;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    // The default HTTP/2 windows on the client's side, so that answers the
    // broker writes cannot pile up there by the hundred thousand.
    let channel = Endpoint::from_shared(broker.url())?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let (requests_tx, requests_rx) = mpsc::channel(1);
    let mut answers = open(channel, ReceiverStream::new(requests_rx)).await?;
    let payload = "x".repeat(1000);
    let request = move |i: usize| one("t", format!("{i:06}{payload}"));
    // Send without reading answers until a send is held back.
    let mut sent = 0;
    while sent < TOTAL {
        match tokio::time::timeout(Duration::from_secs(2), requests_tx.send(request(sent))).await {
            Ok(sending) => sending?,
            Err(_held_back) => break,
        }
        sent += 1;
    }
    let stored = get_topic(&client, "t").await?.next_offset;
    assert!(
        sent < TOTAL,
        "all {TOTAL} requests were sent: nothing held the publisher back"
    );
    assert!(
        stored < (TOTAL / 2) as u64,
        "{stored} of {sent} requests sent were stored while no answer was read"
    );
    // Reading the answers lets the rest through, in order.
    let sender = tokio::spawn(async move {
        for i in sent..TOTAL {
            requests_tx.send(request(i)).await?;
        }
        anyhow::Ok(())
    });
    let mut got = 0u64;
    while let Some(answer) = within(answers.message()).await?? {
        assert_eq!(single_offset(&answer)?, got);
        got += 1;
    }
    within(sender).await???;
    assert_eq!(got, TOTAL as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_what_was_stored_and_ends_with_unavailable() -> anyhow::Result<()> {
    // A drain that waited for its timeout would fail the fixture's stop,
    // which allows only a few seconds.
    let mut broker =
        TestBroker::start_with(|config| config.shutdown_timeout = Duration::from_secs(600)).await?;
    create_topic(&broker.client(), "t").await?;
    // Requests without end, until the broker stops reading.
    let requests = futures::stream::iter(0..).map(|i: u64| one("t", format!("{i}")));
    let mut answers = open(channel(&broker).await?, requests).await?;
    let mut got = Vec::new();
    while got.len() < 200 {
        let answer = within(answers.message()).await??.expect("answers go on");
        got.push(single_offset(&answer)?);
    }
    let (stopped, rest) = tokio::join!(broker.stop(), read_to_end(&mut answers));
    stopped?;
    let (rest, end) = rest?;
    for answer in &rest {
        got.push(single_offset(answer)?);
    }
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert_eq!(
        end.message(),
        "the broker is shutting down; requests after the last answer were not stored"
    );
    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
    // Every answered request reads back; nothing after it was stored.
    broker.resume_on_same_port().await?;
    let stored = stored_payloads(&broker.client(), "t").await?;
    let answered: Vec<String> = (0..got.len()).map(|i| format!("{i}")).collect();
    assert_eq!(stored, answered);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_transport_limit_ends_the_stream_after_the_answers_before_it()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let limit = tidings_server::config::Config::for_data_dir("unused").max_request_bytes();
    let requests = vec![
        one("t", "before"),
        one("t", "x".repeat(limit + 1)),
        one("t", "after"),
    ];
    let mut answers = open(channel(&broker).await?, futures::stream::iter(requests)).await?;
    let (got, end) = read_to_end(&mut answers).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(single_offset(&got[0])?, 0);
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("--max-message-bytes"), "{end:?}");
    assert_eq!(stored_payloads(&client, "t").await?, ["before"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_refused_for_disk_space_is_answered_in_place() -> anyhow::Result<()> {
    // No disk has this much free: every publish is refused.
    let broker = TestBroker::start_with(|config| config.min_free_disk = u64::MAX / 2).await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let requests = vec![one("t", "a"), one("t", "b")];
    let mut answers = open(channel(&broker).await?, futures::stream::iter(requests)).await?;
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    assert_eq!(got.len(), 2);
    for answer in got {
        assert_eq!(
            answer.error_code,
            Code::ResourceExhausted as i32,
            "{answer:?}"
        );
        assert!(
            answer.error_message.contains("--min-free-disk"),
            "{answer:?}"
        );
    }
    Ok(())
}

/// An auth file: `orders` may publish to `orders.*` only.
fn auth_file(dir: &TempDir) -> anyhow::Result<PathBuf> {
    let path = dir.path().join("auth.toml");
    let text = format!(
        "[[principal]]\nname = \"orders\"\ntoken_sha256 = \"{}\"\n\n\
         [[grant]]\nprincipal = \"orders\"\nactions = [\"publish\", \"admin\"]\n\
         topics = [\"orders.*\"]\n",
        token_sha256("orders-token"),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A `PublishStream` request stream with this `authorization` value.
fn authorized(
    requests: Vec<PublishRequest>,
    authorization: &str,
) -> anyhow::Result<Request<futures::stream::Iter<std::vec::IntoIter<PublishRequest>>>> {
    let mut request = Request::new(futures::stream::iter(requests));
    let value: MetadataValue<_> = authorization.parse()?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_are_checked_per_request_and_a_bad_token_ends_the_call() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = auth_file(&dir)?;
    let broker =
        TestBroker::start_with(move |config| config.auth_file = Some(path.clone())).await?;
    let mut publisher = PublisherServiceClient::new(channel(&broker).await?);
    let mut admin =
        tidings::v1::admin_service_client::AdminServiceClient::new(channel(&broker).await?);
    for name in ["orders.placed", "payments"] {
        let mut create = Request::new(CreateTopicRequest {
            name: name.into(),
            ..Default::default()
        });
        create
            .metadata_mut()
            .insert("authorization", "Bearer orders-token".parse()?);
        // `payments` is not the principal's: only the first is created.
        let _ = admin.create_topic(create).await;
    }
    let requests = vec![
        one("orders.placed", "a"),
        one("payments", "b"),
        one("orders.placed", "c"),
    ];
    let mut answers = publisher
        .publish_stream(authorized(requests.clone(), "Bearer orders-token")?)
        .await?
        .into_inner();
    let (got, end) = read_to_end(&mut answers).await?;
    assert!(end.is_none(), "the stream ended with {end:?}");
    assert_eq!(single_offset(&got[0])?, 0);
    assert_eq!(
        got[1].error_code,
        Code::PermissionDenied as i32,
        "{:?}",
        got[1]
    );
    assert_eq!(single_offset(&got[2])?, 1);
    let refused = publisher
        .publish_stream(authorized(requests, "Bearer wrong-token")?)
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    Ok(())
}
