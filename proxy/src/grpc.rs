//! gRPC callers get gRPC errors: a response the proxy synthesized for a request with
//! `content-type: application/grpc…` is sent as a gRPC Trailers-Only response (HTTP 200, one
//! HEADERS frame ending the stream) with `grpc-status` and `grpc-message` (the cause and
//! detail), plus the usual `docmesh-error` (and `WWW-Authenticate` where the HTTP form had it).
//! See <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>.

use crate::errors::{Cause, Synthesized, ERROR_HEADER};

/// gRPC status codes used for synthesized errors (from the gRPC status code list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    /// 3: the request itself is malformed.
    InvalidArgument = 3,
    /// 4: a deadline passed before a response.
    DeadlineExceeded = 4,
    /// 7: the caller is known but not permitted.
    PermissionDenied = 7,
    /// 8: a size or concurrency limit was hit.
    ResourceExhausted = 8,
    /// 13: a bug in docmesh.
    Internal = 13,
    /// 14: the service cannot be reached now (safe to retry with backoff).
    Unavailable = 14,
    /// 16: no valid credentials.
    Unauthenticated = 16,
}

/// The gRPC status a caller receives for `cause`.
pub fn code_of(cause: Cause) -> GrpcCode {
    use Cause as C;
    match cause {
        C::DnsFailure
        | C::ConnectRefused
        | C::ConnectTimeout
        | C::TlsPlaintextPeer
        | C::TlsUntrustedPeer
        | C::IdentityMismatch
        | C::TlsRejectedByPeer
        | C::UpstreamReset
        | C::UpstreamNotHttp2
        | C::CircuitOpen
        | C::NoHealthyEndpoint => GrpcCode::Unavailable,
        C::ResponseTimeout | C::RequestBodyTimeout => GrpcCode::DeadlineExceeded,
        C::Overloaded
        | C::RequestHeaderTooLarge
        | C::UriTooLong
        | C::PayloadTooLarge
        | C::RateLimited => GrpcCode::ResourceExhausted,
        C::Unauthenticated => GrpcCode::Unauthenticated,
        C::Forbidden => GrpcCode::PermissionDenied,
        C::BadRequest => GrpcCode::InvalidArgument,
        C::Internal => GrpcCode::Internal,
    }
}

/// Whether a request is a gRPC call (HTTP/2 with a `content-type` of `application/grpc` or
/// `application/grpc+<codec>`).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct == "application/grpc"
                    || ct.starts_with("application/grpc+")
                    || ct.starts_with("application/grpc;")
            })
}

/// Percent-encodes a `grpc-message` value: every byte outside printable ASCII, and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a synthesized response (one carrying [`Synthesized`]) into its gRPC Trailers-Only
/// form with the body `empty`; other responses are returned unchanged. Extensions are kept, so
/// the access log and metrics still see the cause.
pub fn into_trailers_only<B>(resp: http::Response<B>, empty: B) -> http::Response<B> {
    let Some(synth) = resp.extensions().get::<Synthesized>().cloned() else {
        return resp;
    };
    let (parts, _body) = resp.into_parts();
    let mut out = http::Response::new(empty);
    *out.extensions_mut() = parts.extensions;
    let h = out.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        http::HeaderValue::from(code_of(synth.cause) as u16),
    );
    let message = percent_encode(&format!("{}: {}", synth.cause, synth.detail));
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    for name in [ERROR_HEADER, http::header::WWW_AUTHENTICATE.as_str()] {
        if let Some(v) = parts.headers.get(name) {
            h.insert(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{error_response, Hop};

    #[test]
    fn synthesized_errors_become_trailers_only_with_status_and_message() {
        let resp = error_response(Cause::ConnectRefused, "nothing at 50%", Hop::Inbound, None)
            .map(|_| String::new());
        let g = into_trailers_only(resp, String::new());
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "14");
        assert_eq!(
            g.headers()["grpc-message"],
            "connect-refused: nothing at 50%25"
        );
        assert_eq!(g.headers()[ERROR_HEADER], "connect-refused");
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert!(g.body().is_empty());
        assert!(g.extensions().get::<Synthesized>().is_some());
    }

    #[test]
    fn relayed_responses_are_untouched_and_codes_follow_the_causes() {
        let relayed = http::Response::builder().status(503).body(()).unwrap();
        assert_eq!(into_trailers_only(relayed, ()).status(), 503);
        assert_eq!(code_of(Cause::ResponseTimeout), GrpcCode::DeadlineExceeded);
        assert_eq!(code_of(Cause::Unauthenticated), GrpcCode::Unauthenticated);
        assert_eq!(code_of(Cause::Forbidden), GrpcCode::PermissionDenied);
        assert_eq!(code_of(Cause::Overloaded), GrpcCode::ResourceExhausted);
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
