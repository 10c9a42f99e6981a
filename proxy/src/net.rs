//! Socket plumbing shared by both directions: the original destination of a redirected
//! connection, TCP connect with cause classification, a stream that replays sniffed bytes, and
//! the opaque bidirectional copy.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::errors::{Cause, ProxyError};

/// Buffer size of each direction of an opaque copy (one TLS record).
const COPY_BUF: usize = 16 * 1024;

/// The destination the app originally connected to before iptables redirected the connection
/// to us (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
    let local = stream.local_addr()?;
    let is_v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if is_v4 {
        if let Ok(sin) = getsockopt(stream, sockopt::OriginalDst) {
            return Ok(SocketAddr::from(SockaddrIn::from(sin)));
        }
    }
    match getsockopt(stream, sockopt::Ip6tOriginalDst) {
        Ok(sin6) => Ok(canonical(SocketAddr::from(SockaddrIn6::from(sin6)))),
        Err(e) => Err(io::Error::other(format!(
            "no original destination on a connection to {local} ({e}): is the iptables \
             redirect installed (docmesh-init), or should this be an explicit listener?"
        ))),
    }
}

/// Turns `::ffff:a.b.c.d` into `a.b.c.d` so that addresses compare equal across families.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY`; failures carry their cause
/// (`connect-refused` or `connect-timeout`) and name `what` (the service) in the detail.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(connect_error(&e, addr, what)),
        Err(_) => Err(ProxyError::new(
            Cause::ConnectTimeout,
            format!(
                "no TCP connection to {what} at {addr} within {timeout:?}: check network \
                 policies, firewalls and that the peer's node is reachable"
            ),
        )),
    }
}

/// TCP keep-alive probes for a connection that may idle in a pool: the first after `idle`
/// without traffic, then three more within `timeout`; if none is answered the kernel fails
/// the connection, so a flow a NAT or conntrack dropped silently, or a peer whose node
/// vanished, is found dead before a request is sent into it. Best effort: a socket that
/// refuses the options keeps working without them.
pub fn set_keep_alive(stream: &TcpStream, idle: Duration, timeout: Duration) {
    const PROBES: u32 = 3;
    let every = (timeout / PROBES).max(Duration::from_secs(1));
    let probes = socket2::TcpKeepalive::new()
        .with_time(idle.max(Duration::from_secs(1)))
        .with_interval(every)
        .with_retries(PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "cannot set TCP keep-alive on a mesh connection");
    }
}

/// The `what` of [`connect`] for the inbound hop's connection to the local app, whose failures
/// point the operator at the app rather than at a remote peer.
pub const APP: &str = "the app";

/// Classifies a failed `connect()` with the shared classifier ([`crate::classify`]); a
/// refused connection to the local app says what to check on the app.
pub fn connect_error(e: &io::Error, addr: SocketAddr, what: &str) -> ProxyError {
    let mut err = crate::classify::io_connect_error(e, &format!("{what} at {addr}"));
    if what == APP && err.cause == Cause::ConnectRefused {
        err.detail = format!(
            "connection to the app at {addr} refused: nothing listens there (is the app \
             running, and listening on that port on loopback or all addresses?)"
        );
    }
    err
}

/// Copies both directions until both are closed; an EOF in one direction is passed on as a
/// write shutdown (half-close) while the other direction keeps flowing.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUF, COPY_BUF).await
}

/// A stream whose first bytes (already read while sniffing the protocol) are replayed before
/// the rest of the inner stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix`, then reads from `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// The inner stream and the bytes not replayed yet.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn refused_and_timeout_are_classified() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect(addr, Duration::from_secs(5), "svc")
            .await
            .unwrap_err();
        assert_eq!(e.cause, Cause::ConnectRefused, "{e}");
        assert!(e.detail.contains("svc"), "{e}");
        assert!(e.detail.contains("sidecar"), "{e}");
    }

    #[test]
    fn refused_local_app_points_at_the_app() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let err = connect_error(&e, addr, APP);
        assert_eq!(err.cause, Cause::ConnectRefused);
        assert!(err.detail.contains("is the app running"), "{err}");
        assert!(!err.detail.contains("sidecar"), "{err}");
    }

    #[test]
    fn timed_out_errno_is_connect_timeout() {
        let e = io::Error::from(io::ErrorKind::TimedOut);
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(connect_error(&e, addr, "x").cause, Cause::ConnectTimeout);
    }

    #[tokio::test]
    async fn original_dst_without_redirect_explains_itself() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without an iptables REDIRECT the kernel has no conntrack NAT entry: a clear error,
        // or (when conntrack tracks the flow) the address itself.
        match original_dst(&s) {
            Ok(a) => assert_eq!(a, addr),
            Err(e) => assert!(e.to_string().contains("iptables"), "{e}"),
        }
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
