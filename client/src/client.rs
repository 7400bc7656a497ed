//! [`Client`] and [`ClientBuilder`]: one gRPC channel to a broker, the raw
//! generated service clients over it, and the health check.
//!
//! The admin calls live in `admin.rs`, publishing in `publisher.rs` and
//! subscribing in `subscriber.rs`, TLS and tokens in `security.rs`; this
//! module only connects and hands out the channel. It never retries: callers (or the publisher and subscriber)
//! decide that.

use std::path::PathBuf;
use std::time::Duration;

use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::subscriber_service_client::SubscriberServiceClient;
use tidings::v1::{PublishMessage, PublishRequest};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::commit::Commit;
use crate::error::{Error, Result};
use crate::publish_stream::PublishStream;
use crate::publisher::{Publisher, PublisherBuilder};
use crate::security::{BearerToken, TlsOptions, Transport};
use crate::subscriber::SubscriberBuilder;
use crate::types::Published;

/// HTTP/2 stream flow-control window of a connection.
const HTTP2_STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 connection flow-control window.
const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;
/// The default [`ClientBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default [`ClientBuilder::max_decoding_message_size`]: 64 MiB, well
/// above the broker's largest `Subscribe` frames.
pub const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// A connection to one broker. Cloning is cheap; clones share the channel.
///
/// Connect with [`Client::connect`] (or [`Client::builder`] for timeouts,
/// keep-alives, TLS and a bearer token); then use the admin calls ([`Client::create_topic`] …),
/// [`Client::publisher`] and [`Client::subscriber`]. The channel reconnects
/// on its own when the broker comes back after a restart on the same
/// address.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Transport,
    request_timeout: Option<Duration>,
    max_decoding_message_size: usize,
}

impl Client {
    /// Connects to the broker at `url` (for example `http://127.0.0.1:50051`,
    /// or `https://broker.example:50051` for TLS checked against the
    /// system's root certificates) with the default settings of
    /// [`ClientBuilder`].
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `url` cannot be parsed, [`Error::Connect`]
    /// when the broker cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a connection to the broker at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Wraps a channel made elsewhere, with no bearer token, no request
    /// timeout and the default decoding limit.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            channel: Transport::new(channel, BearerToken::none()),
            request_timeout: None,
            max_decoding_message_size: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
        }
    }

    /// The channel every service client uses, adding the bearer token (if
    /// any) to each call: a client of any gRPC service of the broker can
    /// be made on a clone of it.
    pub fn channel(&self) -> &Transport {
        &self.channel
    }

    /// A raw client of `tidings.v1.PublisherService` on this channel.
    pub fn publisher_service(&self) -> PublisherServiceClient<Transport> {
        PublisherServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_decoding_message_size)
    }

    /// A raw client of `tidings.v1.SubscriberService` on this channel.
    pub fn subscriber_service(&self) -> SubscriberServiceClient<Transport> {
        SubscriberServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_decoding_message_size)
    }

    /// A raw client of `tidings.v1.AdminService` on this channel.
    pub fn admin_service(&self) -> AdminServiceClient<Transport> {
        AdminServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_decoding_message_size)
    }

    /// Asks the broker's `grpc.health.v1.Health` service about the server as
    /// a whole (service `""`): `true` when it answers `SERVING`.
    ///
    /// # Errors
    /// [`Error::Status`] when the check itself fails (for example
    /// `UNAVAILABLE` when the broker is down).
    pub async fn health(&self) -> Result<bool> {
        let request = self.request(HealthCheckRequest {
            service: String::new(),
        });
        let response = HealthClient::new(self.channel.clone())
            .check(request)
            .await?
            .into_inner();
        Ok(response.status == ServingStatus::Serving as i32)
    }

    /// Publishes `messages` to `topic` in one `Publish` call, without a
    /// [`Publisher`]'s batching, queue or retries: stored together at
    /// consecutive offsets, or not at all. Returns each message's offset
    /// and whether it was a duplicate (its id was stored already, so it
    /// was not stored again and its offset is the original's).
    ///
    /// # Errors
    /// The broker's status (`NOT_FOUND` for an unknown topic,
    /// `INVALID_ARGUMENT` for a bad message, …), or `INTERNAL` when it
    /// answered another number of offsets than messages.
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<Published>> {
        let count = messages.len();
        let request = self.request(PublishRequest {
            topic: topic.to_owned(),
            messages,
        });
        let response = self
            .publisher_service()
            .publish(request)
            .await?
            .into_inner();
        published(topic, count, response.offsets, response.duplicates)
    }

    /// A [`PublishStream`]: one long-lived `PublishStream` call on this
    /// channel, opened by its first publish, that carries many publishes
    /// (the stream's form of [`Client::publish_batch`]).
    pub fn publish_stream(&self) -> PublishStream {
        PublishStream::new(self.clone())
    }

    /// Starts a [`Commit`]: publishes and acknowledgements stored by one
    /// atomic `Commit` call when it is [sent](Commit::send).
    pub fn commit(&self) -> Commit {
        Commit::new(self.clone())
    }

    /// A publisher of `topic` with the default settings of
    /// [`PublisherBuilder`].
    ///
    /// # Panics
    /// When called outside a Tokio runtime: the publisher runs a task.
    pub fn publisher(&self, topic: impl Into<String>) -> Publisher {
        self.publisher_builder(topic).build()
    }

    /// Starts configuring a publisher of `topic`.
    pub fn publisher_builder(&self, topic: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder::new(self.clone(), topic.into())
    }

    /// Starts configuring a subscriber of `subscription`; finish with
    /// [`SubscriberBuilder::subscribe`].
    pub fn subscriber(&self, subscription: impl Into<String>) -> SubscriberBuilder {
        SubscriberBuilder::new(self.clone(), subscription.into())
    }

    /// The deadline of each unary call, if one is set.
    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// Wraps `message` in a request carrying the unary request timeout, if
    /// one is set.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.request_timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// The answer to a publish of `count` messages to `topic`, from the
/// broker's `offsets` and `duplicates`.
///
/// # Errors
/// `INTERNAL` when the broker answered another number of offsets than
/// messages.
pub(crate) fn published(
    topic: &str,
    count: usize,
    offsets: Vec<u64>,
    duplicates: Vec<bool>,
) -> Result<Vec<Published>> {
    if offsets.len() != count {
        return Err(tonic::Status::internal(format!(
            "the broker answered {} offsets for {count} messages published to {topic:?}",
            offsets.len()
        ))
        .into());
    }
    // A broker from before deduplication answers no flags: nothing was a
    // duplicate.
    let mut duplicates = duplicates.into_iter();
    Ok(offsets
        .into_iter()
        .map(|offset| Published {
            offset,
            duplicate: duplicates.next().unwrap_or(false),
        })
        .collect())
}

/// Settings of a connection; made by [`Client::builder`].
///
/// ```no_run
/// # async fn example() -> Result<(), tidings_client::Error> {
/// use std::time::Duration;
/// use tidings_client::Client;
///
/// let client = Client::builder("http://127.0.0.1:50051")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(10))
///     .http2_keep_alive_interval(Duration::from_secs(30))
///     .connect()
///     .await?;
///
/// // TLS with a private CA, a client certificate (mutual TLS) and a token.
/// let secure = Client::builder("https://broker.internal:50051")
///     .ca_certificate("ca.pem")
///     .client_identity("client.pem", "client-key.pem")
///     .bearer_token("s3cret")
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    tcp_keepalive: Option<Duration>,
    http2_keep_alive_interval: Option<Duration>,
    max_decoding_message_size: usize,
    tls: TlsOptions,
    bearer_token: Option<String>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    fn new(url: String) -> Self {
        Self {
            url,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: None,
            tcp_keepalive: None,
            http2_keep_alive_interval: None,
            max_decoding_message_size: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
            tls: TlsOptions::default(),
            bearer_token: None,
        }
    }

    /// Trusts the CA certificates of this PEM file besides the system's
    /// root certificates, for an `https://` URL (a broker with a
    /// certificate of a private CA). The file is read on connecting.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_certificate = Some(path.into());
        self
    }

    /// Shows this client certificate, with its private key (both PEM
    /// files), to a broker that requires client certificates (mutual TLS);
    /// needs an `https://` URL. The files are read on connecting.
    pub fn client_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.identity = Some((cert.into(), key.into()));
        self
    }

    /// Sends `authorization: Bearer TOKEN` on every call (every service,
    /// streams included). Over plain `http://` the token travels
    /// unencrypted.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// How long to wait for a TCP connection to be made (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for each unary call (admin calls, `Publish`, `Ack`, …);
    /// none by default. It is sent to the broker as `grpc-timeout` too.
    /// `Subscribe` streams are never cut by it.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Turns TCP keep-alive on, probing after this much idle time.
    pub fn tcp_keepalive(mut self, interval: Duration) -> Self {
        self.tcp_keepalive = Some(interval);
        self
    }

    /// Sends HTTP/2 pings at this interval, even while idle, so that a dead
    /// connection (and a `Subscribe` stream on it) is noticed.
    pub fn http2_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.http2_keep_alive_interval = Some(interval);
        self
    }

    /// The largest response message accepted, in bytes (default 64 MiB:
    /// one `Subscribe` frame may hold many messages).
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = limit;
        self
    }

    /// Connects now (with TLS for an `https://` URL).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when the URL cannot be parsed,
    /// [`Error::InvalidArgument`] for a bad token or TLS options on an
    /// `http://` URL, [`Error::TlsFile`] when a TLS file cannot be read or
    /// holds no PEM of its kind, [`Error::Connect`] when the broker cannot
    /// be reached or the TLS handshake fails.
    pub async fn connect(self) -> Result<Client> {
        let endpoint = self.endpoint()?;
        let token = self.token()?;
        match endpoint.connect().await {
            Ok(channel) => Ok(self.client(channel, token)),
            Err(source) => Err(Error::Connect {
                url: self.url,
                source,
            }),
        }
    }

    /// Returns a client that connects on its first call.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`], but for failures to reach the
    /// broker, which its calls report.
    pub fn connect_lazy(self) -> Result<Client> {
        let channel = self.endpoint()?.connect_lazy();
        let token = self.token()?;
        Ok(self.client(channel, token))
    }

    fn token(&self) -> Result<BearerToken> {
        match &self.bearer_token {
            Some(token) => BearerToken::new(token),
            None => Ok(BearerToken::none()),
        }
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let endpoint = match Endpoint::from_shared(self.url.clone()) {
            Ok(endpoint) => endpoint,
            Err(source) => {
                return Err(Error::InvalidUrl {
                    url: self.url.clone(),
                    source,
                });
            }
        };
        // Generous fixed HTTP/2 windows: h2 lets a connection buffer small
        // DATA frames only up to half its connection window, and many
        // concurrent calls with tiny answers (acks, publishes) would
        // otherwise exhaust the default and lose the connection.
        let mut endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_keepalive(self.tcp_keepalive)
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
        if let Some(interval) = self.http2_keep_alive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_while_idle(true);
        }
        self.tls.apply(endpoint, &self.url)
    }

    fn client(&self, channel: Channel, token: BearerToken) -> Client {
        Client {
            channel: Transport::new(channel, token),
            request_timeout: self.request_timeout,
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_url_is_invalid_argument() {
        let err = Client::connect("not a url").await.expect_err("must fail");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("not a url"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_broker_is_unavailable() {
        // Bind a port, then free it, so nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let err = Client::connect(format!("http://{addr}"))
            .await
            .expect_err("must fail");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn lazy_client_fails_on_its_first_call_not_before() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let client = Client::builder(format!("http://{addr}"))
            .request_timeout(Duration::from_secs(5))
            .connect_lazy()
            .expect("a valid URL");
        let err = client.health().await.expect_err("nothing listens");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn request_carries_the_timeout() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let mut client = Client::from_channel(channel);
        assert!(client.request(()).metadata().get("grpc-timeout").is_none());
        client.request_timeout = Some(Duration::from_secs(3));
        assert!(client.request(()).metadata().get("grpc-timeout").is_some());
    }
}
