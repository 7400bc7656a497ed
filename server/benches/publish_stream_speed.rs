//! One message per request, two ways, against a running broker: one
//! `PublishStream` with `--in-flight` requests unanswered at a time, and
//! `--in-flight` unary `Publish` calls in flight on one connection. The two
//! alternate (stream, unary, stream, ...) for `--rounds` rounds, each run
//! on a fresh topic; prints a `RESULT` line per run and the median ratio.
//!
//! ```text
//! tidings-server --listen 127.0.0.1:50051 --data-dir /tmp/speed &
//! cargo bench -p tidings-server --bench publish_stream_speed -- \
//!     --addr 127.0.0.1:50051 --count 50000 --size 256 --in-flight 256 --rounds 3
//! ```
//!
//! A quick check, not a timed test: run it on a quiet machine, and compare
//! only figures of one session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::{CreateTopicRequest, PublishMessage, PublishRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    addr: String,
    count: usize,
    size: usize,
    in_flight: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:50051".into(),
        count: 50_000,
        size: 256,
        in_flight: 256,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.parse::<usize>()
                .map_err(|e| format!("{name}: {e}"))
                .map(|n| n.max(1))
        };
        match flag.as_str() {
            "--addr" => args.addr = value("--addr")?,
            "--count" => args.count = number("--count", value("--count")?)?,
            "--size" => args.size = number("--size", value("--size")?)?,
            "--in-flight" => args.in_flight = number("--in-flight", value("--in-flight")?)?,
            "--rounds" => args.rounds = number("--rounds", value("--rounds")?)?,
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// A request of one message of `size` bytes to `topic`.
fn request(topic: &str, size: usize) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        messages: vec![PublishMessage {
            payload: vec![b'x'; size].into(),
            ..Default::default()
        }],
    }
}

/// Publishes `args.count` messages on one `PublishStream`, at most
/// `args.in_flight` unanswered; returns the time it took.
async fn over_stream(channel: Channel, topic: &str, args: &Args) -> Result<Duration, Failure> {
    let window = Arc::new(Semaphore::new(args.in_flight));
    let (requests_tx, requests_rx) = mpsc::channel(args.in_flight);
    let started = Instant::now();
    let mut answers = PublisherServiceClient::new(channel)
        .publish_stream(ReceiverStream::new(requests_rx))
        .await?
        .into_inner();
    let sender = {
        let (window, request) = (Arc::clone(&window), request(topic, args.size));
        let count = args.count;
        tokio::spawn(async move {
            for _ in 0..count {
                window.acquire().await?.forget();
                if requests_tx.send(request.clone()).await.is_err() {
                    break;
                }
            }
            Ok::<_, Failure>(())
        })
    };
    for _ in 0..args.count {
        let answer = answers.message().await?.ok_or("the stream ended early")?;
        if answer.error_code != 0 {
            return Err(answer.error_message.into());
        }
        window.add_permits(1);
    }
    let took = started.elapsed();
    sender.await??;
    Ok(took)
}

/// Publishes `args.count` messages as unary calls, `args.in_flight` at a
/// time; returns the time it took.
async fn unary(channel: Channel, topic: &str, args: &Args) -> Result<Duration, Failure> {
    let publisher = PublisherServiceClient::new(channel);
    let request = request(topic, args.size);
    let started = Instant::now();
    let mut calls = FuturesUnordered::new();
    let mut sent = 0;
    while sent < args.count || !calls.is_empty() {
        while sent < args.count && calls.len() < args.in_flight {
            let (mut publisher, request) = (publisher.clone(), request.clone());
            calls.push(async move { publisher.publish(request).await });
            sent += 1;
        }
        if let Some(done) = calls.next().await {
            done?;
        }
    }
    Ok(started.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(args: Args) -> Result<(), Failure> {
    let channel = Channel::from_shared(format!("http://{}", args.addr))?
        .connect()
        .await?;
    let mut admin = AdminServiceClient::new(channel.clone());
    let (mut streamed, mut unaried, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let mut rates = [0.0; 2];
        for (way, rate) in ["stream", "unary"].into_iter().zip(&mut rates) {
            let topic = format!("speed-{}-{round}-{way}", std::process::id());
            admin
                .create_topic(CreateTopicRequest {
                    name: topic.clone(),
                    ..Default::default()
                })
                .await?;
            let took = match way {
                "stream" => over_stream(channel.clone(), &topic, &args).await?,
                _ => unary(channel.clone(), &topic, &args).await?,
            };
            *rate = args.count as f64 / took.as_secs_f64();
            println!(
                "RESULT round={round} way={way} messages={} size={} in_flight={} msgs_per_sec={:.0}",
                args.count, args.size, args.in_flight, rate
            );
        }
        streamed.push(rates[0]);
        unaried.push(rates[1]);
        ratios.push(rates[0] / rates[1]);
    }
    println!(
        "MEDIAN stream={:.0} unary={:.0} msgs_per_sec ratio={:.2}",
        median(streamed),
        median(unaried),
        median(ratios)
    );
    Ok(())
}

fn main() -> Result<(), Failure> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}
