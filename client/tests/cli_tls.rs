//! The `tidings` tool against a broker that speaks TLS and requires client
//! certificates: `--ca-cert`, `--client-cert` and `--client-key` (or their
//! `TIDINGS_*` variables) with an `https://` server, and clear failures
//! without them.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use anyhow::ensure;
use common::{Broker, strings, tidings, tidings_env};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

/// Files a CA signed, in `dir`: `ca.pem`, `server.pem` and
/// `server-key.pem` for `127.0.0.1`, `client.pem` and `client-key.pem`.
struct Files {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn certificates(dir: &Path) -> anyhow::Result<Files> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let sign = |name: &str, san: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![san.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca)?;
        let paths = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&paths.0, cert.pem())?;
        std::fs::write(&paths.1, key.serialize_pem())?;
        Ok(paths)
    };
    Ok(Files {
        server: sign("server", "127.0.0.1")?,
        client: sign("client", "client")?,
        ca: ca_path,
    })
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_speaks_tls_with_a_ca_file_and_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = certificates(dir.path())?;
    let (server_cert, server_key, ca) = (
        files.server.0.clone(),
        files.server.1.clone(),
        files.ca.clone(),
    );
    let broker = Broker::start_with(move |config| {
        config.tls_cert = Some(server_cert);
        config.tls_key = Some(server_key);
        config.tls_client_ca = Some(ca);
    })
    .await?;
    let url = format!("https://{}", broker.addr());
    let (client_cert, client_key) = (path(&files.client.0), path(&files.client.1));

    let created = tidings(
        &strings(&[
            "--server",
            &url,
            "--ca-cert",
            path(&files.ca),
            "--client-cert",
            client_cert,
            "--client-key",
            client_key,
            "topics",
            "create",
            "orders",
        ]),
        None,
    )
    .await?
    .ok()?;
    ensure!(created.stdout.contains("orders"), "{}", created.stdout);

    let env = [
        ("TIDINGS_CA_CERT", path(&files.ca)),
        ("TIDINGS_CLIENT_CERT", client_cert),
        ("TIDINGS_CLIENT_KEY", client_key),
    ];
    let published = tidings_env(
        &strings(&["--server", &url, "pub", "orders", "hello"]),
        None,
        &env,
    )
    .await?
    .ok()?;
    assert_eq!(published.stdout.trim(), "0");

    // Without the client certificate, the broker refuses the handshake.
    let refused = tidings(
        &strings(&["--server", &url, "--ca-cert", path(&files.ca), "health"]),
        None,
    )
    .await?;
    assert!(!refused.status.success(), "{refused:?}");
    // Without the CA, the broker's certificate is not trusted.
    let untrusted = tidings_env(&strings(&["--server", &url, "health"]), None, &env[1..]).await?;
    assert!(!untrusted.status.success(), "{untrusted:?}");
    assert!(untrusted.stderr.contains("certificate"), "{untrusted:?}");

    let missing = dir.path().join("missing.pem");
    let unreadable = tidings(
        &strings(&["--server", &url, "--ca-cert", path(&missing), "health"]),
        None,
    )
    .await?;
    let line = unreadable.failure_line()?;
    assert!(
        line.contains("CA certificate file") && line.contains("missing.pem"),
        "{line}"
    );
    broker.stop().await
}
