//! [`TestPki`]: a certificate authority made on the spot, with a broker
//! certificate for `localhost` and `127.0.0.1` and client certificates, as
//! PEM files in a temporary directory, for the TLS tests.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tempfile::TempDir;
use tidings_server::config::Config;

/// A CA and the files it signed, in a directory of their own:
/// `ca.pem`, `server.pem`, `server-key.pem`, and `NAME.pem`,
/// `NAME-key.pem` per [`client`](TestPki::client).
pub struct TestPki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// A new CA and a broker certificate it signed.
    ///
    /// # Errors
    /// When a certificate cannot be made or written.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tidings-pki-")
            .tempdir()
            .context("create a directory for certificates")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name("Tidings test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).context("write ca.pem")?;
        let pki = Self { dir, ca };
        pki.sign("server", &["localhost", "127.0.0.1"])?;
        Ok(pki)
    }

    /// Signs a certificate for `names` with the subject `CN=file`, written
    /// as `file.pem` and `file-key.pem`.
    fn sign(&self, file: &str, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name = name(file);
        let cert = params.signed_by(&key, &self.ca)?;
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).context("write a certificate")?;
        std::fs::write(&key_path, key.serialize_pem()).context("write a key")?;
        Ok((cert_path, key_path))
    }

    /// A client certificate with the subject `CN=name`: the paths of
    /// `name.pem` and `name-key.pem`.
    ///
    /// # Errors
    /// When it cannot be made or written.
    pub fn client(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.sign(name, &[name])
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.pem`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// What turns TLS on in a broker's configuration with the broker
    /// certificate, and with `client_certificates` requires client
    /// certificates of this CA.
    pub fn tls_settings(
        &self,
        client_certificates: bool,
    ) -> impl Fn(&mut Config) + Send + Sync + 'static {
        let cert = self.dir.path().join("server.pem");
        let key = self.dir.path().join("server-key.pem");
        let ca = client_certificates.then(|| self.ca());
        move |config| {
            config.tls_cert = Some(cert.clone());
            config.tls_key = Some(key.clone());
            config.tls_client_ca.clone_from(&ca);
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
