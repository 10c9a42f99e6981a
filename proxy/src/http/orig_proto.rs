//! HTTP/1.x requests carried between sidecars as HTTP/2 streams.
//!
//! With `outbound.mesh_http2 = true` (off by default: at a sidecar's usual rates HTTP/1.1 costs
//! less, docs/config.md) the outbound multiplexes the app's HTTP/1.x requests over one HTTP/2
//! mTLS connection per peer endpoint: under load many requests share one TLS record and one
//! system call, where HTTP/1.1 needs a connection, a write and a wake-up per request. The
//! outbound marks such a request with `docmesh-orig-proto`; the peer inbound removes the mark
//! and speaks the original HTTP/1.x to its app, so the app never sees HTTP/2 it did not ask for.
//! (linkerd2-proxy does the same with its `l5d-orig-proto` header.)

use http::header::{HeaderName, HeaderValue};
use http::Version;

/// The mark: the HTTP version the app on the client side spoke (`HTTP/1.1` or `HTTP/1.0`).
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("docmesh-orig-proto");

/// Marks `req` (an app's HTTP/1.x request about to go over an HTTP/2 mesh connection) with its
/// version, replacing any mark the app may have sent itself.
pub fn mark<B>(req: &mut http::Request<B>) {
    let value = if req.version() == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static(value));
}

/// Removes the mark from a request that arrived at the inbound and returns the HTTP/1.x
/// version to speak to the app, or `None` when the request is not a marked one (or the mark
/// is not one we write: then it is ignored, and removed all the same).
pub fn take(parts: &mut http::request::Parts) -> Option<Version> {
    let mark = parts.headers.remove(ORIG_PROTO)?;
    match mark.as_bytes() {
        b"HTTP/1.1" => Some(Version::HTTP_11),
        b"HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

/// Removes a mark the app sent itself (only sidecars set it).
pub fn strip<B>(req: &mut http::Request<B>) {
    req.headers_mut().remove(ORIG_PROTO);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn a_marked_request_round_trips_its_version() {
        for v in [Version::HTTP_11, Version::HTTP_10] {
            let mut req = http::Request::builder().version(v).body(()).unwrap();
            mark(&mut req);
            let mut p = parts(req);
            assert_eq!(take(&mut p), Some(v));
            assert!(!p.headers.contains_key(ORIG_PROTO), "the mark is removed");
        }
    }

    #[test]
    fn a_forged_or_unknown_mark_is_replaced_or_ignored() {
        let mut req = http::Request::builder()
            .header(ORIG_PROTO, "HTTP/1.0")
            .body(())
            .unwrap();
        mark(&mut req);
        assert_eq!(req.headers().get_all(ORIG_PROTO).iter().count(), 1);
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");

        let mut p = parts(
            http::Request::builder()
                .header(ORIG_PROTO, "HTTP/3")
                .body(())
                .unwrap(),
        );
        assert_eq!(take(&mut p), None);
        assert!(!p.headers.contains_key(ORIG_PROTO));
        let mut p = parts(http::Request::builder().body(()).unwrap());
        assert_eq!(take(&mut p), None);
    }
}
