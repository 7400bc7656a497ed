//! Pushing to `https://` endpoints: the broker checks the endpoint's
//! certificate against the system's root certificates. Here the "system"
//! trusts a test CA, named by `SSL_CERT_FILE` (which the system's root
//! store reads); without it the same endpoint is refused, and the refusal
//! says why in the dead-letter copy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tidings::v1::{
    CreateSubscriptionRequest, CreateTopicRequest, DeadLetterPolicy, GetSubscriptionRequest,
    PublishMessage, PublishRequest, PushConfig, ReadTopicRequest, RetryPolicy,
};
use tidings_client::Client;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;

use common::{EVENT_TIMEOUT, ServerProcess};

/// A CA, written as PEM to `dir/ca.pem`, and a certificate it signed for
/// `localhost` and `127.0.0.1`, ready to serve.
fn certificates(dir: &Path) -> anyhow::Result<ServerConfig> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    Ok(config)
}

/// An https endpoint that answers 200 to every request and reports its
/// body.
async fn https_endpoint(
    config: ServerConfig,
) -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (bodies_tx, bodies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let bodies_tx = bodies_tx.clone();
            tokio::spawn(async move {
                // A client that does not trust us ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let bodies_tx = bodies_tx.clone();
                    async move {
                        let body = http_body_util::BodyExt::collect(request.into_body())
                            .await?
                            .to_bytes();
                        let _ = bodies_tx.send(body.to_vec());
                        Ok::<_, hyper::Error>(Response::new(String::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((addr, bodies))
}

async fn orders_with_a_push_subscription(
    client: &Client,
    endpoint: String,
    dead_letters: bool,
) -> anyhow::Result<()> {
    let mut admin = client.admin_service();
    for name in ["orders", "orders.dead"] {
        admin
            .create_topic(CreateTopicRequest {
                name: name.into(),
                ..CreateTopicRequest::default()
            })
            .await?;
    }
    let short = Some(prost_types::Duration {
        seconds: 0,
        nanos: 50_000_000,
    });
    admin
        .create_subscription(CreateSubscriptionRequest {
            name: "notify".into(),
            topic: "orders".into(),
            push_config: Some(PushConfig {
                endpoint,
                ..PushConfig::default()
            }),
            retry_policy: Some(RetryPolicy {
                minimum_backoff: short,
                maximum_backoff: short,
            }),
            dead_letter_policy: dead_letters.then(|| DeadLetterPolicy {
                dead_letter_topic: "orders.dead".into(),
                max_delivery_attempts: 2,
            }),
            ..CreateSubscriptionRequest::default()
        })
        .await?;
    client
        .publisher_service()
        .publish(PublishRequest {
            topic: "orders".into(),
            messages: vec![PublishMessage {
                payload: "order-1".into(),
                ..PublishMessage::default()
            }],
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_endpoint_with_a_trusted_certificate_gets_its_pushes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = certificates(dir.path())?;
    let (endpoint, mut bodies) = https_endpoint(tls).await?;
    let ca = dir.path().join("ca.pem");
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        dir.path(),
        &[],
        &[
            ("SSL_CERT_FILE", Some(ca.as_os_str())),
            ("SSL_CERT_DIR", None),
        ],
    )
    .await?;
    let client = server.client().await?;
    let url = format!("https://localhost:{}/hook", endpoint.port());
    orders_with_a_push_subscription(&client, url, false).await?;
    let body = tokio::time::timeout(EVENT_TIMEOUT, bodies.recv())
        .await
        .context("no push arrived over TLS")?
        .context("the endpoint stopped")?;
    let body: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(body["subscription"], "notify");
    assert_eq!(body["message"]["payload"], "b3JkZXItMQ==");
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let sub = client
                .admin_service()
                .get_subscription(GetSubscriptionRequest {
                    name: "notify".into(),
                })
                .await?
                .into_inner()
                .subscription
                .context("no subscription")?;
            if sub.backlog == 0 {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .context("the push was not acknowledged")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_endpoint_nobody_vouches_for_is_refused_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = certificates(dir.path())?;
    let (endpoint, mut bodies) = https_endpoint(tls).await?;
    // Only the machine's own roots: the test CA is not among them.
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        dir.path(),
        &[],
        &[("SSL_CERT_FILE", None), ("SSL_CERT_DIR", None)],
    )
    .await?;
    let client = server.client().await?;
    let url = format!("https://localhost:{}/hook", endpoint.port());
    orders_with_a_push_subscription(&client, url, true).await?;
    let copy = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let read = client
                .subscriber_service()
                .read_topic(ReadTopicRequest {
                    topic: "orders.dead".into(),
                    offset: 0,
                    max_messages: 1,
                })
                .await?
                .into_inner();
            if let Some(copy) = read.messages.into_iter().next() {
                return anyhow::Ok(copy);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .context("the refused message was not dead-lettered")??;
    let error = &copy.attributes["tidings.last_error"];
    assert!(
        error.contains("cannot reach the push endpoint") && error.contains("certificate"),
        "{error}"
    );
    assert!(bodies.try_recv().is_err(), "no request got through");
    Ok(())
}
