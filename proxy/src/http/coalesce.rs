//! Write coalescing for HTTP/2 connections: the frames of many streams leave in one TLS
//! record and one system call.
//!
//! Two things stop hyper's HTTP/2 from batching on its own. The h2 codec hands every DATA
//! payload over 256 bytes to the stream as a write of its own (on TLS: a record and a
//! `writev` each), and it flushes whenever its connection task runs, which on tokio is right
//! after each stream task that queued a frame (the woken task takes the "LIFO slot"), so
//! every response went out alone. [`Coalesced`] buffers writes (one TLS record's worth) and
//! defers a flush by one turn of the scheduler: the first `poll_flush` with data buffered
//! re-schedules the task at the back of the run queue and returns `Pending`, so the other
//! ready tasks (more streams) add their frames first; the next `poll_flush` writes them all.
//! With nothing else ready the deferral costs one extra poll, not a wait: there is no timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// Write buffer of a coalesced connection (one TLS record's worth of plaintext).
const WRITE_BUFFER: usize = 16 * 1024;

pin_project! {
    /// A byte stream whose writes are buffered and whose flushes are deferred by one
    /// scheduler turn (see the module docs). Reads pass through.
    pub struct Coalesced<Io> {
        #[pin]
        inner: BufWriter<Io>,
        deferred: bool,
    }
}

impl<Io: AsyncWrite> Coalesced<Io> {
    /// Wraps `io`.
    pub fn new(io: Io) -> Self {
        Coalesced {
            inner: BufWriter::with_capacity(WRITE_BUFFER, io),
            deferred: false,
        }
    }
}

impl<Io: AsyncRead + AsyncWrite> AsyncRead for Coalesced<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite> AsyncWrite for Coalesced<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !*this.deferred && !this.inner.buffer().is_empty() {
            *this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        *this.deferred = false;
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        *this.deferred = false;
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the underlying stream.
    struct CountingWriter {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn many_small_writes_reach_the_stream_as_one_and_a_flush_completes() {
        let mut c = Coalesced::new(CountingWriter {
            writes: 0,
            bytes: Vec::new(),
        });
        for i in 0..10u8 {
            c.write_all(&[i; 300]).await.unwrap();
        }
        c.flush().await.unwrap();
        let inner = c.inner.get_ref();
        assert_eq!(inner.writes, 1);
        assert_eq!(inner.bytes.len(), 3000);
        assert_eq!(inner.bytes[2999], 9);
    }

    #[test]
    fn the_first_flush_with_data_yields_once_and_wakes_itself() {
        use futures::task::{waker, ArcWake};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Wakes(AtomicUsize);
        impl ArcWake for Wakes {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let w = waker(wakes.clone());
        let mut cx = Context::from_waker(&w);
        let mut c = Box::pin(Coalesced::new(CountingWriter {
            writes: 0,
            bytes: Vec::new(),
        }));
        // Nothing buffered: a flush completes at once.
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert!(c.as_mut().poll_write(&mut cx, b"abc").is_ready());
        assert!(c.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "it re-schedules itself");
        assert_eq!(c.inner.get_ref().writes, 0, "nothing written yet");
        assert!(c.as_mut().poll_write(&mut cx, b"def").is_ready());
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.get_ref().writes, 1);
        assert_eq!(c.inner.get_ref().bytes, b"abcdef");
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut c = Coalesced::new(a);
        b.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        c.write_all(b"pong").await.unwrap();
        c.flush().await.unwrap();
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
