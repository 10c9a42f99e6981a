//! The hop to a mesh service: TCP connect, then (in production) mTLS with an ALPN that says
//! what runs inside, verifying the service's SPIFFE ID.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use docmesh_certs::SpiffeId;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::services::Service;
use crate::errors::{Cause, ProxyError};
use crate::protocol::WireProtocol;

/// Builds the rustls client configs of the mesh hop (implemented by the identity module's
/// `Identity`): TLS 1.3 only, our SVID as client certificate, the server verified against the
/// bundles and required to present exactly `expected`, offering exactly `alpn`.
pub trait ClientTls: Send + Sync + 'static {
    /// A client config for one service and one inner protocol, asked for at every new mesh
    /// connection: after a rotation it must be a config whose session cache does not hold
    /// sessions from before (a resumed TLS session skips certificate verification).
    fn client_config(&self, expected: &SpiffeId, alpn: &'static [u8]) -> Arc<rustls::ClientConfig>;

    /// Changes whenever the SVID or the trust bundles change. Pooled mesh connections made
    /// before a change are not reused after it: a TLS connection is verified once, at its
    /// handshake, so reusing it would keep a peer on a removed root (or our replaced SVID)
    /// in use.
    fn generation(&self) -> u64 {
        0
    }
}

impl ClientTls for crate::identity::Identity {
    fn client_config(&self, expected: &SpiffeId, alpn: &'static [u8]) -> Arc<rustls::ClientConfig> {
        crate::identity::Identity::client_config(self, expected, &[alpn])
    }

    fn generation(&self) -> u64 {
        crate::identity::Identity::generation(self)
    }
}

/// How the outbound secures the hop to a mesh service.
#[derive(Clone)]
pub enum MeshClient {
    /// Plain TCP: only for tests of the non-TLS data path; `run` always uses mTLS.
    Plaintext,
    /// mTLS with SPIFFE ID verification.
    Mtls(Arc<dyn ClientTls>),
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshClient::Plaintext => "MeshClient::Plaintext",
            MeshClient::Mtls(_) => "MeshClient::Mtls",
        })
    }
}

/// How the outbound opens mesh connections: plain TCP (tests), or TLS with the client
/// config the identity gives for each new connection (service's SPIFFE ID, inner protocol).
pub(crate) enum Connectors {
    Plaintext,
    Mtls(Arc<dyn ClientTls>),
}

impl Connectors {
    /// The connectors of `mesh`.
    pub(crate) fn new(mesh: &MeshClient) -> Self {
        match mesh {
            MeshClient::Plaintext => Connectors::Plaintext,
            MeshClient::Mtls(tls) => Connectors::Mtls(Arc::clone(tls)),
        }
    }

    /// The identity generation ([`ClientTls::generation`]); always 0 for plaintext.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Connectors::Plaintext => 0,
            Connectors::Mtls(tls) => tls.generation(),
        }
    }

    /// Connects to `addr` (an endpoint of `svc`) to carry `inner` (announced by ALPN); failures
    /// carry their cause.
    pub(crate) async fn connect(
        &self,
        svc: &Service,
        addr: SocketAddr,
        inner: WireProtocol,
        timeouts: HopTimeouts,
    ) -> Result<MeshStream, ProxyError> {
        let tcp = crate::net::connect(addr, timeouts.connect, &svc.name).await?;
        if let Some((idle, timeout)) = timeouts.keep_alive {
            crate::net::set_keep_alive(&tcp, idle, timeout);
        }
        let tls = match self {
            Connectors::Plaintext => return Ok(MeshStream::Plain(tcp)),
            Connectors::Mtls(tls) => tls,
        };
        let connector = TlsConnector::from(tls.client_config(&svc.spiffe_id, inner.alpn()));
        // The verifier checks the SPIFFE ID, not this name; an IP name also sends no SNI.
        let name = ServerName::IpAddress(addr.ip().into());
        match tokio::time::timeout(timeouts.handshake, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(MeshStream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(tls_error(&e, svc, addr)),
            Err(_) => Err(ProxyError::new(
                Cause::ConnectTimeout,
                format!(
                    "TLS handshake with `{}` at {addr} did not finish within {:?}: is a \
                     sidecar (or a TLS server at all) listening there?",
                    svc.name, timeouts.handshake
                ),
            )),
        }
    }
}

/// Maps a failed client handshake to its cause.
pub fn tls_error(e: &io::Error, svc: &Service, addr: SocketAddr) -> ProxyError {
    crate::classify::io_connect_error(e, &format!("`{}` at {addr}", svc.name))
}

/// A connection to a mesh service.
#[derive(Debug)]
pub enum MeshStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Timeouts of one hop.
#[derive(Debug, Clone, Copy)]
pub struct HopTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
    /// TCP keep-alive probes on the connection (idle time, then how long probes may go
    /// unanswered; see [`crate::net::set_keep_alive`]); `None`: none.
    pub keep_alive: Option<(Duration, Duration)>,
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Plain(s) => s.is_write_vectored(),
            MeshStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
