//! Request bodies that can be replayed for a retry and that record whether any of their bytes
//! was handed to the connection ("polled any data").
//!
//! The first attempt streams the original body and keeps a copy of up to `max_replay_bytes`;
//! a retry replays the copy and then continues with the rest of the original. A body larger than
//! the limit is not copied any further once the limit is passed, and cannot be replayed after
//! that; a body no attempt has read yet can always be retried.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::Notify;

/// Boxed error type of bodies and services in the stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Error yielded by a replay whose copy was already discarded (cannot happen for retries the
/// stack starts; guards against misuse).
#[derive(Debug, thiserror::Error)]
#[error("request body exceeded the replay buffer and can no longer be replayed for a retry")]
pub struct NotReplayable;

/// A replayable request body; see the module documentation.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Index (counting discarded chunks too) of the next chunk this attempt yields.
    next: usize,
    trailers_done: bool,
    sent: Arc<AtomicBool>,
    done: Arc<Notify>,
}

struct Shared {
    rest: Option<UnsyncBoxBody<Bytes, BoxError>>,
    chunks: Vec<Bytes>,
    /// Chunks read and not kept (the body overflowed the buffer).
    discarded: usize,
    buffered_len: usize,
    max: usize,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("chunks", &self.chunks.len())
            .field("discarded", &self.discarded)
            .field("buffered_len", &self.buffered_len)
            .field("finished", &self.finished)
            .finish()
    }
}

impl ReplayBody {
    /// Wraps `body`, keeping up to `max_replay_bytes` of it for replays.
    pub fn new<B>(body: B, max_replay_bytes: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let finished = body.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                rest: Some(body.map_err(Into::into).boxed_unsync()),
                chunks: Vec::new(),
                discarded: 0,
                buffered_len: 0,
                max: max_replay_bytes,
                trailers: None,
                finished,
            })),
            next: 0,
            trailers_done: false,
            sent: Arc::new(AtomicBool::new(false)),
            done: Arc::new(Notify::new()),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::new(http_body_util::Empty::<Bytes>::new(), 0)
    }

    /// A fresh copy for another attempt, or `None` when part of the body was already read and
    /// discarded (the body was larger than the replay buffer).
    pub fn replay(&self) -> Option<ReplayBody> {
        if lock(&self.shared).discarded > 0 {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            trailers_done: false,
            sent: Arc::new(AtomicBool::new(false)),
            done: self.done.clone(),
        })
    }

    /// A handle that turns `true` once this attempt's body handed any byte to the connection.
    pub fn sent_flag(&self) -> Arc<AtomicBool> {
        self.sent.clone()
    }

    /// Whether the whole original body has been read by some attempt.
    pub fn is_fully_read(&self) -> bool {
        lock(&self.shared).finished
    }

    /// Resolves once the whole original body has been read (the request is fully sent); the
    /// response-headers timeout starts there.
    pub fn fully_read(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let done = self.done.clone();
        let shared = self.shared.clone();
        async move {
            loop {
                let notified = done.notified();
                if lock(&shared).finished {
                    return;
                }
                notified.await;
            }
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Poisoning only means a panic elsewhere mid-update; the state stays consistent enough.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = lock(&this.shared);
        let produced = s.discarded + s.chunks.len();
        if this.next < s.discarded {
            return Poll::Ready(Some(Err(NotReplayable.into())));
        }
        if this.next < produced {
            let chunk = s.chunks[this.next - s.discarded].clone();
            this.next += 1;
            if !chunk.is_empty() {
                this.sent.store(true, Ordering::Release);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.finished {
            if !this.trailers_done {
                this.trailers_done = true;
                if let Some(t) = s.trailers.clone() {
                    this.sent.store(true, Ordering::Release);
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(rest) = s.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.finished = true;
                s.rest = None;
                this.trailers_done = true;
                this.done.notify_waiters();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if s.discarded == 0 && s.buffered_len + data.len() <= s.max {
                        s.buffered_len += data.len();
                        s.chunks.push(data.clone());
                    } else {
                        s.discarded += s.chunks.len() + 1;
                        s.chunks.clear();
                        s.buffered_len = 0;
                    }
                    this.next += 1;
                    if !data.is_empty() {
                        this.sent.store(true, Ordering::Release);
                    }
                    if s.rest.as_ref().is_some_and(|r| r.is_end_stream()) {
                        // Connections stop polling once the body says it ended.
                        s.finished = true;
                        s.rest = None;
                        this.done.notify_waiters();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        s.trailers = Some(t.clone());
                        s.finished = true;
                        s.rest = None;
                        this.trailers_done = true;
                        this.done.notify_waiters();
                        this.sent.store(true, Ordering::Release);
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    // Unknown frame kinds are skipped.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        let produced = s.discarded + s.chunks.len();
        self.next >= produced
            && (s.finished || s.rest.as_ref().is_some_and(|r| r.is_end_stream()))
            && (self.trailers_done || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let idx = self.next.saturating_sub(s.discarded).min(s.chunks.len());
        let buffered: u64 = s.chunks[idx..].iter().map(|c| c.len() as u64).sum();
        match (&s.rest, s.finished) {
            (Some(r), false) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
            _ => SizeHint::with_exact(buffered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Send {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn replays_small_bodies_and_records_sending() {
        let first = ReplayBody::new(chunks(&["ab", "cd"]), 16);
        let flag = first.sent_flag();
        assert!(!flag.load(Ordering::Acquire));
        let second = first.replay().unwrap();
        let got = first.collect().await.unwrap().to_bytes();
        assert_eq!(got, "abcd");
        assert!(flag.load(Ordering::Acquire));
        let flag2 = second.sent_flag();
        assert!(!flag2.load(Ordering::Acquire));
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcd");
        assert!(flag2.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn partial_read_then_replay_continues_with_the_rest() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 16);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = first.replay().unwrap();
        drop(first);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn oversized_bodies_are_not_replayable_once_read() {
        let first = ReplayBody::new(chunks(&["abcd", "efgh"]), 6);
        let untouched = first.replay();
        assert!(untouched.is_some(), "nothing read yet: replayable");
        assert_eq!(
            first.replay().unwrap().collect().await.unwrap().to_bytes(),
            "abcdefgh"
        );
        assert!(first.replay().is_none());
        assert!(untouched.unwrap().collect().await.is_err());
    }

    #[tokio::test]
    async fn empty_body_sends_nothing_and_hints_exact() {
        let b = ReplayBody::new(Full::new(Bytes::from_static(b"xyz")), 8);
        assert_eq!(b.size_hint().exact(), Some(3));
        let e = ReplayBody::empty();
        assert!(e.is_end_stream());
        let flag = e.sent_flag();
        assert_eq!(e.collect().await.unwrap().to_bytes(), "");
        assert!(!flag.load(Ordering::Acquire));
    }
}
