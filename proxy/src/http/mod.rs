//! HTTP helpers shared by the outbound and inbound data paths: hop-by-hop header handling
//! (RFC 9110 §7.6.1), Upgrade/WebSocket pass-through, the pooled upstream client and the
//! request forwarder.
//!
//! Bodies are never buffered: the incoming body is handed to the upstream request as is, and
//! the upstream response body is handed back as is.

pub mod coalesce;
pub mod forward;
pub mod h2_probe;
pub mod idle;
pub mod orig_proto;
pub mod pool;
pub mod serve;
pub mod upgrade;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::body::ProxyBody;

/// Headers that apply to one connection only and are never forwarded (RFC 9110 §7.6.1, plus
/// the legacy `proxy-connection` and `keep-alive`).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// True when the request asks for a protocol switch (`Connection: upgrade` + `Upgrade`), as a
/// WebSocket handshake does.
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE) && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop headers before forwarding: the fixed list, every header named in
/// `Connection`, and `Upgrade` unless this message is a protocol switch (`upgrade = true`), in
/// which case `Connection: upgrade` is re-added. `TE: trailers` is kept (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Names listed in Connection (other than the well-known ones) are hop-by-hop too; this
    // allocates only when such an extension is present.
    let mut extra: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for t in s.split(',') {
            let t = t.trim();
            if t.is_empty()
                || ["keep-alive", "close", "upgrade", "te"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                extra.push(name);
            }
        }
    }
    for name in extra {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Gives an HTTP/2 request without `:authority` the authority of its `Host` header (and the
/// scheme `http`), as an intermediary must (RFC 9113, 8.3.1): an HTTP/2 client may send `Host`
/// instead, and the next HTTP/2 hop (the h2 crate) refuses a request with neither. Requests
/// that have an authority, are not HTTP/2, or have no usable `Host` are left as they are.
pub fn authority_from_host<B>(req: &mut http::Request<B>) {
    if req.version() != http::Version::HTTP_2 || req.uri().authority().is_some() {
        return;
    }
    let Some(host) = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
    else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(host);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_request_without_authority_takes_the_host() {
        let mut req = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("/doc/x?shardkey=1")
            .header("host", "documentserver:8000")
            .body(())
            .unwrap();
        authority_from_host(&mut req);
        assert_eq!(req.uri(), "http://documentserver:8000/doc/x?shardkey=1");
        let mut h1 = http::Request::builder()
            .uri("/a")
            .header("host", "ds")
            .body(())
            .unwrap();
        authority_from_host(&mut h1);
        assert_eq!(h1.uri(), "/a", "HTTP/1.x requests keep their origin form");
        let mut bad = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("/a")
            .header("host", "not a host")
            .body(())
            .unwrap();
        authority_from_host(&mut bad);
        assert_eq!(bad.uri(), "/a");
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::HOST, "docs.example".parse().unwrap());
        h.insert("x-forwarded-host", "tenant.example".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-forwarded-host", "x-forwarded-proto"]);
    }

    #[test]
    fn upgrade_survives_and_te_trailers_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        let req = {
            let mut r = http::Request::new(());
            *r.headers_mut() = h.clone();
            r
        };
        assert!(is_upgrade_request(&req));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }
}
