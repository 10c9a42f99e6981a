//! A request body guard: fails the body (so the request to the app is aborted) when the client
//! goes silent for longer than the idle timeout, or sends more than the route's size limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a guarded body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyLimitError {
    /// The client sent nothing for the idle timeout.
    #[error("the client sent no request body data for {0:?} (limits.body_idle_timeout)")]
    Idle(Duration),
    /// The client sent more than the limit.
    #[error("the request body is larger than {0} bytes, the limit for this path (limits.body)")]
    TooLarge(u64),
    /// The inner body failed.
    #[error("{0}")]
    Inner(String),
}

pin_project_lite::pin_project! {
    /// `B` with an idle timeout between frames and an optional size limit.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        sleep: Pin<Box<Sleep>>,
        max: Option<u64>,
        seen: u64,
        too_large: Arc<AtomicBool>,
    }
}

/// Tells, after the request was forwarded, whether its body was cut off for its size (so the
/// client gets `413 payload-too-large` instead of the upstream failure the cut caused).
#[derive(Debug, Clone, Default)]
pub struct TooLarge(Arc<AtomicBool>);

impl TooLarge {
    /// True once the guarded body passed its size limit.
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B> GuardedBody<B> {
    /// Guards `inner`: at most `idle` between frames, at most `max` bytes in total.
    pub fn new(inner: B, idle: Duration, max: Option<u64>) -> Self {
        GuardedBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            max,
            seen: 0,
            too_large: Arc::default(),
        }
    }

    /// A handle that reports whether this body was cut off for its size.
    pub fn too_large(&self) -> TooLarge {
        TooLarge(Arc::clone(&self.too_large))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = BodyLimitError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += bytes::Buf::remaining(data) as u64;
                    if let Some(max) = *this.max {
                        if *this.seen > max {
                            this.too_large.store(true, Ordering::Release);
                            return Poll::Ready(Some(Err(BodyLimitError::TooLarge(max))));
                        }
                    }
                }
                let deadline = Instant::now() + *this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(BodyLimitError::Inner(e.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyLimitError::Idle(*this.idle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn silent_client_fails_the_body_after_the_idle_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let mut body = GuardedBody::new(StreamBody::new(stream), Duration::from_secs(5), None);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        let start = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyLimitError::Idle(_)), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        drop(tx);
    }

    #[tokio::test]
    async fn body_over_the_limit_fails_and_under_passes() {
        let full = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        let mut body = GuardedBody::new(full, Duration::from_secs(5), Some(99));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyLimitError::TooLarge(99)));
        let full = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        let body = GuardedBody::new(full, Duration::from_secs(5), Some(100));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
