//! One inbound HTTP request: `[limits]` checks, the authorization (the one spot for HTTP),
//! `[[inbound.rate_limits]]`, then forwarding to the app over a pooled loopback connection.

use std::net::SocketAddr;

use hyper::body::Incoming;

use super::rate_limit;
use super::tls::PeerIdentity;
use super::Shared;
use crate::authz::Decision;
use crate::errors::Hop;
use crate::http::forward::{error_response, forward};
use crate::http::ProxyBody;
use crate::observe::request_trace_id;
use crate::protocol::HttpVersion;

/// Key of a pooled app connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    app: SocketAddr,
    version: HttpVersion,
}

pub(super) async fn to_app(
    shared: &Shared,
    app: SocketAddr,
    version: HttpVersion,
    req: http::Request<Incoming>,
) -> http::Response<ProxyBody> {
    // The one authorization spot for HTTP: strips client-sent identity headers, checks the
    // SPIFFE rules, the JWT and the tenant, and sets docmesh-client-id/docmesh-tenant.
    let (mut parts, body) = req.into_parts();
    let trace_id = request_trace_id(&parts.extensions);
    let limits = shared.limits.load_full();
    let body_limit = match limits.check_request(&mut parts) {
        Ok(l) => l,
        Err(e) => return error_response(&e, Hop::Inbound, trace_id),
    };
    let (body, body_faults) = limits.guard_body(&mut parts, body, body_limit);
    let peer = parts.extensions.get::<PeerIdentity>().cloned();
    let authz = shared.authz.load_full();
    let client = peer.as_ref().map(PeerIdentity::spiffe_id);
    let (decision, body) = authz
        .authorize_http(app.port(), client, &mut parts, body)
        .await;
    let reason = crate::observe::AuthzReason(decision.reason());
    let tenant = match &decision {
        Decision::Allow { tenant, .. } => tenant.clone(),
        Decision::Deny { .. } => None,
    };
    if let Decision::Deny { cause, detail, .. } = decision {
        let trace_id = trace_id.map(|t| t.to_string());
        let mut resp =
            crate::errors::error_response(cause, &detail, Hop::Inbound, trace_id.as_deref())
                .map(http_body_util::Either::Right);
        resp.extensions_mut().insert(reason);
        return resp;
    }
    // `[[inbound.rate_limits]]`: a bucket per route and verified tenant.
    let limiter = shared.rate_limits.load();
    if !limiter.is_empty() {
        if let Err(limited) = limiter.check(app.port(), parts.uri.path(), tenant.as_deref()) {
            let trace_id = trace_id.map(|t| t.to_string());
            let mut resp = rate_limit::limited_response(&limited, trace_id.as_deref());
            resp.extensions_mut().insert(reason);
            return resp;
        }
    }
    // An HTTP/1.x request that a peer outbound carried over HTTP/2 goes to the app as the
    // HTTP/1.x it was (see `http::orig_proto`).
    let version = match crate::http::orig_proto::take(&mut parts) {
        Some(v) if version == HttpVersion::Http2 => {
            parts.version = v;
            HttpVersion::Http1
        }
        _ => version,
    };
    let tenant = parts.headers.get(crate::authz::TENANT_HEADER).cloned();
    let req = http::Request::from_parts(parts, body);
    let key = PoolKey { app, version };
    let resp = forward(&shared.pool, &key, version, req, Hop::Inbound, || {
        crate::net::connect(app, shared.connect_timeout, crate::net::APP)
    })
    .await;
    // A failure of the client's body (too large, silent, malformed) is the client's answer.
    let mut resp = body_faults.settle(resp, Hop::Inbound, trace_id);
    resp.extensions_mut().insert(reason);
    if let Some(t) = tenant {
        resp.extensions_mut().insert(crate::observe::Tenant(t));
    }
    resp
}
