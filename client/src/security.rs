//! TLS and bearer tokens of a connection: what [`ClientBuilder`]'s
//! `ca_certificate`, `client_identity` and `bearer_token` set.
//!
//! An `https://` URL turns TLS on: the broker's certificate is checked
//! against the system's root certificates plus an optional CA file, and
//! with mutual TLS a client certificate and key are shown. A bearer token
//! is sent as `authorization: Bearer TOKEN` on every call of every service
//! (the calls of [`Transport`]). Files are read, and checked to hold PEM of
//! their kind, when the client connects. This module sends nothing itself.
//!
//! [`ClientBuilder`]: crate::ClientBuilder

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// The connection every service client of a [`Client`](crate::Client)
/// uses: its channel, with the bearer token (if any) added to each call.
pub type Transport = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to every call that does not carry an
/// `authorization` of its own; adds nothing without a token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.0.is_some() { "Some(..)" } else { "None" };
        write!(f, "BearerToken({shown})")
    }
}

impl BearerToken {
    /// `authorization: Bearer token`, marked sensitive.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the token is empty or holds
    /// characters a header cannot carry.
    pub fn new(token: &str) -> Result<Self> {
        let invalid = || {
            Error::InvalidArgument(
                "the bearer token must be non-empty printable ASCII without spaces".into(),
            )
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| invalid())?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Sends no token.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The TLS settings a [`ClientBuilder`](crate::ClientBuilder) collects.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    /// A PEM file of CA certificates to trust besides the system's.
    pub(crate) ca_certificate: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
}

impl TlsOptions {
    fn any(&self) -> bool {
        self.ca_certificate.is_some() || self.identity.is_some()
    }

    /// Sets up TLS on `endpoint` for an `https://` `url`: the system's root
    /// certificates (when it has any) and the CA file, and the client
    /// certificate. Leaves an `http://` endpoint as it is.
    pub(crate) fn apply(&self, endpoint: Endpoint, url: &str) -> Result<Endpoint> {
        let Some(config) = self.config(url)? else {
            return Ok(endpoint);
        };
        let tls_error = |source: tonic::transport::Error| {
            Error::InvalidArgument(format!("cannot set up TLS for {url}: {source}"))
        };
        match endpoint
            .clone()
            .tls_config(config.clone().with_native_roots())
        {
            Ok(endpoint) => Ok(endpoint),
            // A system without root certificates (a bare container, say):
            // the CA file alone.
            Err(_) if self.ca_certificate.is_some() => {
                endpoint.tls_config(config).map_err(tls_error)
            }
            Err(source) => Err(tls_error(source)),
        }
    }

    /// The TLS settings for `url` but the system's root certificates:
    /// `None` for `http://` (which takes no TLS option), the files read and
    /// checked for `https://`.
    fn config(&self, url: &str) -> Result<Option<ClientTlsConfig>> {
        let https = url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if !https {
            if self.any() {
                return Err(Error::InvalidArgument(format!(
                    "a CA certificate or client certificate is set, but {url} is not an \
                     https:// address; use https:// to connect with TLS"
                )));
            }
            return Ok(None);
        }
        let mut config = ClientTlsConfig::new();
        if let Some(path) = &self.ca_certificate {
            let pem = read_pem(path, "CA certificate", has_certificate)?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &self.identity {
            let cert = read_pem(cert, "client certificate", has_certificate)?;
            let key = read_pem(key, "client key", has_key)?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(config))
    }
}

fn has_certificate(pem: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .is_some_and(|c| c.is_ok())
}

fn has_key(pem: &[u8]) -> bool {
    PrivateKeyDer::from_pem_slice(pem).is_ok()
}

/// Reads a PEM file of `what`, checked by `holds`.
fn read_pem(path: &Path, what: &'static str, holds: fn(&[u8]) -> bool) -> Result<Vec<u8>> {
    let file_error = |source| Error::TlsFile {
        what,
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(file_error)?;
    if !holds(&pem) {
        return Err(file_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it holds no PEM {what}"),
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_into_every_call_but_one_that_has_its_own() {
        let mut token = BearerToken::new("s3cret").expect("a valid token");
        let request = token.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret")
        );
        let mut own = tonic::Request::new(());
        own.metadata_mut()
            .insert("authorization", MetadataValue::from_static("Bearer other"));
        let request = token.call(own).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer other")
        );
        let request = BearerToken::none()
            .call(tonic::Request::new(()))
            .expect("passes");
        assert!(request.metadata().get("authorization").is_none());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "two words", "new\nline", "é"] {
            assert!(BearerToken::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_options_need_https() {
        let options = TlsOptions {
            ca_certificate: Some("ca.pem".into()),
            identity: None,
        };
        let err = options.config("http://b:1").expect_err("must fail");
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(
            TlsOptions::default()
                .config("http://b:1")
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn unreadable_and_non_pem_files_are_named() {
        let dir = tempfile::tempdir().expect("a directory");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").expect("written");
        for (path, expected) in [
            (dir.path().join("missing.pem"), "missing.pem"),
            (junk, "no PEM CA certificate"),
        ] {
            let options = TlsOptions {
                ca_certificate: Some(path),
                identity: None,
            };
            let err = options.config("https://b:1").expect_err("must fail");
            let text = format!(
                "{err}: {}",
                std::error::Error::source(&err).expect("a source")
            );
            assert!(text.contains("CA certificate file"), "{text}");
            assert!(text.contains(expected), "{text}");
        }
    }
}
