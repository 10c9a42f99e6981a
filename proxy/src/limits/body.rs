//! A request body guard: fails the body (so the request to the upstream is aborted) when the
//! client goes silent for longer than the idle timeout, or sends more than the route's size
//! limit, and records why the client's body failed (those two, or a malformed or cut-off
//! body), so the client gets its own answer (408, 413, 400) instead of the upstream failure
//! the abort caused. Each failure is logged and counted once, with its cause.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::head::BodyEnd;
use super::Limits;
use crate::body::ProxyBody;
use crate::errors::{Cause, Hop, ProxyError};
use crate::observe::{RequestBytes, TraceId};

/// Why a guarded body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyLimitError {
    /// The client sent nothing for the idle timeout.
    #[error("the client sent no request body data for {0:?} (limits.body_idle_timeout)")]
    Idle(Duration),
    /// The client sent more than the limit.
    #[error("the request body is larger than {0} bytes, the limit for this path (limits.body)")]
    TooLarge(u64),
    /// The client's body could not be read (malformed framing, connection closed mid-body).
    #[error("{0}")]
    Inner(String),
}

struct FaultCell {
    limits: Limits,
    set: AtomicBool,
    fault: Mutex<Option<ProxyError>>,
}

/// The record of a failure of the client's request body, shared between the
/// [`GuardedBody`] and the data path that forwarded it (nothing, and no allocation, for a
/// request without a body: it cannot fail).
#[derive(Clone)]
pub struct BodyFaults(Option<Arc<FaultCell>>);

impl std::fmt::Debug for BodyFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BodyFaults").field(&self.fault()).finish()
    }
}

impl BodyFaults {
    /// The failure of the client's body, if it failed.
    pub fn fault(&self) -> Option<ProxyError> {
        let cell = self.0.as_ref()?;
        if !cell.set.load(Ordering::Acquire) {
            return None;
        }
        cell.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The answer for the client: when its body failed and `resp` is the proxy's own error
    /// (the upstream exchange failed because the body was aborted), the body's failure
    /// (408 `request-body-timeout`, 413 `payload-too-large`, 400 `bad-request`); else `resp`.
    pub fn settle(
        &self,
        resp: http::Response<ProxyBody>,
        hop: Hop,
        trace_id: Option<TraceId>,
    ) -> http::Response<ProxyBody> {
        if !resp.headers().contains_key(crate::errors::ERROR_HEADER) {
            return resp;
        }
        match self.fault() {
            Some(e) => {
                let trace_id = trace_id.map(|t| t.to_string());
                e.to_response(hop, trace_id.as_deref())
                    .map(http_body_util::Either::Right)
            }
            None => resp,
        }
    }

    /// Records (once), counts and logs the failure.
    fn record(&self, e: ProxyError) {
        let Some(cell) = &self.0 else { return };
        let mut slot = cell.fault.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let e = cell.limits.reject(e);
        tracing::warn!(cause = e.cause.as_str(), detail = %e.detail, "request body failed");
        *slot = Some(e);
        cell.set.store(true, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// `B` with an idle timeout between frames, an optional size limit, and the record of
    /// its failure.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // Created the first time the body has to wait (a body that arrived with its head
        // never needs one); re-armed after every frame.
        sleep: Option<Pin<Box<Sleep>>>,
        rearm: bool,
        max: Option<u64>,
        seen: u64,
        faults: BodyFaults,
        end: Option<BodyEnd>,
        // The access log's and span's count of request bytes (`observe::record`).
        counted: Option<RequestBytes>,
    }
}

impl<B: Body> GuardedBody<B> {
    /// Guards `inner` with `limits.body_idle_timeout` and at most `max` bytes in total; `end`
    /// tells the connection's head guard when the body is over. See [`Limits::guard_body`].
    pub fn new(
        inner: B,
        limits: &Limits,
        max: Option<u64>,
        end: Option<BodyEnd>,
    ) -> (Self, BodyFaults) {
        let idle = limits.body_idle_timeout();
        let faults = BodyFaults((!inner.is_end_stream()).then(|| {
            Arc::new(FaultCell {
                limits: limits.clone(),
                set: AtomicBool::new(false),
                fault: Mutex::new(None),
            })
        }));
        let body = GuardedBody {
            inner,
            idle,
            sleep: None,
            rearm: false,
            max,
            seen: 0,
            faults: faults.clone(),
            end,
            counted: None,
        };
        (body, faults)
    }

    /// Also counts the body's bytes into `counted` as they are read.
    pub fn count_into(&mut self, counted: Option<RequestBytes>) {
        self.counted = counted;
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
    B::Error: std::error::Error,
{
    type Data = B::Data;
    type Error = BodyLimitError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = bytes::Buf::remaining(data) as u64;
                    *this.seen += n;
                    if let Some(c) = this.counted.as_ref() {
                        c.add(n);
                    }
                    if let Some(max) = *this.max {
                        if *this.seen > max {
                            this.faults.record(ProxyError::new(
                                Cause::PayloadTooLarge,
                                format!(
                                    "the request body is larger than {max} bytes, the limit \
                                     for this path (limits.body); it was cut off"
                                ),
                            ));
                            return Poll::Ready(Some(Err(BodyLimitError::TooLarge(max))));
                        }
                    }
                }
                *this.rearm = true;
                if this.inner.is_end_stream() {
                    this.end.take();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // hyper's message is generic ("error reading a body from connection"); the
                // cause chain says what was wrong with it.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                let e = text;
                this.faults.record(ProxyError::new(
                    Cause::BadRequest,
                    format!(
                        "the request body could not be read from the client ({e}): malformed \
                         chunked framing, or the client closed the connection mid-body"
                    ),
                ));
                Poll::Ready(Some(Err(BodyLimitError::Inner(e))))
            }
            Poll::Ready(None) => {
                this.end.take();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = *this.idle;
                let sleep = match this.sleep {
                    Some(s) => {
                        if std::mem::take(this.rearm) {
                            s.as_mut().reset(Instant::now() + idle);
                        }
                        s
                    }
                    None => {
                        *this.rearm = false;
                        this.sleep.insert(Box::pin(tokio::time::sleep(idle)))
                    }
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.faults.record(ProxyError::new(
                            Cause::RequestBodyTimeout,
                            format!(
                                "the client sent no request body data for {idle:?} \
                                 (limits.body_idle_timeout); the request was aborted"
                            ),
                        ));
                        Poll::Ready(Some(Err(BodyLimitError::Idle(idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            if let Some(e) = &self.end {
                e.finish();
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits::LimitsConfig;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    fn limits(idle: Duration) -> Limits {
        Limits::new(&LimitsConfig {
            body_idle_timeout: idle,
            ..LimitsConfig::default()
        })
    }

    fn synthesized() -> http::Response<ProxyBody> {
        ProxyError::new(Cause::UpstreamReset, "reset")
            .to_response(Hop::Inbound, None)
            .map(http_body_util::Either::Right)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_fails_the_body_after_the_idle_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let (mut body, faults) = GuardedBody::new(
            StreamBody::new(stream),
            &limits(Duration::from_secs(5)),
            None,
            None,
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        assert!(faults.fault().is_none());
        let start = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyLimitError::Idle(_)), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let fault = faults.fault().unwrap();
        assert_eq!(fault.cause, Cause::RequestBodyTimeout);
        assert!(fault.detail.contains("limits.body_idle_timeout"), "{fault}");
        // The proxy's own error (the abort) becomes the client's 408; an app's answer stays.
        let resp = faults.settle(synthesized(), Hop::Inbound, None);
        assert_eq!(resp.status(), 408);
        assert_eq!(resp.headers()["docmesh-error"], "request-body-timeout");
        let app = http::Response::new(http_body_util::Either::Right(Default::default()));
        assert_eq!(faults.settle(app, Hop::Inbound, None).status(), 200);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_restarts_after_every_frame() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let (mut body, faults) = GuardedBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            &limits(Duration::from_secs(5)),
            None,
            None,
        );
        let feeder = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
        });
        for _ in 0..4 {
            assert_eq!(
                body.frame().await.unwrap().unwrap().into_data().unwrap(),
                "x"
            );
        }
        feeder.await.unwrap();
        assert!(body.frame().await.is_none(), "ended, not timed out");
        assert!(faults.fault().is_none());
    }

    #[tokio::test]
    async fn body_over_the_limit_fails_and_under_passes() {
        let full = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        let (mut body, faults) =
            GuardedBody::new(full, &limits(Duration::from_secs(5)), Some(99), None);
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyLimitError::TooLarge(99)));
        assert_eq!(faults.fault().unwrap().cause, Cause::PayloadTooLarge);
        let full = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        let (body, faults) =
            GuardedBody::new(full, &limits(Duration::from_secs(5)), Some(100), None);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100);
        assert!(faults.fault().is_none());
    }

    #[tokio::test]
    async fn a_broken_client_body_is_a_bad_request() {
        let broken = StreamBody::new(futures::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("Invalid chunk size line")),
        ]));
        let l = limits(Duration::from_secs(5));
        let (body, faults) = GuardedBody::new(broken, &l, None, None);
        assert!(body.collect().await.is_err());
        let fault = faults.fault().unwrap();
        assert_eq!(fault.cause, Cause::BadRequest);
        assert!(fault.detail.contains("Invalid chunk size line"), "{fault}");
        assert_eq!(
            faults.settle(synthesized(), Hop::Outbound, None).status(),
            400
        );
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
