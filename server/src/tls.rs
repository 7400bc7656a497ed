//! TLS on every listener (`--tls-cert`, `--tls-key`), and client
//! certificates (`--tls-client-ca`): the PEM files loaded and checked at
//! start, the rustls settings of each listener, and what a request knows
//! of its client's certificate ([`ClientCertificate`]).
//!
//! rustls with the ring provider; TLS 1.2 and 1.3. gRPC negotiates HTTP/2
//! (ALPN `h2`), the HTTP bus and metrics HTTP/1.1. This module only loads
//! and describes; `crate::accept` does the handshakes.
//!
//! # Reading the client certificate
//! With `--tls-client-ca`, every connection has shown a certificate signed
//! by that CA before any request is read. Each request on it then carries
//! the certificate as a [`ClientCertificate`] in its extensions, on gRPC
//! and on the HTTP bus alike:
//!
//! ```
//! use tidings_server::tls::ClientCertificate;
//!
//! /// In a tonic handler (a tower layer reads an `http::Request`'s
//! /// extensions the same way): `Some("CN=orders")`.
//! fn subject<T>(request: &tonic::Request<T>) -> Option<&str> {
//!     request
//!         .extensions()
//!         .get::<ClientCertificate>()
//!         .map(ClientCertificate::subject)
//! }
//! # assert_eq!(subject(&tonic::Request::new(())), None);
//! ```
//!
//! Without TLS, or without `--tls-client-ca`, requests carry none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::config::Config;

/// ALPN of the gRPC listener.
const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP bus and of metrics.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One of `--tls-cert` and `--tls-key` is given without the other.
    #[error("{given} is set but {missing} is not; TLS needs both --tls-cert and --tls-key")]
    Incomplete {
        /// The flag given.
        given: &'static str,
        /// The flag missing.
        missing: &'static str,
    },
    /// `--tls-client-ca` without TLS.
    #[error(
        "--tls-client-ca is set but --tls-cert and --tls-key are not; client certificates \
         are only checked over TLS, so give all three"
    )]
    ClientCaWithoutTls,
    /// A file could not be read.
    #[error("cannot read the {flag} file {}", path.display())]
    Read {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM section of the kind expected, or a broken one.
    #[error("the {flag} file {} holds no PEM {what}: {reason}", path.display())]
    Pem {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold, such as `certificate` or `private key`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refuses them.
    #[error(
        "the key in {} and the certificate in {} cannot be used together (--tls-key, --tls-cert)",
        key.display(),
        cert.display()
    )]
    Certificate {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls says.
        #[source]
        source: rustls::Error,
    },
    /// The client CA file holds no certificate rustls can verify with.
    #[error("the --tls-client-ca file {} holds no usable CA certificate", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What rustls says.
        #[source]
        source: VerifierBuilderError,
    },
}

/// The rustls settings of the broker's listeners, when TLS is on.
#[derive(Clone)]
pub struct Tls {
    grpc: TlsAcceptor,
    http: TlsAcceptor,
    client_certificates: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certificates", &self.client_certificates)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `--tls-cert`, `--tls-key` and `--tls-client-ca`: `None` when
    /// TLS is off.
    ///
    /// # Errors
    /// [`TlsError`] naming the flag and the file: half a configuration, a
    /// file that cannot be read or holds no PEM of its kind, a key that
    /// does not match the certificate.
    pub fn from_config(config: &Config) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if config.tls_client_ca.is_some() => {
                return Err(TlsError::ClientCaWithoutTls);
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-cert",
                    missing: "--tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-key",
                    missing: "--tls-cert",
                });
            }
        };
        Self::load(cert, key, config.tls_client_ca.as_deref()).map(Some)
    }

    /// Loads a certificate chain and its key, and optionally a CA that
    /// client certificates must be signed by.
    ///
    /// # Errors
    /// As [`Tls::from_config`].
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let chain = read_certificates("--tls-cert", cert)?;
        let key_der = read_key(key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Certificate {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })?;
        let builder = match client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider)?),
            None => builder.with_no_client_auth(),
        };
        let server =
            builder
                .with_single_cert(chain, key_der)
                .map_err(|source| TlsError::Certificate {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    source,
                })?;
        Ok(Self {
            grpc: acceptor(server.clone(), ALPN_H2),
            http: acceptor(server, ALPN_HTTP1),
            client_certificates: client_ca.is_some(),
        })
    }

    /// Handshakes of the gRPC listener (HTTP/2).
    pub(crate) fn grpc(&self) -> TlsAcceptor {
        self.grpc.clone()
    }

    /// Handshakes of the HTTP bus and metrics (HTTP/1.1).
    pub(crate) fn http(&self) -> TlsAcceptor {
        self.http.clone()
    }

    /// Whether clients must show a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_certificates
    }
}

fn acceptor(mut config: ServerConfig, alpn: &[u8]) -> TlsAcceptor {
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// The verifier of client certificates: signed by a CA in `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates("--tls-client-ca", path)? {
        roots.add(cert).map_err(|err| TlsError::Pem {
            flag: "--tls-client-ca",
            path: path.to_owned(),
            what: "CA certificate",
            reason: err.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: path.to_owned(),
            source,
        })
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file: at least one.
fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        flag,
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "expected a section starting with -----BEGIN CERTIFICATE-----".into(),
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS #8, PKCS #1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| TlsError::Pem {
        flag: "--tls-key",
        path: path.to_owned(),
        what: "private key",
        reason: match err {
            pem::Error::NoItemsFound => {
                "expected a section starting with -----BEGIN PRIVATE KEY----- \
                 (or RSA PRIVATE KEY, EC PRIVATE KEY)"
                    .into()
            }
            err => err.to_string(),
        },
    })
}

/// The certificate a client showed in the TLS handshake, in the extensions
/// of each request on that connection (gRPC and the HTTP bus): see the
/// module documentation. Cloning is cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate(Arc<Shown>);

#[derive(Debug, PartialEq, Eq)]
struct Shown {
    subject: String,
    common_name: Option<String>,
    chain: Vec<CertificateDer<'static>>,
}

impl ClientCertificate {
    /// Describes the chain a client showed (its own certificate first);
    /// `None` when it is empty or its first certificate cannot be parsed
    /// (rustls has verified it, so neither happens in practice).
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        use x509_cert::der::Decode as _;
        let first = chain.first()?;
        let cert = x509_cert::Certificate::from_der(first).ok()?;
        let subject = cert.tbs_certificate().subject();
        let common_name = subject.common_name().ok().flatten().map(String::from);
        Some(Self(Arc::new(Shown {
            subject: subject.to_string(),
            common_name,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
        })))
    }

    /// The subject's distinguished name as RFC 4514 writes it (the most
    /// specific attribute first, joined by `,`): `CN=orders`, or
    /// `CN=orders,O=Shop,C=DE`.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The subject's common name (`orders` of `CN=orders`), if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.0.common_name.as_deref()
    }

    /// The chain as shown, DER-encoded, the client's own certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0.chain
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn config(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> Config {
        let mut config = Config::for_data_dir("d");
        config.tls_cert = cert.map(PathBuf::from);
        config.tls_key = key.map(PathBuf::from);
        config.tls_client_ca = ca.map(PathBuf::from);
        config
    }

    fn error(config: &Config) -> String {
        let err = Tls::from_config(config).expect_err("must fail");
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text
    }

    #[test]
    fn no_flags_no_tls() {
        assert!(
            Tls::from_config(&config(None, None, None))
                .expect("loads")
                .is_none()
        );
    }

    #[test]
    fn half_a_configuration_names_both_flags() {
        for config in [
            config(Some("c.pem"), None, None),
            config(None, Some("k.pem"), None),
        ] {
            let text = error(&config);
            assert!(
                text.contains("--tls-cert") && text.contains("--tls-key"),
                "{text}"
            );
        }
        let text = error(&config(None, None, Some("ca.pem")));
        assert!(
            text.contains("--tls-client-ca") && text.contains("--tls-cert"),
            "{text}"
        );
    }

    /// A new key, and the parameters of a certificate for `localhost`
    /// with the subject `CN=name` (a broker's or a client's).
    pub(crate) fn key_and_params(name: &str) -> (rcgen::KeyPair, rcgen::CertificateParams) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (key, params)
    }

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn certificate(name: &str) -> (String, String) {
        let (key, params) = key_and_params(name);
        let cert = params.self_signed(&key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("a directory");
        let (cert, key) = certificate("broker");
        let (_, other_key) = certificate("other");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("written");
            path.to_str().expect("UTF-8").to_owned()
        };
        let (cert, key) = (write("cert.pem", &cert), write("key.pem", &key));
        let other_key = write("other-key.pem", &other_key);
        let junk = write("junk.pem", "not pem at all\n");
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("UTF-8");

        let text = error(&config(Some(missing), Some(&key), None));
        assert!(
            text.contains("cannot read the --tls-cert file") && text.contains("missing.pem"),
            "{text}"
        );
        let text = error(&config(Some(&junk), Some(&key), None));
        assert!(
            text.contains("--tls-cert file") && text.contains("junk.pem"),
            "{text}"
        );
        assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
        let text = error(&config(Some(&cert), Some(&junk), None));
        assert!(
            text.contains("--tls-key file") && text.contains("BEGIN PRIVATE KEY"),
            "{text}"
        );
        let text = error(&config(Some(&cert), Some(&other_key), None));
        assert!(
            text.contains("other-key.pem") && text.contains("cert.pem"),
            "{text}"
        );
        let text = error(&config(Some(&cert), Some(&key), Some(&junk)));
        assert!(
            text.contains("--tls-client-ca file") && text.contains("junk.pem"),
            "{text}"
        );

        let tls = Tls::from_config(&config(Some(&cert), Some(&key), Some(&cert)))
            .expect("loads")
            .expect("TLS is on");
        assert!(tls.requires_client_certificates());
    }

    #[test]
    fn client_certificate_names_its_subject() {
        let (cert, _) = certificate("orders");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM");
        let shown = ClientCertificate::from_chain(&[der]).expect("parses");
        assert_eq!(shown.subject(), "CN=orders");
        assert_eq!(shown.common_name(), Some("orders"));
        assert_eq!(shown.chain().len(), 1);
        assert!(ClientCertificate::from_chain(&[]).is_none());
    }
}
