//! The data path's entry points: one wrapper per HTTP request and one call per opaque TCP
//! connection, so that the inbound and outbound code each make a single call.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::{AccessLogEntry, Direction, Observability, ServicePair, TraceContext, TraceId};
use crate::body::ProxyBody;
use crate::errors::Attempts;
use crate::errors::{Cause, ProxyError, Synthesized, ERROR_HEADER};

/// What the access log keeps of a request while it is in flight.
struct RequestFacts {
    started: SystemTime,
    method: http::Method,
    path: String,
    bytes_received: u64,
}

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
    /// request is logged and counted.
    pub async fn http<B, F, Fut>(
        &self,
        pair: &ServicePair,
        addrs: HopAddrs,
        mut req: http::Request<B>,
        next: F,
    ) -> http::Response<ProxyBody>
    where
        F: FnOnce(http::Request<B>) -> Fut,
        Fut: Future<Output = http::Response<ProxyBody>>,
    {
        let t0 = Instant::now();
        let ctx = self.trace(req.headers_mut());
        // What the access log needs of the request, taken only when the log is on: with it
        // off (or sampled out) a request costs no copies of its method, path and names.
        let logged = self.log.is_enabled().then(|| RequestFacts {
            started: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            bytes_received: content_length(req.headers()),
        });
        req.extensions_mut().insert(ctx.clone());
        let resp = next(req).await;
        let duration = t0.elapsed();
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
        self.metrics
            .request_finished(pair, Some(status), cause, duration);
        if let Some(facts) = logged {
            let is_error = AccessLogEntry::is_error_outcome(Some(status), cause, true);
            if self.log.wants(is_error, ctx.trace_id) {
                let mut e = AccessLogEntry::http(
                    facts.started,
                    direction(pair),
                    ctx,
                    facts.method.as_str(),
                    facts.path,
                );
                e.status = Some(status);
                e.cause = cause;
                e.detail = detail;
                e.duration = duration;
                e.bytes_received = facts.bytes_received;
                e.bytes_sent = content_length(resp.headers());
                e.attempts = resp.extensions().get::<Attempts>().map_or(1, |a| a.0);
                fill_pair(&mut e, pair, addrs);
                self.log.log(e);
            }
        }
        resp
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
        self.finish(pair, e);
    }
}

/// The trace id of a request at this hop, from the [`TraceContext`] that
/// [`Observability::http`] put into its extensions; what synthesized error bodies carry.
pub fn request_trace_id(extensions: &http::Extensions) -> Option<TraceId> {
    extensions.get::<TraceContext>().map(|c| c.trace_id)
}

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

fn direction(pair: &ServicePair) -> Direction {
    if pair.direction == Direction::Inbound.as_str() {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

fn fill_pair(e: &mut AccessLogEntry, pair: &ServicePair, addrs: HopAddrs) {
    let known =
        |s: &std::sync::Arc<String>| (s.as_str() != super::metrics::UNKNOWN).then(|| s.clone());
    e.source = known(&pair.source);
    e.destination = known(&pair.destination);
    e.service = Some(pair.service.as_str().to_owned());
    e.peer_addr = addrs.peer;
    e.upstream_addr = addrs.upstream;
}

fn content_length(h: &http::HeaderMap) -> u64 {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
