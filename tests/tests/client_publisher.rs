//! The Rust client's `Publisher` against a real broker and against
//! stand-ins for its publisher service: batching, offsets, order, flush and
//! close, errors that reach every caller, the ordered publisher's pause, the
//! bounded queue, and retries of calls that never reached the broker.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use futures::{FutureExt as _, StreamExt as _};
use tidings::v1::publisher_service_server::{PublisherService, PublisherServiceServer};
use tidings::v1::{
    CallRequest, CallResponse, CommitRequest, CommitResponse, PublishRequest, PublishResponse,
    PublishStreamResponse, ReplyRequest, ReplyResponse,
};
use tidings_client::{Client, Delivery, Error, Message, Publisher, WhenQueueFull};
use tidings_tests::{TestBroker, within};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// Long enough that a batch is never sent because its linger ended while a
/// test runs: whatever gets sent was sent by a full batch, flush or close.
const FOREVER: Duration = Duration::from_secs(3600);

/// Reads `count` messages of `topic` through a fresh subscription.
async fn read_back(
    client: &tidings_client::Client,
    topic: &str,
    count: usize,
) -> anyhow::Result<Vec<Delivery>> {
    let mut subscriber = client
        .subscriber(format!("{topic}-reader"))
        .topic(topic)
        .max_outstanding_messages(u32::try_from(count)?)
        .subscribe()
        .await?;
    let mut deliveries = Vec::with_capacity(count);
    while deliveries.len() < count {
        let next = within(subscriber.next()).await?;
        deliveries.push(next.ok_or_else(|| anyhow::anyhow!("the stream ended"))??);
    }
    Ok(deliveries)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_publishes_get_every_offset_exactly_once() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("orders").await?;
    let publisher = client.publisher("orders");

    // 10 tasks publish 100 messages each through clones of one publisher.
    let tasks = (0..10).map(|task| {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let futures = (0..100).map(|i| publisher.publish(format!("{task}-{i}")));
            let offsets = try_join_all(futures).await?;
            let payloads = (0..100).map(|i| format!("{task}-{i}"));
            Ok::<_, Error>(offsets.into_iter().zip(payloads).collect::<Vec<_>>())
        })
    });
    let mut published: HashMap<u64, String> = HashMap::new();
    for task in within(join_all(tasks)).await? {
        for (offset, payload) in task?? {
            assert!(
                published.insert(offset, payload).is_none(),
                "offset {offset} given twice"
            );
        }
    }
    let mut offsets: Vec<u64> = published.keys().copied().collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..1000).collect::<Vec<u64>>());
    assert_eq!(client.get_topic("orders").await?.next_offset, 1000);

    // Each future got the offset its own message was stored at.
    for delivery in read_back(&client, "orders", 1000).await? {
        let expected = published.get(&delivery.offset()).map(String::as_bytes);
        assert_eq!(Some(&delivery.payload()[..]), expected);
        delivery.ack();
    }
    Ok(())
}

/// The answers of a stand-in's `PublishStream` call.
type AnswerStream = futures::stream::BoxStream<'static, Result<PublishStreamResponse, Status>>;

/// What a stand-in broker does with `Publish` and `PublishStream`; it
/// refuses every other call of the publisher service.
#[tonic::async_trait]
trait StandInPublish: Send + Sync + 'static {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status>;

    /// Refused, as by a broker from before `PublishStream`, unless a
    /// stand-in says otherwise.
    async fn publish_stream(
        &self,
        _: Request<tonic::Streaming<PublishRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        Err(Status::unimplemented("a stand-in publishes only"))
    }
}

/// The publisher service of a stand-in broker; its second field counts the
/// `PublishStream` calls it got.
struct StandInService<T>(T, Arc<AtomicUsize>);

#[tonic::async_trait]
impl<T: StandInPublish> PublisherService for StandInService<T> {
    type PublishStreamStream = AnswerStream;

    async fn publish_stream(
        &self,
        request: Request<tonic::Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.publish_stream(request).await
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.0.publish(request).await
    }

    async fn commit(&self, _: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        Err(Status::unimplemented("a stand-in publishes only"))
    }

    async fn call(&self, _: Request<CallRequest>) -> Result<Response<CallResponse>, Status> {
        Err(Status::unimplemented("a stand-in publishes only"))
    }

    async fn reply(&self, _: Request<ReplyRequest>) -> Result<Response<ReplyResponse>, Status> {
        Err(Status::unimplemented("a stand-in publishes only"))
    }
}

/// A stand-in for the broker's publisher service that reports how many
/// messages each `Publish` call carried.
struct CallCounter {
    calls_tx: mpsc::UnboundedSender<usize>,
    next_offset: AtomicU64,
}

#[tonic::async_trait]
impl StandInPublish for CallCounter {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let count = request.get_ref().messages.len();
        let _ = self.calls_tx.send(count);
        let first = self.next_offset.fetch_add(count as u64, Ordering::SeqCst);
        Ok(Response::new(PublishResponse {
            offsets: (first..first + count as u64).collect(),
            duplicates: vec![false; count],
        }))
    }
}

/// Serves a [`CallCounter`] on a free port; returns its client, the sizes
/// of the calls it answers, and how many `PublishStream` calls it refused.
async fn call_counter() -> anyhow::Result<(Client, mpsc::UnboundedReceiver<usize>, Arc<AtomicUsize>)>
{
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let (client, streams) = serve(CallCounter {
        calls_tx,
        next_offset: AtomicU64::new(0),
    })
    .await?;
    Ok((client, calls_rx, streams))
}

/// Serves `stand_in` on a free port; returns a client of it and how many
/// `PublishStream` calls it got.
async fn serve(stand_in: impl StandInPublish) -> anyhow::Result<(Client, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let streams = Arc::new(AtomicUsize::new(0));
    let service = PublisherServiceServer::new(StandInService(stand_in, Arc::clone(&streams)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok((Client::connect(url).await?, streams))
}

// One thread: the publisher's task cannot run between the `publish` calls
// below, so all ten are queued before it looks.
#[tokio::test(flavor = "current_thread")]
async fn messages_queued_together_leave_in_one_call() -> anyhow::Result<()> {
    let (client, mut calls_rx, streams) = call_counter().await?;
    let publisher = client.publisher("burst");
    let futures: Vec<_> = (0..10)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();
    let offsets = within(try_join_all(futures)).await??;
    assert_eq!(offsets, (0..10).collect::<Vec<u64>>());
    assert_eq!(
        calls_rx.try_recv().ok(),
        Some(10),
        "all ten in the first call"
    );
    assert!(calls_rx.try_recv().is_err(), "and no other call");

    // A lone message goes alone.
    within(publisher.publish("alone")).await??;
    assert_eq!(calls_rx.try_recv().ok(), Some(1));
    assert_eq!(
        streams.load(Ordering::SeqCst),
        1,
        "the stream was tried once; then the publisher fell back to calls and kept to them"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_in_flight_keeps_publish_order() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("ordered").await?;
    let publisher = client
        .publisher_builder("ordered")
        .max_in_flight(1)
        .max_batch_messages(7)
        .linger(Duration::ZERO)
        .build();
    let futures: Vec<_> = (0..200)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();
    let offsets = within(try_join_all(futures)).await??;
    assert_eq!(offsets, (0..200).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_sends_a_lingering_batch_and_waits_for_it() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("lingering").await?;
    let publisher = client
        .publisher_builder("lingering")
        .linger(FOREVER)
        .build();
    let futures: Vec<_> = (0..50)
        .map(|i| publisher.publish(Message::new(format!("m{i}")).with_key("k")))
        .collect();
    assert_eq!(client.get_topic("lingering").await?.next_offset, 0);

    within(publisher.flush()).await??;
    assert_eq!(client.get_topic("lingering").await?.next_offset, 50);
    let offsets = within(try_join_all(futures)).await??;
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<u64>>(),
        "one batch, in order"
    );
    within(publisher.flush()).await??; // nothing queued: returns at once
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn close_publishes_what_is_queued_then_refuses_more() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("closing").await?;
    let publisher = client.publisher_builder("closing").linger(FOREVER).build();
    let clone = publisher.clone();
    let queued: Vec<_> = (0..10)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();

    within(publisher.close()).await??;
    assert_eq!(client.get_topic("closing").await?.next_offset, 10);
    assert_eq!(within(try_join_all(queued)).await??.len(), 10);
    let refused = within(clone.publish("late")).await?;
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    within(publisher.close()).await??; // closing twice is fine
    within(clone.flush()).await??;
    assert_eq!(client.get_topic("closing").await?.next_offset, 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_every_handle_still_publishes_the_queue() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("dropped").await?;
    let publisher: Publisher = client.publisher_builder("dropped").linger(FOREVER).build();
    let queued: Vec<_> = (0..10)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();
    drop(publisher);
    let offsets = within(try_join_all(queued)).await??;
    assert_eq!(offsets, (0..10).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topic_fails_every_message_and_the_flush() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let publisher = client.publisher_builder("nowhere").linger(FOREVER).build();
    let queued: Vec<_> = (0..20)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();

    let flushed = within(publisher.flush()).await?;
    assert_eq!(flushed.map_err(|e| e.code()), Err(Code::NotFound));
    for result in within(join_all(queued)).await? {
        let err = result.expect_err("the topic does not exist");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert!(
            err.status().is_some(),
            "the broker's status is kept: {err:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_fails_alone() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_message_bytes = 1024).await?;
    let client = broker.client();
    client.create_topic("sizes").await?;
    let publisher = client.publisher_builder("sizes").linger(FOREVER).build();
    let small = publisher.publish("small");
    let big = publisher.publish(vec![b'x'; 4096]);
    let after = publisher.publish("after");

    let flushed = within(publisher.flush()).await?;
    assert_eq!(flushed.map_err(|e| e.code()), Err(Code::InvalidArgument));
    assert_eq!(within(small).await??, 0);
    let err = within(big).await?.expect_err("over the broker's limit");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(within(after).await??, 1, "later messages keep their order");
    Ok(())
}

/// Waits until `client` finds the broker down: a call fails with
/// `UNAVAILABLE` (the first one after a stop may instead fail on the
/// connection that is closing).
async fn until_down(client: &Client) -> anyhow::Result<()> {
    within(async { while client.health().await.map_err(|e| e.code()) != Err(Code::Unavailable) {} })
        .await
}

/// Fast retries, so that a batch is tried again soon after the broker is
/// back, within a window far longer than any test.
fn retrying(publisher: tidings_client::PublisherBuilder) -> tidings_client::PublisherBuilder {
    publisher
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .retry_window(Duration::from_secs(600))
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_while_the_broker_is_down_fails_with_unavailable_after_the_retry_window()
-> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("down").await?;
    let window = Duration::from_millis(300);
    let publisher = client
        .publisher_builder("down")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .retry_window(window)
        .build();
    assert_eq!(within(publisher.publish("before")).await??, 0);
    broker.stop().await?;
    until_down(&client).await?;

    let started = Instant::now();
    let err = within(publisher.publish("during"))
        .await?
        .expect_err("nothing listens");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        started.elapsed() >= window,
        "tried again for the whole window, not {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_published_while_the_broker_is_down_land_in_order_once_it_is_back()
-> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("outage").await?;
    let publisher = retrying(client.publisher_builder("outage"))
        .max_in_flight(1)
        .max_batch_messages(4)
        .build();
    broker.stop().await?;
    until_down(&client).await?;

    let futures: Vec<_> = (0..20)
        .map(|i| publisher.publish(format!("m{i}")))
        .collect();
    // A lower bound only: without retries the first batch fails at once.
    let early = tokio::time::timeout(Duration::from_millis(500), publisher.flush()).await;
    assert!(
        early.is_err(),
        "still trying while the broker is down: {early:?}"
    );

    broker.resume_on_same_port().await?;
    let offsets = within(try_join_all(futures)).await??;
    assert_eq!(offsets, (0..20).collect::<Vec<u64>>(), "in publish order");
    let client = broker.client();
    assert_eq!(
        client.get_topic("outage").await?.next_offset,
        20,
        "each message stored exactly once"
    );
    let payloads: Vec<String> = read_back(&client, "outage", 20)
        .await?
        .into_iter()
        .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bounded_queue_fails_fast_while_the_broker_is_down() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("bounded").await?;
    // Each message takes a little over 1000 bytes: nine fit in 10 000.
    let publisher = retrying(client.publisher_builder("bounded"))
        .max_queued_bytes(10_000)
        .when_queue_full(WhenQueueFull::Fail)
        .build();
    broker.stop().await?;
    until_down(&client).await?;

    let queued: Vec<_> = (0..9)
        .map(|i| publisher.publish(format!("{i}{}", "x".repeat(999))))
        .collect();
    let refused = publisher
        .publish("y".repeat(1000))
        .now_or_never()
        .expect("a full queue answers at once");
    let err = refused.expect_err("the queue is full");
    assert!(matches!(err, Error::QueueFull { .. }), "{err:?}");
    assert_eq!(err.code(), Code::ResourceExhausted);

    broker.resume_on_same_port().await?;
    let mut offsets = within(try_join_all(queued)).await??;
    offsets.sort_unstable();
    assert_eq!(offsets, (0..9).collect::<Vec<u64>>());
    assert_eq!(within(publisher.publish("after")).await??, 9, "room again");
    assert_eq!(broker.client().get_topic("bounded").await?.next_offset, 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordered_publisher_that_gives_up_pauses_until_resumed() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("given-up").await?;
    let publisher = client
        .publisher_builder("given-up")
        .max_in_flight(1)
        .max_batch_messages(1)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .retry_window(Duration::from_millis(200))
        .build();
    broker.stop().await?;
    until_down(&client).await?;

    let results = within(join_all((0..5).map(|i| publisher.publish(format!("m{i}"))))).await?;
    let first = results[0].as_ref().expect_err("the broker is down");
    assert_eq!(first.code(), Code::Unavailable, "{first}");
    for result in &results[1..] {
        let err = result.as_ref().expect_err("not sent after the failure");
        assert!(matches!(err, Error::Paused { .. }), "{err:?}");
    }
    assert!(publisher.is_paused());

    broker.resume_on_same_port().await?;
    publisher.resume();
    let futures: Vec<_> = (0..5).map(|i| publisher.publish(format!("m{i}"))).collect();
    let offsets = within(try_join_all(futures)).await??;
    assert_eq!(offsets, (0..5).collect::<Vec<u64>>(), "in order, once");
    Ok(())
}

/// A stand-in for the broker's publisher service. It reports the payloads
/// of each call as it arrives, holds every call until `open` has a permit,
/// then fails the calls `fail` picks (storing nothing) and stores the
/// others, answering consecutive offsets.
struct StandIn {
    calls_tx: mpsc::UnboundedSender<Vec<String>>,
    calls: AtomicUsize,
    open: Arc<Semaphore>,
    fail: fn(usize) -> Option<Status>,
    stored: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl StandInPublish for StandIn {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let payloads: Vec<String> = request
            .into_inner()
            .messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        let _ = self.calls_tx.send(payloads.clone());
        drop(self.open.acquire().await);
        if let Some(status) = (self.fail)(call) {
            return Err(status);
        }
        let mut stored = self
            .stored
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let first = stored.len() as u64;
        stored.extend(payloads);
        Ok(Response::new(PublishResponse {
            offsets: (first..stored.len() as u64).collect(),
            duplicates: Vec::new(),
        }))
    }
}

/// A running [`StandIn`], seen from a test.
struct StandInView {
    client: Client,
    calls_rx: mpsc::UnboundedReceiver<Vec<String>>,
    /// Add a permit to let held calls (and every later one) through.
    open: Arc<Semaphore>,
    stored: Arc<Mutex<Vec<String>>>,
}

impl StandInView {
    fn stored(&self) -> Vec<String> {
        self.stored.lock().expect("not poisoned").clone()
    }
}

/// Serves a [`StandIn`] on a free port, open (calls go through) or not.
async fn stand_in(open: bool, fail: fn(usize) -> Option<Status>) -> anyhow::Result<StandInView> {
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(usize::from(open)));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let (client, _) = serve(StandIn {
        calls_tx,
        calls: AtomicUsize::new(0),
        open: Arc::clone(&gate),
        fail,
        stored: Arc::clone(&stored),
    })
    .await?;
    Ok(StandInView {
        client,
        calls_rx,
        open: gate,
        stored,
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// One thread: every `publish` below is queued before the task looks, so
// the batches are [m0 m1] [m2 m3] [m4 m5].
#[tokio::test(flavor = "current_thread")]
async fn an_ordered_publisher_pauses_after_a_failure_until_resumed() -> anyhow::Result<()> {
    let mut service = stand_in(true, |call| {
        (call == 1).then(|| Status::internal("disk full"))
    })
    .await?;
    let publisher = service
        .client
        .publisher_builder("ordered")
        .max_in_flight(1)
        .max_batch_messages(2)
        .build();
    let futures: Vec<_> = (0..6).map(|i| publisher.publish(format!("m{i}"))).collect();
    let results = within(join_all(futures)).await?;

    assert_eq!(results[0].as_ref().ok(), Some(&0));
    assert_eq!(results[1].as_ref().ok(), Some(&1));
    for failed in &results[2..4] {
        let err = failed.as_ref().expect_err("its call failed");
        assert_eq!(err.code(), Code::Internal, "{err}");
    }
    for paused in &results[4..] {
        let err = paused.as_ref().expect_err("queued behind the failure");
        assert!(matches!(err, Error::Paused { .. }), "{err:?}");
        assert_eq!(err.code(), Code::FailedPrecondition);
        let cause = err.source().expect("the cause is the source");
        assert!(cause.to_string().contains("disk full"), "{cause}");
    }
    assert!(publisher.is_paused());
    let late = within(publisher.publish("late")).await?;
    assert!(matches!(late, Err(Error::Paused { .. })), "{late:?}");
    within(publisher.flush()).await??; // nothing is queued
    assert_eq!(service.calls_rx.recv().await, Some(strings(&["m0", "m1"])));
    assert_eq!(service.calls_rx.recv().await, Some(strings(&["m2", "m3"])));
    assert!(
        service.calls_rx.try_recv().is_err(),
        "nothing is sent after the failure"
    );

    // The application resumes and publishes the failed messages again.
    publisher.resume();
    assert!(!publisher.is_paused());
    let retried: Vec<_> = (2..6).map(|i| publisher.publish(format!("m{i}"))).collect();
    assert_eq!(within(try_join_all(retried)).await??, [2, 3, 4, 5]);
    assert_eq!(
        service.stored(),
        strings(&["m0", "m1", "m2", "m3", "m4", "m5"]),
        "stored in publish order"
    );
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn an_unordered_publisher_does_not_pause() -> anyhow::Result<()> {
    let service = stand_in(true, |call| {
        (call == 0).then(|| Status::internal("disk full"))
    })
    .await?;
    let publisher = service.client.publisher("unordered");
    let err = within(publisher.publish("a"))
        .await?
        .expect_err("call 0 fails");
    assert_eq!(err.code(), Code::Internal);
    assert!(!publisher.is_paused());
    assert_eq!(within(publisher.publish("b")).await??, 0);
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_makes_publish_wait_for_room() -> anyhow::Result<()> {
    let mut service = stand_in(false, |_| None).await?;
    let publisher = service
        .client
        .publisher_builder("waiting")
        .max_queued_messages(2)
        .build();
    let a = publisher.publish("a");
    let b = publisher.publish("b");
    let mut c = publisher.publish("c");
    assert!(
        (&mut c).now_or_never().is_none(),
        "c waits for room (and takes its place in line)"
    );

    let first = within(service.calls_rx.recv()).await?;
    assert_eq!(first, Some(strings(&["a", "b"])), "c is not queued yet");
    assert!((&mut c).now_or_never().is_none(), "a and b hold the room");

    service.open.add_permits(1);
    assert_eq!(within(try_join_all([a, b])).await??, [0, 1]);
    assert_eq!(within(c).await??, 2);
    assert_eq!(service.calls_rx.recv().await, Some(strings(&["c"])));
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_fails_fast_when_told_to() -> anyhow::Result<()> {
    let service = stand_in(false, |_| None).await?;
    let publisher = service
        .client
        .publisher_builder("failing-fast")
        .max_queued_messages(2)
        .when_queue_full(WhenQueueFull::Fail)
        .build();
    let queued = [publisher.publish("a"), publisher.publish("b")];
    let refused = publisher
        .publish("c")
        .now_or_never()
        .expect("answered at once");
    assert!(
        matches!(
            refused,
            Err(Error::QueueFull {
                max_messages: 2,
                ..
            })
        ),
        "{refused:?}"
    );

    service.open.add_permits(1);
    assert_eq!(within(try_join_all(queued)).await??, [0, 1]);
    assert_eq!(
        within(publisher.publish("d")).await??,
        2,
        "answered messages give their room back"
    );
    assert_eq!(service.stored(), strings(&["a", "b", "d"]));
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn an_ordered_publisher_refusing_a_message_pauses_until_resumed() -> anyhow::Result<()> {
    let service = stand_in(false, |_| None).await?;
    let publisher = service
        .client
        .publisher_builder("ordered-full")
        .max_in_flight(1)
        .max_queued_messages(2)
        .when_queue_full(WhenQueueFull::Fail)
        .build();
    let queued = [publisher.publish("a"), publisher.publish("b")];
    let refused = publisher.publish("c").now_or_never();
    assert!(
        matches!(refused, Some(Err(Error::QueueFull { .. }))),
        "{refused:?}"
    );
    service.open.add_permits(1);
    assert_eq!(within(try_join_all(queued)).await??, [0, 1], "a and b go");

    // There is room again, but d must not overtake c.
    let d = within(publisher.publish("d")).await?;
    let err = d.expect_err("paused after c was refused");
    assert!(matches!(err, Error::Paused { .. }), "{err:?}");
    assert_eq!(
        err.source().map(|e| e.to_string()),
        Some(
            Error::QueueFull {
                max_messages: 2,
                max_bytes: tidings_client::DEFAULT_MAX_QUEUED_BYTES
            }
            .to_string()
        )
    );

    publisher.resume();
    let again = [publisher.publish("c"), publisher.publish("d")];
    assert_eq!(within(try_join_all(again)).await??, [2, 3]);
    assert_eq!(service.stored(), strings(&["a", "b", "c", "d"]));
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_publish_the_broker_may_have_stored_is_not_retried() -> anyhow::Result<()> {
    let mut service = stand_in(true, |_| Some(Status::unavailable("shutting down"))).await?;
    // Were it retried, it would be retried at once, for ten minutes.
    let publisher = service
        .client
        .publisher_builder("maybe-stored")
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .retry_window(Duration::from_secs(600))
        .build();
    let err = within(publisher.publish("a"))
        .await?
        .expect_err("the broker refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(service.calls_rx.recv().await, Some(strings(&["a"])));
    assert!(service.calls_rx.try_recv().is_err(), "one call, no retry");
    Ok(())
}

/// How many calls of `PublisherService/{method}` the broker counted in
/// `tidings_grpc_requests_total` (calls are counted when they end).
async fn publisher_calls(broker: &TestBroker, method: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(broker.metrics_url()).await?.text().await?;
    let label = format!("{{method=\"/tidings.v1.PublisherService/{method}\",");
    let mut calls = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tidings_grpc_requests_total")
            && rest.starts_with(&label)
            && let Some(count) = rest.rsplit(' ').next()
        {
            calls += count.parse::<f64>()?;
        }
    }
    Ok(calls as u64)
}

/// Waits until the broker has counted `count` ended `PublishStream` calls.
async fn until_streams_ended(broker: &TestBroker, count: u64) -> anyhow::Result<()> {
    within(async {
        while publisher_calls(broker, "PublishStream").await? < count {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_on_one_stream_are_stored_in_the_order_they_were_sent() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    client.create_topic("stream-order").await?;
    let stream = client.publish_stream();

    // A hundred requests of two messages, all waiting on the call at once.
    let requests = (0..100).map(|i| {
        let messages = vec![
            tidings_tests::message(format!("r{i}a")),
            tidings_tests::message(format!("r{i}b")),
        ];
        stream.publish_batch("stream-order", messages)
    });
    for (i, answer) in within(join_all(requests)).await?.into_iter().enumerate() {
        let offsets: Vec<u64> = answer?.iter().map(|p| p.offset).collect();
        let first = 2 * i as u64;
        assert_eq!(offsets, [first, first + 1], "request {i} in sending order");
    }

    // A refused request fails alone, with the status Publish would give,
    // and the call goes on.
    let refused = within(stream.publish_batch("nowhere", vec![tidings_tests::message("x")]))
        .await?
        .expect_err("no such topic");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    assert!(refused.to_string().contains("nowhere"), "{refused}");
    let after = within(stream.publish_batch("stream-order", vec![tidings_tests::message("after")]))
        .await??;
    assert_eq!(after[0].offset, 200);

    assert_eq!(
        publisher_calls(&broker, "Publish").await?,
        0,
        "no unary call"
    );
    assert_eq!(
        publisher_calls(&broker, "PublishStream").await?,
        0,
        "the call is still open"
    );
    drop(stream);
    until_streams_ended(&broker, 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_keeps_to_one_stream_and_a_refused_message_fails_alone() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(|config| config.max_message_bytes = 1024).await?;
    let client = broker.client();
    client.create_topic("stream-sizes").await?;
    // One message per request, eight requests waiting at once.
    let publisher = client
        .publisher_builder("stream-sizes")
        .max_batch_messages(1)
        .build();
    let futures: Vec<_> = (0..50)
        .map(|i| match i {
            20 => publisher.publish(vec![b'x'; 4096]),
            _ => publisher.publish(format!("m{i}")),
        })
        .collect();
    let results = within(join_all(futures)).await?;
    let mut offsets = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match (i, result) {
            (20, result) => {
                let err = result.expect_err("over the broker's limit");
                assert_eq!(err.code(), Code::InvalidArgument, "{err}");
                assert!(err.status().is_some(), "the broker's status: {err:?}");
            }
            (_, result) => offsets.push(result?),
        }
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..49).collect::<Vec<u64>>(),
        "every other one stored once"
    );
    assert_eq!(within(publisher.publish("later")).await??, 49);

    assert_eq!(
        publisher_calls(&broker, "Publish").await?,
        0,
        "no unary call"
    );
    within(publisher.close()).await??;
    until_streams_ended(&broker, 1).await?;
    assert_eq!(
        publisher_calls(&broker, "PublishStream").await?,
        1,
        "one stream carried everything"
    );
    Ok(())
}

/// Publishes `count` messages (with ids when `ids`), stops the broker as
/// soon as the first is stored, starts it again, and returns every
/// message's result.
async fn publish_across_a_restart(
    broker: &mut TestBroker,
    topic: &str,
    count: usize,
    ids: bool,
) -> anyhow::Result<Vec<Result<u64, Error>>> {
    let client = broker.client();
    client.create_topic(topic).await?;
    let publisher = retrying(client.publisher_builder(topic))
        .max_batch_messages(10)
        .build();
    let mut futures: Vec<_> = (0..count)
        .map(|i| {
            let message = Message::new(format!("m{i}"));
            let message = if ids {
                message.with_id(format!("id-{i}"))
            } else {
                message
            };
            publisher.publish(message)
        })
        .collect();
    let first = within(futures.remove(0)).await?;
    broker.stop().await?;
    broker.resume_on_same_port().await?;
    let mut results = vec![first];
    results.extend(within(join_all(futures)).await?);
    // The publisher carries on over a new stream.
    let again = within(publisher.publish("again")).await?;
    assert!(again.is_ok(), "publishing after the restart: {again:?}");
    Ok(results)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_cutting_the_stream_retries_batches_with_ids_exactly_once() -> anyhow::Result<()>
{
    let mut broker = TestBroker::start().await?;
    let results = publish_across_a_restart(&mut broker, "cut-ids", 5000, true).await?;
    let mut offsets = results.into_iter().collect::<Result<Vec<u64>, Error>>()?;
    offsets.sort_unstable();
    assert_eq!(offsets, (0..5000).collect::<Vec<u64>>(), "each stored once");
    let topic = broker.client().get_topic("cut-ids").await?;
    assert_eq!(topic.next_offset, 5001, "5000, once each, and one more");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_cutting_the_stream_fails_only_unanswered_batches_and_the_publisher_recovers()
-> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let results = publish_across_a_restart(&mut broker, "cut", 5000, false).await?;
    let mut offsets = Vec::new();
    for result in results {
        match result {
            Ok(offset) => offsets.push(offset),
            // The broker's UNAVAILABLE as it stopped, or its connection
            // closing under a call (CANCELLED): not retried, as either may
            // come after the batch was stored.
            Err(err) => assert!(
                matches!(err.code(), Code::Unavailable | Code::Cancelled),
                "{err}"
            ),
        }
    }
    let stored = offsets.len() as u64;
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len() as u64, stored, "no offset given twice");
    let topic = broker.client().get_topic("cut").await?;
    assert!(
        topic.next_offset > stored,
        "every answered message is stored ({stored}), and the one after"
    );
    Ok(())
}

/// A stand-in broker that serves `PublishStream`: it reports every
/// request's payloads as it arrives; its first call ends with
/// `UNAVAILABLE` after `cut_after` requests, answering none; later calls
/// answer every request with consecutive offsets.
struct CuttingStream {
    requests_tx: mpsc::UnboundedSender<Vec<String>>,
    calls: AtomicUsize,
    cut_after: usize,
    next_offset: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl StandInPublish for CuttingStream {
    async fn publish_stream(
        &self,
        request: Request<tonic::Streaming<PublishRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let cut = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let cut_after = self.cut_after;
        let requests_tx = self.requests_tx.clone();
        let next_offset = Arc::clone(&self.next_offset);
        let answers = request
            .into_inner()
            .enumerate()
            .map(move |(n, request)| {
                let request = request?;
                let payloads: Vec<String> = request
                    .messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect();
                let _ = requests_tx.send(payloads);
                if cut {
                    return if n + 1 == cut_after {
                        Err(Status::unavailable("shutting down"))
                    } else {
                        Ok(None)
                    };
                }
                let count = request.messages.len() as u64;
                let first = next_offset.fetch_add(count, Ordering::SeqCst);
                Ok(Some(PublishStreamResponse {
                    offsets: (first..first + count).collect(),
                    ..PublishStreamResponse::default()
                }))
            })
            .filter_map(|answer| async move { answer.transpose() })
            .boxed();
        Ok(Response::new(answers))
    }

    async fn publish(
        &self,
        _: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        Err(Status::internal(
            "a stand-in that publishes on streams only",
        ))
    }
}

/// Serves a [`CuttingStream`] that cuts its first call after `cut_after`
/// requests; returns its client and the payloads of each request it got.
async fn cutting_stream(
    cut_after: usize,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Vec<String>>)> {
    let (requests_tx, requests_rx) = mpsc::unbounded_channel();
    let (client, _) = serve(CuttingStream {
        requests_tx,
        calls: AtomicUsize::new(0),
        cut_after,
        next_offset: Arc::default(),
    })
    .await?;
    Ok((client, requests_rx))
}

// One thread: both messages are queued before the task looks, so both
// requests are on the first call when it is cut.
#[tokio::test(flavor = "current_thread")]
async fn a_cut_stream_fails_its_unanswered_batches_and_the_next_opens_a_new_one()
-> anyhow::Result<()> {
    let (client, mut requests_rx) = cutting_stream(2).await?;
    // Were they retried, it would be at once, for ten minutes.
    let publisher = client
        .publisher_builder("cut")
        .max_batch_messages(1)
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .retry_window(Duration::from_secs(600))
        .build();
    let cut = [publisher.publish("a"), publisher.publish("b")];
    for result in within(join_all(cut)).await? {
        let err = result.expect_err("the call ended unanswered");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("shutting down"), "{err}");
    }
    assert_eq!(within(publisher.publish("c")).await??, 0, "on a new call");
    let mut requests = Vec::new();
    while let Ok(request) = requests_rx.try_recv() {
        requests.extend(request);
    }
    assert_eq!(requests, strings(&["a", "b", "c"]), "nothing sent twice");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_cut_stream_sends_batches_with_ids_again_on_a_new_one() -> anyhow::Result<()> {
    let (client, mut requests_rx) = cutting_stream(2).await?;
    let publisher = client
        .publisher_builder("cut-ids")
        .max_batch_messages(1)
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .build();
    let cut = ["a", "b"].map(|p| publisher.publish(Message::new(p).with_id(p)));
    let mut offsets = within(try_join_all(cut)).await??;
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1], "answered on the second call");
    let mut requests = Vec::new();
    while let Ok(request) = requests_rx.try_recv() {
        requests.extend(request);
    }
    requests[2..].sort();
    assert_eq!(requests, strings(&["a", "b", "a", "b"]), "each sent twice");
    Ok(())
}
