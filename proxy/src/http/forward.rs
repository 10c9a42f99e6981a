//! Relays one HTTP request to an upstream over the pool and returns its response, handling
//! hop-by-hop headers, protocol upgrades (WebSocket) and synthesized error responses.

use std::future::Future;
use std::hash::Hash;

use http::StatusCode;
use http_body_util::Either;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pool::Pool;
use super::upgrade::{splice, StreamIdle};
use super::{is_upgrade_request, strip_hop_by_hop, ProxyBody};
use crate::errors::{Hop, ProxyError};
use crate::observe::{request_trace_id, TraceId};
use crate::protocol::HttpVersion;

/// Forwards `req` (any streaming body, e.g. `Incoming` or a body an authorization filter
/// replays) to the upstream identified by `key` (connecting with `connect` when the pool
/// has no free connection). Upstream failures become a synthesized response with the cause.
///
/// `Host`, `:authority` and `X-Forwarded-*` are forwarded untouched; an HTTP/1.1 upgrade that
/// the upstream accepts (101) is spliced into a bidirectional byte copy (closed after the
/// route's `timeouts.stream_idle` without traffic, see [`super::upgrade`]).
pub async fn forward<K, B, F, Fut, Io>(
    pool: &Pool<K, B>,
    key: &K,
    version: HttpVersion,
    req: http::Request<B>,
    hop: Hop,
    connect: F,
) -> http::Response<ProxyBody>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Io, ProxyError>>,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    relay(version, req, hop, |req| {
        pool.send(key, version, req, connect)
    })
    .await
}

/// Like [`forward`], with the upstream exchange done by `send` (the outbound's resilience
/// stack, which picks the endpoint, applies timeouts and retries, and fails with the cause).
pub async fn relay<B, S, Fut>(
    version: HttpVersion,
    mut req: http::Request<B>,
    hop: Hop,
    send: S,
) -> http::Response<ProxyBody>
where
    S: FnOnce(http::Request<B>) -> Fut,
    Fut: Future<Output = Result<http::Response<hyper::body::Incoming>, ProxyError>>,
{
    let upgrade = version == HttpVersion::Http1 && is_upgrade_request(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let trace_id = request_trace_id(req.extensions());
    match send(req).await {
        Ok(mut resp) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            match (switching, client_upgrade) {
                (true, Some(client)) => {
                    let upstream = hyper::upgrade::on(&mut resp);
                    let idle = resp.extensions().get::<StreamIdle>().map(|s| s.0);
                    tokio::spawn(splice(client, upstream, idle));
                    strip_hop_by_hop(resp.headers_mut(), true);
                }
                _ => strip_hop_by_hop(resp.headers_mut(), false),
            }
            resp.map(Either::Left)
        }
        Err(e) => error_response(&e, hop, trace_id),
    }
}

/// The synthesized response for `e`, logged with its cause; its body carries `trace_id` (the
/// request's, see [`request_trace_id`]).
pub fn error_response(
    e: &ProxyError,
    hop: Hop,
    trace_id: Option<TraceId>,
) -> http::Response<ProxyBody> {
    tracing::warn!(cause = e.cause.as_str(), hop = hop.as_str(), detail = %e.detail, "request failed");
    let trace_id = trace_id.map(|t| t.to_string());
    e.to_response(hop, trace_id.as_deref()).map(Either::Right)
}
