//! Accepting connections on the broker's listeners (gRPC, the HTTP bus,
//! metrics): TCP, counted against `--max-connections`, then the TLS
//! handshake when TLS is on. Each listener's connections come out of an
//! [`Incoming`], handshakes done, with what is known of them
//! ([`ConnectionInfo`]).
//!
//! A connection accepted while the broker holds its limit takes no place:
//! it is served, but every request on it is answered RESOURCE_EXHAUSTED
//! naming the limit (by the servers, which read
//! [`ConnectionInfo::refused`]), so its client learns why instead of
//! hanging in the accept queue; the places come back as connections close.
//!
//! Handshakes run side by side, each under a timeout, so a slow or silent
//! client holds up nobody. Nothing here speaks HTTP or gRPC.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::tls::ClientCertificate;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive of accepted connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Connections accepted (and shaken hands with) ahead of the server.
const QUEUE: usize = 64;
/// How long accepting pauses after an error such as running out of file
/// descriptors, which would otherwise repeat at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The broker's open client connections, against a limit.
#[derive(Debug, Clone)]
pub struct Connections {
    open: Arc<AtomicUsize>,
    limit: Option<usize>,
}

impl Connections {
    /// No connection yet; at most `limit` at once (unlimited with `None`).
    pub fn new(limit: Option<usize>) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Takes a place for a new connection when there is room: `Err` with
    /// the limit when there is not.
    fn admit(&self) -> Result<Place, usize> {
        let limit = self.limit;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                limit.is_none_or(|limit| n < limit).then_some(n + 1)
            })
            .map(|_| Place(Arc::clone(&self.open)))
            .map_err(|_| limit.unwrap_or_default())
    }
}

/// A connection's place among [`Connections`], given back when dropped.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the broker knows of a connection, for each request on it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The certificate the client showed, with `--tls-client-ca`.
    pub client_certificate: Option<ClientCertificate>,
    /// The limit the connection was over, if it was: its requests are
    /// refused.
    pub refused: Option<usize>,
}

/// The message of a request refused because its connection was over
/// `--max-connections`.
pub(crate) fn over_limit_message(limit: usize) -> String {
    format!(
        "the broker serves {limit} connections, its limit (--max-connections); \
         share a connection, close idle ones, or reconnect later"
    )
}

/// An accepted connection, plain or TLS, holding its place until it
/// closes.
#[derive(Debug)]
pub struct Connection {
    io: Either<TcpStream, Box<TlsStream<TcpStream>>>,
    info: ConnectionInfo,
    _place: Option<Place>,
}

impl Connection {
    /// What is known of the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

/// The connections of one listener, accepted by a task of their own,
/// handshakes done. Accepting stops when this is dropped or `stop` is
/// cancelled, and the listening socket is closed then.
#[derive(Debug)]
pub struct Incoming {
    connections_rx: mpsc::Receiver<Connection>,
    local_addr: SocketAddr,
}

impl Incoming {
    /// Starts accepting on `listener`: with `tls`, each connection is
    /// handed on once its handshake succeeded; each takes a place in
    /// `connections`.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn start(
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        connections: Connections,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (connections_tx, connections_rx) = mpsc::channel(QUEUE);
        tokio::spawn(accept_loop(AcceptLoop {
            listener,
            tls,
            connections,
            stop,
            connections_tx,
        }));
        Ok(Self {
            connections_rx,
            local_addr,
        })
    }

    /// The next connection; `None` once accepting has stopped.
    pub async fn next(&mut self) -> Option<Connection> {
        self.connections_rx.recv().await
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections as a stream of results, as tonic takes them.
    pub(crate) fn into_stream(self) -> impl futures::Stream<Item = io::Result<Connection>> {
        futures::stream::unfold(self, |mut incoming| async move {
            let connection = incoming.next().await?;
            Some((Ok(connection), incoming))
        })
    }
}

struct AcceptLoop {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Connections,
    stop: CancellationToken,
    connections_tx: mpsc::Sender<Connection>,
}

async fn accept_loop(accept: AcceptLoop) {
    loop {
        let accepted = tokio::select! {
            () = accept.stop.cancelled() => return,
            () = accept.connections_tx.closed() => return,
            accepted = accept.listener.accept() => accepted,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Settings that fail leave a working connection.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let admitted = accept.connections.admit();
        let info = ConnectionInfo {
            remote_addr,
            client_certificate: None,
            refused: admitted.as_ref().err().copied(),
        };
        let place = admitted.ok();
        let Some(tls) = accept.tls.clone() else {
            let connection = Connection {
                io: Either::Left(tcp),
                info,
                _place: place,
            };
            if accept.connections_tx.send(connection).await.is_err() {
                return;
            }
            continue;
        };
        let connections_tx = accept.connections_tx.clone();
        let stop = accept.stop.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp));
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                shaken = handshake => match shaken {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        debug!(%remote_addr, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote_addr, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let client_certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(ClientCertificate::from_chain);
            let connection = Connection {
                io: Either::Right(Box::new(stream)),
                info: ConnectionInfo {
                    client_certificate,
                    ..info
                },
                _place: place,
            };
            // The server is gone when this fails: the connection closes.
            let _ = connections_tx.send(connection).await;
        });
    }
}

/// Errors of one connection, not of the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The HTTP bus and metrics serve an [`Incoming`] with axum.
impl axum::serve::Listener for Incoming {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match self.next().await {
            Some(connection) => {
                let addr = connection.info.remote_addr;
                (connection, addr)
            }
            // Accepting stops only at shutdown, and axum stops asking
            // then.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// What axum hands a request of its connection: [`ConnectionInfo`].
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for ConnectionInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.io().info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_come_back_when_connections_close() {
        let connections = Connections::new(Some(2));
        let first = connections.admit().expect("room");
        let second = connections.admit().expect("room");
        assert_eq!(connections.admit().err(), Some(2));
        drop(first);
        let _third = connections.admit().expect("room again");
        drop(second);
        assert!(Connections::new(None).admit().is_ok());
    }

    #[tokio::test]
    async fn plain_connections_are_handed_on_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let mut incoming = Incoming::start(listener, None, Connections::new(Some(1)), stop.clone())
            .expect("starts");
        let _first = TcpStream::connect(addr).await.expect("connects");
        let _second = TcpStream::connect(addr).await.expect("connects");
        let first = incoming.next().await.expect("a connection");
        assert_eq!(first.info().refused, None);
        let second = incoming.next().await.expect("a connection");
        assert_eq!(second.info().refused, Some(1));
        stop.cancel();
        assert!(incoming.next().await.is_none(), "accepting stopped");
    }

    /// A CA, and a certificate it signed for `localhost` (the broker's) or
    /// with the subject `CN=name` (a client's), as PEM.
    fn signed(ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>, name: &str) -> (String, String) {
        let (key, params) = crate::tls::tests::key_and_params(name);
        let cert = params.signed_by(&key, ca).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn a_tls_connection_carries_the_client_certificate() {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};

        let dir = tempfile::tempdir().expect("a directory");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("a key"))
                .expect("a CA");
        let (server_cert, server_key) = signed(&ca, "broker");
        let (client_cert, client_key) = signed(&ca, "orders");
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("cert.pem", server_cert),
            ("key.pem", server_key),
        ] {
            std::fs::write(dir.path().join(name), text).expect("written");
        }
        let path = |name: &str| dir.path().join(name);
        let tls = crate::tls::Tls::load(&path("cert.pem"), &path("key.pem"), Some(&path("ca.pem")))
            .expect("loads");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut incoming = Incoming::start(
            listener,
            Some(tls.grpc()),
            Connections::new(None),
            CancellationToken::new(),
        )
        .expect("starts");

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("PEM"))
            .expect("a root");
        let chain = vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).expect("PEM")];
        let key = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).expect("PEM");
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client config");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let name = ServerName::try_from("localhost").expect("a name");
        let _client = connector.connect(name, tcp).await.expect("handshake");

        let connection = incoming.next().await.expect("a connection");
        let shown = connection
            .info()
            .client_certificate
            .as_ref()
            .expect("a client certificate");
        assert_eq!(shown.subject(), "CN=orders");
        assert_eq!(shown.common_name(), Some("orders"));
    }
}
