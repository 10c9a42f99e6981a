//! Names an HTTP/1.x server behind an HTTP/2 connection when the write fails first.
//!
//! An HTTP/1.1-only server answers the HTTP/2 preface with an HTTP/1.1 error and closes. When
//! that answer is read, h2 reports a frame-size error and `classify` says
//! `upstream-not-http2`. But the close often arrives before the client's next write, which then
//! fails (broken pipe, reset) while the answer still waits, unread, in the socket: the cause
//! would be a bare `upstream-reset`. And a server that only speaks HTTP/1.x, like hyper's, may
//! close on the preface without a byte, or with it unread, which makes the kernel send a reset
//! that discards its answer. [`H2Probe`] looks at what the peer sent when a write fails before
//! anything was read, and reports an answer that starts like HTTP/1.x, or the end of the
//! stream or a reset before any byte, as [`NotHttp2Answer`], which `classify` maps to
//! `upstream-not-http2`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::classify::{NotHttp2Answer, NOT_HTTP2};

pin_project! {
    /// A byte stream that, on a write error before any read, checks whether the peer answered
    /// in HTTP/1.x (see the module docs). Otherwise transparent.
    pub struct H2Probe<Io> {
        #[pin]
        inner: Io,
        read_any: bool,
        silent_close_is_http1: bool,
    }
}

impl<Io> H2Probe<Io> {
    /// Wraps `io`, a fresh connection about to carry HTTP/2. With `silent_close_is_http1`, a
    /// close before any byte also counts as an HTTP/1.x-only peer: right for an app, whose
    /// HTTP/2 support is in question; wrong for the mesh hop, where the peer is a sidecar and
    /// a close says it went away.
    pub fn new(io: Io, silent_close_is_http1: bool) -> Self {
        H2Probe {
            inner: io,
            read_any: false,
            silent_close_is_http1,
        }
    }
}

/// The HTTP/1.x status line at the start of `bytes`, if they start like one.
fn http1_answer(bytes: &[u8]) -> Option<NotHttp2Answer> {
    if !bytes.starts_with(b"HTTP/1.") {
        return None;
    }
    let line = bytes.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = &line[..line.len().min(64)];
    Some(NotHttp2Answer {
        status_line: Some(String::from_utf8_lossy(line).into_owned()),
    })
}

/// Whether a read that added nothing to `buf` (it held `before` bytes) saw the peer go away:
/// the end of the stream (with room left to read into) or a reset. The one test for a peer
/// that closed on the preface, in the read path and after a failed write alike.
fn peer_went_away(r: &Poll<io::Result<()>>, buf: &ReadBuf<'_>, before: usize) -> bool {
    buf.filled().len() == before
        && match r {
            Poll::Ready(Ok(())) => buf.remaining() > 0,
            Poll::Ready(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
            Poll::Pending => false,
        }
}

impl<Io: AsyncRead + AsyncWrite> H2Probe<Io> {
    /// `err` from a write, or the peer's HTTP/1.x answer if it sent one and nothing was read.
    fn explain(self: Pin<&mut Self>, cx: &mut Context<'_>, err: io::Error) -> io::Error {
        let this = self.project();
        let writing_failed = matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if *this.read_any || !writing_failed {
            return err;
        }
        let mut first = [0u8; 128];
        let mut buf = ReadBuf::new(&mut first);
        let r = this.inner.poll_read(cx, &mut buf);
        let answer = if *this.silent_close_is_http1 && peer_went_away(&r, &buf, 0) {
            NotHttp2Answer { status_line: None }
        } else if let (Poll::Ready(Ok(())), Some(answer)) = (&r, http1_answer(buf.filled())) {
            answer
        } else {
            return err;
        };
        io::Error::new(io::ErrorKind::InvalidData, answer)
    }
}

impl<Io: AsyncRead> AsyncRead for H2Probe<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            *this.read_any = true;
            return r;
        }
        if !*this.silent_close_is_http1 || *this.read_any {
            return r;
        }
        // The end of the stream, or a reset, before a single byte: the peer closed on the
        // preface. (An HTTP/1.x server that closes with the preface unread makes the kernel
        // send a reset, which can overtake and discard its HTTP/1.1 error answer.)
        if peer_went_away(&r, buf, before) {
            let answer = NotHttp2Answer { status_line: None };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, answer)));
        }
        r
    }
}

impl<Io: AsyncRead + AsyncWrite> AsyncWrite for H2Probe<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().project().inner.poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().project().inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().project().inner.poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_http1_status_lines_are_answers() {
        let a = http1_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(a.status_line.as_deref(), Some("HTTP/1.1 400 Bad Request"));
        assert!(a.to_string().starts_with(NOT_HTTP2));
        assert!(
            http1_answer(b"\x00\x00\x12\x04\x00").is_none(),
            "an HTTP/2 frame"
        );
        assert!(http1_answer(b"").is_none());
    }

    /// A probe over a real socket to a server that reads part of the preface, writes `answer`
    /// and closes with the rest unread (so the kernel resets), once the close has happened.
    async fn probe_to_closing_server(
        answer: &'static [u8],
        silent_close_is_http1: bool,
    ) -> H2Probe<tokio::net::TcpStream> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            let _ = s.read(&mut b).await; // the rest of the preface stays unread
            s.write_all(answer).await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut probe = H2Probe::new(tcp, silent_close_is_http1);
        probe
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        server.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        probe
    }

    /// The server writes an HTTP/1.1 answer and closes without reading, so the client's writes
    /// end in a reset; the probe still names the answer.
    #[tokio::test]
    async fn a_failed_write_reports_the_unread_http1_answer() {
        let mut probe = probe_to_closing_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", false).await;
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = probe.write_all(&[0u8; 4096]).await {
                err = Some(e);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let err = err.expect("writes to a closed peer fail");
        let answer = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<NotHttp2Answer>())
            .unwrap_or_else(|| panic!("not named: {err}"));
        assert_eq!(
            answer.status_line.as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
    }

    /// The app closes without a byte, with the preface unread (the kernel resets), and the
    /// client's read sees the reset: an app, not a sidecar, so the probe names it (a sidecar's
    /// reset stays a reset).
    #[tokio::test]
    async fn a_reset_before_any_byte_is_an_http1_only_app() {
        for app_side in [true, false] {
            let mut probe = probe_to_closing_server(b"", app_side).await;
            let mut b = [0u8; 16];
            let err = probe.read(&mut b).await.expect_err("the peer reset");
            let named = err
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<NotHttp2Answer>().is_some());
            assert_eq!(named, app_side, "{err}");
            if !app_side {
                assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
            }
        }
    }
}
