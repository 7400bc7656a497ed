//! TLS and mutual TLS on every listener, with certificates made in the
//! test ([`TestPki`]): clients that trust the broker's CA are served, over
//! gRPC, the HTTP bus and metrics; plaintext clients, clients that do not
//! trust the CA, and (with `--tls-client-ca`) clients without a
//! certificate of that CA are refused.

use std::path::PathBuf;

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use tidings_client::ClientBuilder;
use tidings_tests::{
    Client, TestBroker, TestPki, create_subscription, create_topic, publish, within,
};

/// Fails unless the broker refuses `builder`'s client: at connecting, or
/// at its first call (TLS 1.3 tells a client of a refused certificate only
/// after its side of the handshake). Returns what the client was told.
async fn refused(builder: ClientBuilder) -> anyhow::Result<String> {
    let chain = |err: &dyn std::error::Error| {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text
    };
    let client = match within(builder.connect()).await? {
        Err(err) => return Ok(chain(&err)),
        Ok(client) => client,
    };
    match within(client.health()).await? {
        Err(err) => Ok(chain(&err)),
        Ok(_) => bail!("the broker served the client"),
    }
}

/// A TLS broker whose fixture client trusts its CA (and shows `identity`).
async fn tls_broker(
    pki: &TestPki,
    client_certificates: bool,
    identity: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<TestBroker> {
    let ca = pki.ca();
    TestBroker::start_with_client(pki.tls_settings(client_certificates), move |builder| {
        let builder = builder.ca_certificate(ca.clone());
        match &identity {
            Some((cert, key)) => builder.client_identity(cert, key),
            None => builder,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_clients_publish_and_subscribe_and_others_are_refused() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let broker = tls_broker(&pki, false, None).await?;
    ensure!(broker.url().starts_with("https://"), "{}", broker.url());
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_subscription(&client, "audit", "orders", 0).await?;
    publish(&client, "orders", &["placed"]).await?;
    let mut subscriber = client.subscriber("audit").subscribe().await?;
    let delivery = within(subscriber.next())
        .await?
        .context("the stream ended")??;
    assert_eq!(delivery.payload().as_ref(), b"placed");
    delivery.ack();
    subscriber.close().await?;

    let plain = refused(Client::builder(format!("http://{}", broker.addr()))).await?;
    let untrusting = refused(Client::builder(broker.url())).await?;
    ensure!(
        untrusting.contains("certificate"),
        "a client that does not trust the CA is told why: {untrusting}"
    );
    let stranger = TestPki::new()?;
    refused(Client::builder(broker.url()).ca_certificate(stranger.ca()))
        .await
        .with_context(|| format!("(plaintext was refused with: {plain})"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_ca_only_certificates_it_signed_are_served() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let orders = pki.client("orders")?;
    let broker = tls_broker(&pki, true, Some(orders)).await?;
    create_topic(&broker.client(), "orders").await?;

    refused(Client::builder(broker.url()).ca_certificate(pki.ca())).await?;
    let stranger = TestPki::new()?;
    let (cert, key) = stranger.client("orders")?;
    refused(
        Client::builder(broker.url())
            .ca_certificate(pki.ca())
            .client_identity(cert, key),
    )
    .await?;
    // Another certificate of the broker's CA is as good as the fixture's.
    let (cert, key) = pki.client("billing")?;
    let billing = Client::builder(broker.url())
        .ca_certificate(pki.ca())
        .client_identity(cert, key)
        .connect()
        .await?;
    publish(&billing, "orders", &["paid"]).await?;
    Ok(())
}

/// An HTTP client that trusts `pki`'s CA and shows `identity`, if any.
fn https_client(pki: &TestPki, identity: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca())?)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca);
    if let Some(name) = identity {
        let (cert, key) = pki.client(name)?;
        let mut pem = std::fs::read(cert)?;
        pem.extend(std::fs::read(key)?);
        builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(builder.build()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_bus_and_metrics_speak_tls_and_require_client_certificates() -> anyhow::Result<()>
{
    let pki = TestPki::new()?;
    let orders = pki.client("orders")?;
    let broker = tls_broker(&pki, true, Some(orders)).await?;
    create_topic(&broker.client(), "orders").await?;
    let publish_url = format!("{}/v1/topics/orders:publish", broker.http_url());
    ensure!(publish_url.starts_with("https://"), "{publish_url}");
    let body = r#"{"messages": [{"payload": "aGk="}]}"#;

    let http = https_client(&pki, Some("billing"))?;
    let response = within(http.post(&publish_url).body(body).send()).await??;
    assert_eq!(response.status(), 200);
    assert!(response.text().await?.contains("\"offsets\""));
    let metrics = within(http.get(broker.metrics_url()).send()).await??;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await?;
    assert!(
        text.contains("tidings_topic_published_messages_total{topic=\"orders\"} 1"),
        "{text}"
    );

    let anonymous = https_client(&pki, None)?;
    for url in [publish_url.clone(), broker.metrics_url()] {
        let sent = within(anonymous.post(&url).body(body).send()).await?;
        ensure!(sent.is_err(), "{url} served a client without a certificate");
    }
    let plain = reqwest::Client::new();
    let plain_url = publish_url.replacen("https://", "http://", 1);
    let sent = within(plain.post(&plain_url).body(body).send()).await?;
    ensure!(
        sent.is_err() || sent.is_ok_and(|r| !r.status().is_success()),
        "plaintext HTTP was served"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_counts_tls_connections() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let ca = pki.ca();
    let settings = pki.tls_settings(false);
    let broker = TestBroker::start_with_client(
        move |config| {
            settings(config);
            config.max_connections = Some(1);
        },
        move |builder| builder.ca_certificate(ca.clone()),
    )
    .await?;
    create_topic(&broker.client(), "orders").await?;
    let second = Client::builder(broker.url())
        .ca_certificate(pki.ca())
        .connect()
        .await?;
    let err = within(second.health()).await?.expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("--max-connections"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_names_its_principal_in_the_auth_file() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let ops = pki.client("ops")?;
    let auth_file = pki.dir().join("auth.toml");
    std::fs::write(
        &auth_file,
        "[[principal]]\nname = \"ops\"\ncert_subject = \"CN=ops\"\n\n\
         [[grant]]\nprincipal = \"ops\"\nactions = [\"admin\", \"publish\"]\n\
         topics = [\"*\"]\nsubscriptions = [\"*\"]\n",
    )?;
    let settings = pki.tls_settings(true);
    let ca = pki.ca();
    let broker = TestBroker::start_with_client(
        move |config| {
            settings(config);
            config.auth_file = Some(auth_file.clone());
        },
        move |builder| {
            builder
                .ca_certificate(ca.clone())
                .client_identity(&ops.0, &ops.1)
        },
    )
    .await?;
    // No token: the certificate's subject is the principal.
    create_topic(&broker.client(), "orders").await?;
    let (cert, key) = pki.client("billing")?;
    let billing = Client::builder(broker.url())
        .ca_certificate(pki.ca())
        .client_identity(cert, key)
        .connect()
        .await?;
    let err = publish(&billing, "orders", &["x"])
        .await
        .expect_err("CN=billing names no principal");
    let status = err.downcast_ref::<tonic::Status>().map(tonic::Status::code);
    assert_eq!(status, Some(tonic::Code::Unauthenticated), "{err:#}");

    let publish_url = format!("{}/v1/topics/orders:publish", broker.http_url());
    let body = r#"{"messages": [{"payload": "aGk="}]}"#;
    let as_ops = https_client(&pki, Some("ops"))?;
    let response = within(as_ops.post(&publish_url).body(body).send()).await??;
    assert_eq!(response.status(), 200);
    let as_billing = https_client(&pki, Some("billing"))?;
    let response = within(as_billing.post(&publish_url).body(body).send()).await??;
    assert_eq!(response.status(), 401);
    Ok(())
}
