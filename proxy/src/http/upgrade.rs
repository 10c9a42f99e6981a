//! Protocol upgrades (WebSocket, socket.io): once the upstream answered `101 Switching
//! Protocols`, the two upgraded connections are joined by a byte copy. When the route has a
//! `timeouts.stream_idle` (resilience policy; it travels as [`StreamIdle`] on the 101
//! response), the copy is closed after that long without a byte in either direction.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The idle limit of an upgraded exchange (the route's `timeouts.stream_idle`); the
/// resilience stack puts it into the extensions of a `101` response, the splice enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIdle(pub Duration);

/// Why an upgraded connection ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// No byte in either direction for the route's idle limit.
    #[error(
        "no byte in either direction for {0:?} (the route's timeouts.stream_idle): upgraded \
         connection closed; raise the route's stream_idle if the application stays silent longer"
    )]
    Idle(Duration),
    /// Reading or writing one of the two connections failed.
    #[error("upgraded connection failed: {0}")]
    Io(#[from] io::Error),
}

/// Joins the two upgraded connections (client side and upstream side) with a byte copy,
/// closed after `idle` without traffic when set.
pub async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "protocol upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let ended = match idle {
        Some(idle) => copy_with_idle(&mut client, &mut upstream, idle).await,
        None => crate::net::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(SpliceError::Io),
    };
    match ended {
        Ok(_) => {}
        Err(e @ SpliceError::Idle(_)) => tracing::info!(detail = %e, "upgraded connection idle"),
        Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
    }
}

/// [`crate::net::copy_bidirectional`] (half-close aware) that gives up with
/// [`SpliceError::Idle`] once no byte was read or written on either side for `idle`; every
/// byte in either direction restarts the timer. Returns the bytes copied (a to b, b to a).
pub async fn copy_with_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> Result<(u64, u64), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // Nanoseconds after `start` of the last byte read or written on either side.
    let last = AtomicU64::new(0);
    let since = |nanos: u64| start + Duration::from_nanos(nanos);
    let mut a = Stamped {
        inner: a,
        start,
        last: &last,
    };
    let mut b = Stamped {
        inner: b,
        start,
        last: &last,
    };
    let copy = crate::net::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let quiet_since = last.load(Ordering::Relaxed);
        tokio::select! {
            copied = &mut copy => return copied.map_err(SpliceError::Io),
            () = tokio::time::sleep_until(since(quiet_since) + idle) => {
                // Traffic since the timer was armed moves the deadline; none means idle.
                if last.load(Ordering::Relaxed) == quiet_since {
                    return Err(SpliceError::Idle(idle));
                }
            }
        }
    }
}

/// A stream that records when it last moved a byte (read or written).
struct Stamped<'a, S: ?Sized> {
    inner: &'a mut S,
    start: Instant,
    last: &'a AtomicU64,
}

impl<S: ?Sized> Stamped<'_, S> {
    fn stamp(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Stamped<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Stamped<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(120);

    /// Reads exactly `want` from `s`.
    async fn expect<S: AsyncRead + Unpin>(s: &mut S, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_restarts_the_idle_timer_and_silence_closes() {
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (mut upstream_side, mut upstream) = tokio::io::duplex(1024);
        let t0 = Instant::now();
        let copy = tokio::spawn(async move {
            copy_with_idle(&mut client_side, &mut upstream_side, IDLE).await
        });

        // Client to upstream at 100 s, upstream to client at 200 s (past the first 120 s).
        tokio::time::sleep(Duration::from_secs(100)).await;
        client.write_all(b"ping").await.unwrap();
        expect(&mut upstream, b"ping").await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        upstream.write_all(b"pong").await.unwrap();
        expect(&mut client, b"pong").await;
        let last_traffic = Instant::now();
        assert_eq!(last_traffic - t0, Duration::from_secs(200));

        // One second before the limit the connection is still open.
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        assert!(!copy.is_finished());
        client.write_all(b"still there?").await.unwrap();
        expect(&mut upstream, b"still there?").await;
        let last_traffic = Instant::now();

        // Then silence: both sides see the close exactly `IDLE` after the last byte.
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(Instant::now() - last_traffic, IDLE);
        assert_eq!(upstream.read(&mut buf).await.unwrap(), 0);
        match copy.await.unwrap() {
            Err(SpliceError::Idle(d)) => assert_eq!(d, IDLE),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_ends_before_the_limit_reports_its_bytes() {
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (mut upstream_side, mut upstream) = tokio::io::duplex(1024);
        let copy = tokio::spawn(async move {
            copy_with_idle(&mut client_side, &mut upstream_side, IDLE).await
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        expect(&mut upstream, b"hello").await;
        upstream.write_all(b"bye").await.unwrap();
        upstream.shutdown().await.unwrap();
        expect(&mut client, b"bye").await;
        let copied = copy.await.unwrap().unwrap();
        assert_eq!(copied, (5, 3));
    }
}
