//! The Rust client of the Tidings broker.
//!
//! A [`Client`] holds one gRPC channel to a broker and hands out the
//! generated clients of its three services, which share that channel:
//!
//! ```no_run
//! # async fn example() -> Result<(), tidings_client::Error> {
//! use tidings_client::Client;
//! use tidings_client::v1::{PublishMessage, PublishRequest};
//!
//! let client = Client::connect("http://localhost:50051").await?;
//! let response = client
//!     .publisher_service()
//!     .publish(PublishRequest {
//!         topic: "order.placed".into(),
//!         messages: vec![PublishMessage {
//!             payload: "order 42".into(),
//!             ..Default::default()
//!         }],
//!     })
//!     .await?;
//! println!("stored at offsets {:?}", response.into_inner().offsets);
//! # Ok(())
//! # }
//! ```
//!
//! This crate speaks only the wire API (`tidings::v1`); it never depends on
//! the server or its storage engine.

use tonic::transport::{Channel, Endpoint};

pub use tidings::v1;
use tidings::v1::admin_service_client::AdminServiceClient;
use tidings::v1::publisher_service_client::PublisherServiceClient;
use tidings::v1::subscriber_service_client::SubscriberServiceClient;

/// What a client call can fail with. The underlying `tonic` error is kept as
/// the source, so callers can inspect it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker address is not a valid URL.
    #[error("broker address {url:?} is not valid; use a URL such as http://localhost:50051")]
    InvalidUrl {
        /// The address given.
        url: String,
        /// Why it was rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection to the broker could be made.
    #[error("cannot connect to the broker at {url}; is it running?")]
    Connect {
        /// The address dialled.
        url: String,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The broker answered a call with an error status.
    #[error("the broker answered {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[source] tonic::Status),
}

impl Error {
    /// The gRPC status code of the failure: the broker's code for
    /// [`Error::Status`], `UNAVAILABLE` when no connection could be made,
    /// `INVALID_ARGUMENT` for a bad address.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidUrl { .. } => tonic::Code::InvalidArgument,
            Self::Connect { .. } => tonic::Code::Unavailable,
            Self::Status(status) => status.code(),
        }
    }

    /// The broker's status, when the broker answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// A connection to one broker. Cloning is cheap; clones share the channel.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to the broker at `url` (for example `http://localhost:50051`).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `url` cannot be parsed, [`Error::Connect`]
    /// when the broker cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        let url = url.into();
        let endpoint = match Endpoint::from_shared(url.clone()) {
            Ok(endpoint) => endpoint,
            Err(source) => return Err(Error::InvalidUrl { url, source }),
        };
        match endpoint.connect().await {
            Ok(channel) => Ok(Self::from_channel(channel)),
            Err(source) => Err(Error::Connect { url, source }),
        }
    }

    /// Wraps a channel made elsewhere (for example with custom timeouts).
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel }
    }

    /// The channel every service client uses.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// A client of `tidings.v1.PublisherService`.
    pub fn publisher_service(&self) -> PublisherServiceClient<Channel> {
        PublisherServiceClient::new(self.channel.clone())
    }

    /// A client of `tidings.v1.SubscriberService`.
    pub fn subscriber_service(&self) -> SubscriberServiceClient<Channel> {
        SubscriberServiceClient::new(self.channel.clone())
    }

    /// A client of `tidings.v1.AdminService`.
    pub fn admin_service(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
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

    #[test]
    fn status_keeps_its_code_and_source() {
        let err = Error::from(tonic::Status::not_found("topic \"x\" does not exist"));
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(
            err.status().map(tonic::Status::message),
            Some("topic \"x\" does not exist")
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
