//! The HTTP/1 request-head guard: an IO wrapper between the socket and hyper that counts the
//! bytes of each request head as hyper reads them, and answers `431 request-header-too-large`
//! itself (with the `docmesh-error` cause, counted) when a head passes the guard's cut-off,
//! before hyper's own parser limit can answer with a bare 431. Nothing is buffered or copied:
//! the guard only adds the sizes of the reads.
//!
//! Which bytes are head bytes is told by the data path (no parsing here):
//! - a connection starts in *head* state;
//! - when hyper has parsed a head ([`HeadWatch::on_request`]), a request without a body goes
//!   back to head state at once (count reset), a request with a body goes *passive* until its
//!   body has been read to the end or dropped ([`BodyEnd`], carried in the request extensions
//!   to [`super::GuardedBody`]);
//! - a protocol switch (101) turns the guard off for the rest of the connection.
//!
//! Reads are capped at [`HeadParams::read_cap`] bytes, so the bytes of a next head that hyper
//! read before the guard learned that the previous request ended (pipelining) are at most a
//! couple of reads: hyper's own cut-off sits that far above the guard's, and the guard's sits
//! one read above `limits.max_header_bytes` (heads between the two are parsed and refused by
//! [`super::Limits::check_request`], with the exact size).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};

use super::Limits;
use crate::errors::{Cause, Hop, ProxyError};

/// The guard counts (state bits of the shared word).
const HEAD: u64 = 0;
/// The guard waits for the current request's body to end.
const PASSIVE: u64 = 1;
/// The connection switched protocols: the guard is off.
const OFF: u64 = 2;
const STATE_BITS: u64 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// The epoch of a copied [`BodyEnd`]: never matches (its state bits are no state).
const INERT: u64 = u64::MAX;

/// How many bytes a refused client may still send (and the guard discards) after the 431, and
/// for how long, so that closing is not a reset that destroys the answer before the client
/// has read it.
const DRAIN_BUDGET: usize = 256 * 1024;
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sizes derived from `[limits]` for the guard and hyper's HTTP/1 parser.
#[derive(Debug, Clone, Copy)]
pub struct HeadParams {
    /// `limits.max_header_bytes`.
    pub limit: usize,
    /// `limits.max_uri_bytes`.
    pub max_uri: usize,
    /// The guard answers 414 once the first request line of a connection passes this many
    /// bytes (the target, plus room for the method and the version).
    pub line_cut_off: usize,
    /// Largest single read handed to hyper.
    pub read_cap: usize,
    /// The guard answers 431 once a head passes this many bytes.
    pub cut_off: usize,
    /// hyper's own cut-off (`max_header_size`); never reached before the guard's.
    pub parser_max: usize,
}

impl HeadParams {
    /// The guard's sizes for a `max_header_bytes` of `limit` and a `max_uri_bytes` of
    /// `max_uri`.
    pub fn new(limit: usize, max_uri: usize) -> Self {
        let read_cap = limit.clamp(4096, 16 * 1024);
        let cut_off = limit.saturating_add(read_cap);
        HeadParams {
            limit,
            max_uri,
            line_cut_off: max_uri.saturating_add(64),
            read_cap,
            cut_off,
            parser_max: cut_off.saturating_add(4 * read_cap),
        }
    }
}

/// The state shared between a connection's guard and its requests: `(epoch << 2) | state`.
/// Every transition to head state bumps the epoch, which tells the guard to restart its count.
#[derive(Debug, Default)]
pub struct HeadWatch {
    word: AtomicU64,
}

impl HeadWatch {
    fn update(&self, f: impl FnMut(u64) -> Option<u64>) {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, f);
    }

    /// Called for every request hyper parsed on this connection (in the connection's task).
    /// Returns the epoch to pass to [`HeadWatch::on_response`] for an upgrade request without
    /// a body; inserts a [`BodyEnd`] into a request with a body.
    pub fn on_request<B: http_body::Body>(
        self: &Arc<Self>,
        req: &mut http::Request<B>,
    ) -> Option<u64> {
        let upgrade = req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some();
        let has_body = !req.body().is_end_stream();
        if !upgrade && !has_body {
            self.update(|w| (w & STATE_MASK != OFF).then(|| next_epoch(w) | HEAD));
            return None;
        }
        let mut epoch = 0;
        self.update(|w| {
            epoch = next_epoch(w);
            (w & STATE_MASK != OFF).then_some(epoch | PASSIVE)
        });
        if has_body {
            req.extensions_mut().insert(BodyEnd {
                watch: Arc::clone(self),
                epoch,
            });
        }
        (upgrade && !has_body).then_some(epoch)
    }

    /// After the response to an upgrade request: a protocol switch turns the guard off, any
    /// other answer lets it count the next head.
    pub fn on_response(&self, epoch: u64, status: http::StatusCode) {
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            self.word.store(OFF, Ordering::Release);
        } else {
            self.finish(epoch);
        }
    }

    /// The request of `epoch` is done with its body: count the next head.
    fn finish(&self, epoch: u64) {
        self.update(|w| (w == epoch | PASSIVE).then(|| next_epoch(w) | HEAD));
    }
}

fn next_epoch(w: u64) -> u64 {
    ((w >> STATE_BITS).wrapping_add(1)) << STATE_BITS
}

/// Carried by a request with a body (extensions, then [`super::GuardedBody`]): when the body
/// has been read to its end, or is dropped, the connection's guard counts the next head.
#[derive(Debug)]
pub struct BodyEnd {
    watch: Arc<HeadWatch>,
    epoch: u64,
}

impl BodyEnd {
    /// The body ended (idempotent; dropping does the same).
    pub fn finish(&self) {
        self.watch.finish(self.epoch);
    }
}

/// A copy never ends anything (request extensions must be `Clone`; only the original, which
/// travels with the body, speaks for it).
impl Clone for BodyEnd {
    fn clone(&self) -> Self {
        BodyEnd {
            watch: Arc::clone(&self.watch),
            epoch: INERT,
        }
    }
}

impl Drop for BodyEnd {
    fn drop(&mut self) {
        self.finish();
    }
}

enum Answer {
    /// Serving normally.
    No,
    /// Over the cut-off: the 431 waits until hyper's writes are flushed, then goes out.
    Write { bytes: Bytes, written: usize },
    /// Answered; discarding what the client still sends (bounded), then end of stream.
    Drain {
        left: usize,
        until: Pin<Box<tokio::time::Sleep>>,
    },
    /// End of stream for hyper.
    Done,
}

/// The IO wrapper; see the module documentation.
pub struct HeadGuard<Io> {
    /// The socket; `Take` caps every read (its limit is reset before each one).
    inner: Take<Io>,
    watch: Arc<HeadWatch>,
    params: HeadParams,
    limits: Limits,
    hop: Hop,
    /// The shared word when the count was last (re)started.
    seen: u64,
    count: usize,
    /// Length so far of the connection's first request line, until it ends. Only there is
    /// the start of a line certain (later heads may follow a body the guard does not see),
    /// so only there does the guard answer a request target too long for hyper's parser
    /// (65 534 bytes) with the proxy's 414; later ones are checked after parsing.
    first_line: Option<usize>,
    /// No write since the last completed flush (hyper's write buffer is empty).
    clean: bool,
    answer: Answer,
    read_waker: Option<Waker>,
}

impl<Io: AsyncRead> HeadGuard<Io> {
    /// Guards `inner`; `watch` is shared with the connection's requests.
    pub fn new(
        inner: Io,
        watch: Arc<HeadWatch>,
        params: HeadParams,
        limits: Limits,
        hop: Hop,
    ) -> Self {
        HeadGuard {
            inner: inner.take(params.read_cap as u64),
            watch,
            params,
            limits,
            hop,
            seen: HEAD,
            count: 0,
            first_line: Some(0),
            clean: true,
            answer: Answer::No,
            read_waker: None,
        }
    }

    /// Adds `n` freshly read bytes; true when the head passed the cut-off.
    fn over(&mut self, n: usize) -> bool {
        let w = self.watch.word.load(Ordering::Acquire);
        if w != self.seen {
            self.seen = w;
            self.count = 0;
            // A request was parsed: the first request line is long over.
            self.first_line = None;
        }
        if w & STATE_MASK != HEAD {
            return false;
        }
        self.count += n;
        self.count > self.params.cut_off
    }

    /// Follows the connection's first request line through `bytes` (just read); true when
    /// it passed the line cut-off.
    fn line_too_long(&mut self, bytes: &[u8]) -> bool {
        let Some(len) = self.first_line else {
            return false;
        };
        let mut rest = bytes;
        if len == 0 {
            // Empty lines before the request line are skipped, as the parser does.
            let start = rest
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(rest.len());
            rest = &rest[start..];
        }
        let (len, ended) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (len + end, true),
            None => (len + rest.len(), false),
        };
        self.first_line = (!ended).then_some(len);
        len > self.params.line_cut_off
    }

    fn head_too_large(&self) -> ProxyError {
        ProxyError::new(
            Cause::RequestHeaderTooLarge,
            format!(
                "the request head passed {} bytes before it ended, more than \
                 limits.max_header_bytes ({}); the connection was closed",
                self.params.cut_off, self.params.limit
            ),
        )
    }

    fn uri_too_long(&self) -> ProxyError {
        ProxyError::new(
            Cause::UriTooLong,
            format!(
                "the request line passed {} bytes: the request target is longer than \
                 limits.max_uri_bytes ({}); the connection was closed",
                self.params.line_cut_off, self.params.max_uri
            ),
        )
    }

    fn refuse(&mut self, e: ProxyError) {
        let e = self.limits.reject(e);
        tracing::warn!(
            cause = e.cause.as_str(),
            hop = self.hop.as_str(),
            detail = %e.detail,
            "request refused"
        );
        self.answer = Answer::Write {
            bytes: http1_bytes(&e, self.hop),
            written: 0,
        };
    }
}

/// The synthesized response for `e` as HTTP/1.1 bytes, closing the connection.
fn http1_bytes(e: &ProxyError, hop: Hop) -> Bytes {
    use futures::FutureExt;
    use http_body_util::BodyExt;
    let resp = e.to_response(hop, None);
    let status = resp.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    let (parts, body) = resp.into_parts();
    // A `Full` body is ready at once.
    let body = body
        .collect()
        .now_or_never()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    Bytes::from(out)
}

impl<Io: AsyncRead + AsyncWrite + Unpin> HeadGuard<Io> {
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            match &mut self.answer {
                Answer::No | Answer::Done => return Poll::Ready(Ok(())),
                Answer::Write { bytes, written } => {
                    if !self.clean {
                        // hyper still has part of an earlier response to flush.
                        self.read_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    while *written < bytes.len() {
                        match Pin::new(self.inner.get_mut()).poll_write(cx, &bytes[*written..]) {
                            Poll::Ready(Ok(n)) if n > 0 => *written += n,
                            Poll::Ready(_) => {
                                self.answer = Answer::Done;
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    if std::task::ready!(Pin::new(self.inner.get_mut()).poll_flush(cx)).is_err() {
                        self.answer = Answer::Done;
                        continue;
                    }
                    let _ = std::task::ready!(Pin::new(self.inner.get_mut()).poll_shutdown(cx));
                    self.answer = Answer::Drain {
                        left: DRAIN_BUDGET,
                        until: Box::pin(tokio::time::sleep(LINGER)),
                    };
                }
                Answer::Drain { left, until } => {
                    let mut scratch = [0u8; 2048];
                    self.inner.set_limit(scratch.len() as u64);
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *left = left.saturating_sub(rb.filled().len());
                            if *left == 0 {
                                self.answer = Answer::Done;
                            }
                        }
                        Poll::Ready(_) => self.answer = Answer::Done,
                        Poll::Pending => {
                            std::task::ready!(std::future::Future::poll(until.as_mut(), cx));
                            self.answer = Answer::Done;
                        }
                    }
                }
            }
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !matches!(this.answer, Answer::No) {
            return this.poll_answer(cx);
        }
        let before = buf.filled().len();
        this.inner.set_limit(this.params.read_cap as u64);
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            if n > 0 {
                let head_over = this.over(n);
                let refusal = if this.line_too_long(&buf.filled()[before..]) {
                    Some(this.uri_too_long())
                } else if head_over {
                    Some(this.head_too_large())
                } else {
                    None
                };
                if let Some(e) = refusal {
                    // hyper never sees this read; the guard answers instead.
                    buf.set_filled(before);
                    this.refuse(e);
                    return this.poll_answer(cx);
                }
            }
        }
        r
    }
}

impl<Io> HeadGuard<Io> {
    /// hyper is about to write: refused once the guard's own answer is written (the
    /// connection is closing), else the write leaves unflushed bytes that the answer must
    /// wait for.
    fn start_write(&mut self) -> std::io::Result<()> {
        if !matches!(self.answer, Answer::No | Answer::Write { .. }) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.clean = false;
        Ok(())
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadGuard<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.start_write() {
            return Poll::Ready(Err(e));
        }
        Pin::new(this.inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.start_write() {
            return Poll::Ready(Err(e));
        }
        Pin::new(this.inner.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(this.inner.get_mut()).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.clean = true;
            if let Some(w) = this.read_waker.take() {
                w.wake();
            }
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !matches!(this.answer, Answer::No) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
