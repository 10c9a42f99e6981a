//! The record of one HTTP request in flight, finished when the response body ends rather than
//! at the response headers: bytes are counted as they flow (the request body by the limits
//! layer's body guard through [`RequestBytes`], the response body by [`ObservedBody`]), the
//! duration (and the span) ends with the body, and a client that goes away first (HTTP/2
//! `RST_STREAM`, a closed connection, a gRPC deadline) gives the request the outcome
//! [`Outcome::ClientCancelled`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{AccessLogEntry, HopAddrs, Observability, ServicePair, TraceContext};
use crate::body::ProxyBody;
use crate::errors::Cause;

/// How a request ended, apart from its status and cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was sent to its end.
    Complete,
    /// The client went away before the response ended (stream reset, connection closed,
    /// gRPC deadline or cancellation).
    ClientCancelled,
    /// The response body failed mid-stream (the upstream reset it or closed its connection).
    ResponseBodyFailed,
}

impl Outcome {
    /// `complete`, `client-cancelled`, `response-body-failed` (log field, span attribute).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientCancelled => "client-cancelled",
            Outcome::ResponseBodyFailed => "response-body-failed",
        }
    }
}

/// Request body bytes read from the client so far; [`Observability::http`] puts it in the
/// request's extensions, the body guard (`limits::guard_body`) adds to it.
#[derive(Debug, Clone, Default)]
pub struct RequestBytes(Arc<AtomicU64>);

impl RequestBytes {
    /// Counts `n` more bytes.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the access log keeps of a request while it is in flight.
pub(super) struct RequestFacts {
    pub(super) started: SystemTime,
    pub(super) method: http::Method,
    pub(super) path: String,
}

/// What the response headers said.
struct ResponseFacts {
    status: u16,
    cause: Option<Cause>,
    detail: Option<String>,
    attempts: u32,
    tenant: Option<http::HeaderValue>,
}

/// One request at one hop, from its arrival to the end of its response body (or the drop of
/// either); finishing records metrics, the access log line and the span once.
pub(super) struct HopRecord {
    obs: Arc<Observability>,
    pair: ServicePair,
    addrs: HopAddrs,
    ctx: Option<TraceContext>,
    t0: Instant,
    facts: Option<RequestFacts>,
    received: Option<RequestBytes>,
    response: Option<ResponseFacts>,
    sent: u64,
    done: bool,
}

impl HopRecord {
    pub(super) fn new(
        obs: Arc<Observability>,
        pair: ServicePair,
        addrs: HopAddrs,
        ctx: TraceContext,
        facts: Option<RequestFacts>,
        received: Option<RequestBytes>,
    ) -> Self {
        HopRecord {
            obs,
            pair,
            addrs,
            ctx: Some(ctx),
            t0: Instant::now(),
            facts,
            received,
            response: None,
            sent: 0,
            done: false,
        }
    }

    /// The response headers are on their way to the client.
    pub(super) fn responded(
        &mut self,
        status: u16,
        cause: Option<Cause>,
        detail: Option<String>,
        attempts: u32,
        tenant: Option<http::HeaderValue>,
    ) {
        self.response = Some(ResponseFacts {
            status,
            cause,
            detail,
            attempts,
            tenant,
        });
    }

    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let duration = self.t0.elapsed();
        let obs = &self.obs;
        let status = self.response.as_ref().map(|r| r.status);
        let cause = self.response.as_ref().and_then(|r| r.cause);
        let Some(ctx) = self.ctx.take() else { return };
        let is_error =
            AccessLogEntry::is_error_outcome(status, cause, true) || outcome != Outcome::Complete;
        let log = obs.log.wants(is_error, ctx.trace_id);
        let span = obs
            .otlp
            .as_ref()
            .filter(|_| ctx.sampled || cause.is_some() || outcome != Outcome::Complete);
        // The latency bucket's exemplar: only a trace that can be looked up (exported as a
        // span, or in the access log).
        let exemplar = (log || span.is_some()).then_some(ctx.trace_id);
        obs.metrics
            .request_finished_traced(&self.pair, status, cause, duration, exemplar);
        if !log && span.is_none() {
            return;
        }
        let (started, method, path) = match self.facts.take() {
            Some(f) => (f.started, Some(f.method), Some(f.path)),
            None => (SystemTime::now() - duration, None, None),
        };
        let mut e = AccessLogEntry::http(
            started,
            super::hop::direction(&self.pair),
            ctx,
            method.as_ref().map_or("", http::Method::as_str),
            path.unwrap_or_default(),
        );
        if method.is_none() {
            e.method = None;
            e.path = None;
        }
        e.status = status;
        e.cause = cause;
        e.outcome = outcome;
        e.duration = duration;
        e.bytes_received = self.received.as_ref().map_or(0, RequestBytes::get);
        e.bytes_sent = self.sent;
        if let Some(r) = self.response.as_mut() {
            e.detail = r.detail.take();
            e.attempts = r.attempts;
            e.tenant = r
                .tenant
                .take()
                .and_then(|t| t.to_str().ok().map(str::to_owned));
        }
        super::hop::fill_pair(&mut e, &self.pair, self.addrs);
        match (span, log) {
            (Some(x), true) => {
                x.export(e.clone());
                obs.log.log(e);
            }
            (Some(x), false) => {
                x.export(e);
            }
            (None, _) => {
                obs.log.log(e);
            }
        }
    }
}

impl Drop for HopRecord {
    /// Dropped before any response body existed: the client went away while the request was
    /// being handled (the server dropped the handler).
    fn drop(&mut self) {
        self.finish(Outcome::ClientCancelled);
    }
}

/// The response body of an observed request: counts the bytes sent and finishes the
/// request's record when the body ends, fails, or is dropped unfinished.
pub struct ObservedBody {
    inner: ProxyBody,
    record: HopRecord,
}

impl ObservedBody {
    pub(super) fn new(inner: ProxyBody, record: HopRecord) -> Self {
        ObservedBody { inner, record }
    }

    /// Applies `f` to the response as it would be without observation (e.g. the gRPC
    /// Trailers-Only form of a synthesized error), keeping the record with the new body.
    pub fn map_response(
        resp: http::Response<ObservedBody>,
        f: impl FnOnce(http::Response<ProxyBody>) -> http::Response<ProxyBody>,
    ) -> http::Response<ObservedBody> {
        let (parts, mut body) = resp.into_parts();
        let inner = std::mem::replace(
            &mut body.inner,
            http_body_util::Either::Right(http_body_util::Full::default()),
        );
        let (parts, inner) = f(http::Response::from_parts(parts, inner)).into_parts();
        body.inner = inner;
        http::Response::from_parts(parts, body)
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.record.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.record.finish(Outcome::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.record.finish(Outcome::ResponseBodyFailed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.record.finish(Outcome::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    /// A body the server drops at its end (never polled because it was empty) completed; one
    /// dropped before its end was cancelled by the client.
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            Outcome::Complete
        } else {
            Outcome::ClientCancelled
        };
        self.record.finish(outcome);
    }
}
