//! The data path's entry points: one wrapper per HTTP request and one call per opaque TCP
//! connection, so that the inbound and outbound code each make a single call.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use std::sync::Arc;

use super::record::{HopRecord, ObservedBody, RequestBytes, RequestFacts};
use super::{AccessLogEntry, Direction, Observability, ServicePair, TraceContext, TraceId};
use crate::body::ProxyBody;
use crate::errors::Attempts;
use crate::errors::{Cause, ProxyError, Synthesized, ERROR_HEADER};

/// Addresses of one hop, for the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct HopAddrs {
    /// The downstream peer (the app, or the calling sidecar).
    pub peer: Option<SocketAddr>,
    /// The upstream (the called sidecar, or the local app).
    pub upstream: Option<SocketAddr>,
}

impl Observability {
    /// The service pair of an outbound connection to `service`, which must present
    /// `destination` (from configuration); the source is our own SVID's ID.
    pub fn outbound_pair(&self, service: &str, destination: &dyn std::fmt::Display) -> ServicePair {
        let local = self.local_id();
        self.metrics.pair(
            Direction::Outbound,
            service,
            local.as_deref().map(String::as_str),
            Some(&destination.to_string()),
        )
    }

    /// The service pair of an inbound connection for the app port `app_port`, from the peer's
    /// verified SPIFFE ID (`None`: plaintext peer); the destination is our own SVID's ID.
    pub fn inbound_pair(
        &self,
        app_port: u16,
        source: Option<&dyn std::fmt::Display>,
    ) -> ServicePair {
        let local = self.local_id();
        let source = source.map(|s| s.to_string());
        self.metrics.pair(
            Direction::Inbound,
            &format!("app:{app_port}"),
            source.as_deref(),
            local.as_deref().map(String::as_str),
        )
    }

    /// Runs one HTTP request through `next` with observability: the trace headers are
    /// continued or started (and the [`TraceContext`] put in the request's extensions, from
    /// where the data path puts the trace id into the error bodies it synthesizes), and the
    /// request is counted, logged and exported as a span when its response body ends (or the
    /// client goes away; see [`super::record`]).
    pub async fn http<B, F, Fut>(
        self: &Arc<Self>,
        pair: &ServicePair,
        addrs: HopAddrs,
        mut req: http::Request<B>,
        next: F,
    ) -> http::Response<ObservedBody>
    where
        F: FnOnce(http::Request<B>) -> Fut,
        Fut: Future<Output = http::Response<ProxyBody>>,
    {
        let ctx = self.trace(req.headers_mut());
        let exporting = self.otlp.is_some();
        // What the access log and the span need of the request, taken only when one of them
        // may want it: with both off (or the span unsampled and the log off) a request costs
        // no copies of its method and path.
        let facts = (self.log.is_enabled() || (exporting && ctx.sampled)).then(|| RequestFacts {
            started: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
        });
        let received = (self.log.is_enabled() || exporting).then(|| {
            let counter = RequestBytes::default();
            req.extensions_mut().insert(counter.clone());
            counter
        });
        req.extensions_mut().insert(ctx.clone());
        let mut record =
            HopRecord::new(Arc::clone(self), pair.clone(), addrs, ctx, facts, received);
        let resp = next(req).await;
        let (cause, detail) = synthesized_cause(&resp);
        let status = resp.status().as_u16();
        if let Some(AuthzReason(reason)) = resp.extensions().get::<AuthzReason>() {
            self.metrics
                .authz_decision(pair, *reason == "allow", reason);
        }
        if direction(pair) == Direction::Outbound {
            if let Some(reason) = cause.and_then(tls_reason) {
                self.metrics
                    .tls_handshake(Direction::Outbound, &pair.service, Err(reason));
            }
        }
        let attempts = resp.extensions().get::<Attempts>().map_or(1, |a| a.0);
        let tenant = resp.extensions().get::<Tenant>().map(|t| t.0.clone());
        record.responded(status, cause, detail, attempts, tenant);
        resp.map(|body| ObservedBody::new(body, record))
    }

    /// Records a finished opaque TCP connection: `bytes` is (received from the downstream,
    /// sent to it), `error` the failure that ended it early.
    pub fn tcp_finished(
        &self,
        pair: &ServicePair,
        addrs: HopAddrs,
        started: (SystemTime, Instant),
        bytes: (u64, u64),
        error: Option<&ProxyError>,
    ) {
        let mut e = AccessLogEntry::tcp(started.0, direction(pair));
        e.duration = started.1.elapsed();
        e.bytes_received = bytes.0;
        e.bytes_sent = bytes.1;
        e.cause = error.map(|x| x.cause);
        e.detail = error.map(|x| x.detail.clone());
        fill_pair(&mut e, pair, addrs);
        if let Some(otlp) = &self.otlp {
            if error.is_some() || fastrand::f64() < self.tracing.new_trace_sample_ratio {
                otlp.export(e.clone());
            }
        }
        self.finish(pair, e);
    }
}

/// The trace id of a request at this hop, from the [`TraceContext`] that
/// [`Observability::http`] put into its extensions; what synthesized error bodies carry.
pub fn request_trace_id(extensions: &http::Extensions) -> Option<TraceId> {
    extensions.get::<TraceContext>().map(|c| c.trace_id)
}

/// The tenant the inbound authorization established for a request (the `docmesh-tenant`
/// value given to the app); the authorization spot inserts it into the response extensions
/// for the access log and the span.
#[derive(Debug, Clone)]
pub struct Tenant(pub http::HeaderValue);

/// The authorization decision of an inbound request (`allow`, or the failed check's reason);
/// the authorization spot inserts it into the response extensions for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzReason(pub &'static str);

/// The handshake-failure reason of a TLS cause (outbound handshakes are counted when they
/// fail a request).
fn tls_reason(cause: Cause) -> Option<&'static str> {
    matches!(
        cause,
        Cause::TlsPlaintextPeer
            | Cause::TlsUntrustedPeer
            | Cause::TlsRejectedByPeer
            | Cause::IdentityMismatch
    )
    .then(|| cause.as_str())
}

pub(super) fn direction(pair: &ServicePair) -> Direction {
    if pair.direction == Direction::Inbound.as_str() {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

pub(super) fn fill_pair(e: &mut AccessLogEntry, pair: &ServicePair, addrs: HopAddrs) {
    let known =
        |s: &std::sync::Arc<String>| (s.as_str() != super::metrics::UNKNOWN).then(|| s.clone());
    e.source = known(&pair.source);
    e.destination = known(&pair.destination);
    e.service = Some(pair.service.as_str().to_owned());
    e.peer_addr = addrs.peer;
    e.upstream_addr = addrs.upstream;
}

/// The cause of a response a docmesh proxy synthesized, and its detail when this proxy
/// synthesized it (the [`Synthesized`] extension; the body already carries the trace id). A
/// relayed response synthesized by the peer sidecar only names its cause in the header.
fn synthesized_cause(resp: &http::Response<ProxyBody>) -> (Option<Cause>, Option<String>) {
    if let Some(s) = resp.extensions().get::<Synthesized>() {
        return (Some(s.cause), Some(s.detail.clone()));
    }
    let cause = resp
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Cause::ALL.into_iter().find(|c| c.as_str() == v));
    (cause, None)
}
