//! The causes of every response the proxy synthesizes (the "502 taxonomy").
//!
//! Each failure the proxy produces maps to exactly one [`Cause`]; the cause travels in the
//! `docmesh-error` header, in the JSON body, in the access log and as a metric label, so an
//! operator never has to guess why a call failed.

use std::fmt;

use bytes::Bytes;
use http_body_util::Full;

/// Name of the response header that carries the cause of a synthesized response.
pub const ERROR_HEADER: &str = "docmesh-error";

/// Why the proxy answered a request itself instead of relaying the upstream's answer.
///
/// The string forms are stable: they are documented, logged and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The service name did not resolve.
    DnsFailure,
    /// Nothing listens at the upstream address.
    ConnectRefused,
    /// No TCP connection within the connect timeout (partition, firewall).
    ConnectTimeout,
    /// The peer answered our TLS ClientHello with plaintext ("wrong version number").
    TlsPlaintextPeer,
    /// The peer's certificate chain is not trusted by our bundle.
    TlsUntrustedPeer,
    /// The peer's SPIFFE ID is not the one configured for the destination.
    IdentityMismatch,
    /// The peer refused our SVID during the TLS handshake (expired, or its bundle does not
    /// trust our trust domain).
    TlsRejectedByPeer,
    /// The upstream closed or reset before a complete response.
    UpstreamReset,
    /// The upstream (on the inbound hop: the app) does not speak HTTP/2, which the caller used
    /// (it answered the HTTP/2 preface with HTTP/1.x).
    UpstreamNotHttp2,
    /// No response headers within the response timeout.
    ResponseTimeout,
    /// The endpoint's circuit breaker is open.
    CircuitOpen,
    /// Concurrency or pending-request limits were reached.
    Overloaded,
    /// Every endpoint is ejected or failing its health check.
    NoHealthyEndpoint,
    /// A JWT is missing or invalid.
    Unauthenticated,
    /// The SPIFFE ID or tenant is not permitted.
    Forbidden,
    /// The request head is larger than `limits.max_header_bytes` or has more than
    /// `limits.max_headers` headers.
    RequestHeaderTooLarge,
    /// The request target is longer than `limits.max_uri_bytes`.
    UriTooLong,
    /// The request body is larger than the route's `limits.body` limit.
    PayloadTooLarge,
    /// The request is ambiguous or not proxied (CONNECT, several `Host` headers, a transfer
    /// coding other than `chunked`), or its body could not be read (malformed chunked
    /// framing, the client closed mid-body).
    BadRequest,
    /// The client stopped sending its request body for `limits.body_idle_timeout`.
    RequestBodyTimeout,
    /// The caller (its verified tenant, or the route as a whole) used up its
    /// `inbound.rate_limits` token bucket; the answer carries `Retry-After`.
    RateLimited,
    /// A bug in docmesh (a state its own code should have ruled out); reported with its detail
    /// instead of posing as a network cause.
    Internal,
}

impl Cause {
    /// Every cause, in documentation order.
    pub const ALL: [Cause; 22] = [
        Cause::DnsFailure,
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::TlsPlaintextPeer,
        Cause::TlsUntrustedPeer,
        Cause::IdentityMismatch,
        Cause::TlsRejectedByPeer,
        Cause::UpstreamReset,
        Cause::UpstreamNotHttp2,
        Cause::ResponseTimeout,
        Cause::CircuitOpen,
        Cause::Overloaded,
        Cause::NoHealthyEndpoint,
        Cause::Unauthenticated,
        Cause::Forbidden,
        Cause::RequestHeaderTooLarge,
        Cause::UriTooLong,
        Cause::PayloadTooLarge,
        Cause::BadRequest,
        Cause::RequestBodyTimeout,
        Cause::RateLimited,
        Cause::Internal,
    ];

    /// The stable, kebab-case name used in headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DnsFailure => "dns-failure",
            Cause::ConnectRefused => "connect-refused",
            Cause::ConnectTimeout => "connect-timeout",
            Cause::TlsPlaintextPeer => "tls-plaintext-peer",
            Cause::TlsUntrustedPeer => "tls-untrusted-peer",
            Cause::IdentityMismatch => "identity-mismatch",
            Cause::TlsRejectedByPeer => "tls-rejected-by-peer",
            Cause::UpstreamReset => "upstream-reset",
            Cause::UpstreamNotHttp2 => "upstream-not-http2",
            Cause::ResponseTimeout => "response-timeout",
            Cause::CircuitOpen => "circuit-open",
            Cause::Overloaded => "overloaded",
            Cause::NoHealthyEndpoint => "no-healthy-endpoint",
            Cause::Unauthenticated => "unauthenticated",
            Cause::Forbidden => "forbidden",
            Cause::RequestHeaderTooLarge => "request-header-too-large",
            Cause::UriTooLong => "uri-too-long",
            Cause::PayloadTooLarge => "payload-too-large",
            Cause::BadRequest => "bad-request",
            Cause::RequestBodyTimeout => "request-body-timeout",
            Cause::RateLimited => "rate-limited",
            Cause::Internal => "internal-error",
        }
    }

    /// The HTTP status the proxy answers with for this cause.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Cause::DnsFailure
            | Cause::ConnectRefused
            | Cause::TlsPlaintextPeer
            | Cause::TlsUntrustedPeer
            | Cause::IdentityMismatch
            | Cause::TlsRejectedByPeer
            | Cause::UpstreamReset
            | Cause::UpstreamNotHttp2 => S::BAD_GATEWAY,
            Cause::ConnectTimeout | Cause::ResponseTimeout => S::GATEWAY_TIMEOUT,
            Cause::CircuitOpen | Cause::Overloaded | Cause::NoHealthyEndpoint => {
                S::SERVICE_UNAVAILABLE
            }
            Cause::Unauthenticated => S::UNAUTHORIZED,
            Cause::Forbidden => S::FORBIDDEN,
            Cause::RequestHeaderTooLarge => S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Cause::UriTooLong => S::URI_TOO_LONG,
            Cause::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            Cause::BadRequest => S::BAD_REQUEST,
            Cause::RequestBodyTimeout => S::REQUEST_TIMEOUT,
            Cause::RateLimited => S::TOO_MANY_REQUESTS,
            Cause::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure produced by the proxy, with the operator-facing detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}: {detail}")]
pub struct ProxyError {
    /// What kind of failure this is.
    pub cause: Cause,
    /// What failed, where, and what to check; written for the operator.
    pub detail: String,
    /// How many upstream attempts the request took before this failure, when the retry layer
    /// ran (for the access log; travels as [`Attempts`] on the synthesized response).
    pub attempts: Option<u32>,
}

impl ProxyError {
    /// A failure of the given cause with an operator-facing detail.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Self {
        ProxyError {
            cause,
            detail: detail.into(),
            attempts: None,
        }
    }
}

/// The cause and detail of a response this proxy synthesized; in the response extensions, so
/// the access log and metrics read them without parsing the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthesized {
    /// Why the proxy answered itself.
    pub cause: Cause,
    /// The operator-facing detail (the body's `detail` field).
    pub detail: String,
}

/// Number of upstream attempts a response (relayed or synthesized) took; in the response
/// extensions, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// Which side of the proxy synthesized a response (the `hop` field of the error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The sidecar next to the calling app (towards the service).
    Outbound,
    /// The sidecar next to the called app (towards the app).
    Inbound,
}

impl Hop {
    /// `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Outbound => "outbound",
            Hop::Inbound => "inbound",
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    cause: &'static str,
    status: u16,
    hop: &'static str,
    detail: &'a str,
    trace_id: Option<&'a str>,
}

impl ProxyError {
    /// The response the proxy sends for this failure: the cause's status, a
    /// `docmesh-error: <cause>` header and the JSON body
    /// `{"cause","status","hop","detail","trace_id"}`. `trace_id` is the trace of the request
    /// at this hop (the body is serialized once, here).
    pub fn to_response(&self, hop: Hop, trace_id: Option<&str>) -> http::Response<Full<Bytes>> {
        let mut resp = error_response(self.cause, &self.detail, hop, trace_id);
        if let Some(n) = self.attempts {
            resp.extensions_mut().insert(Attempts(n));
        }
        resp
    }
}

/// Builds a synthesized error response for `cause` (see [`ProxyError::to_response`]); the only
/// place an error response is built (for the data path, limits and authorization alike; a
/// `401` also carries `WWW-Authenticate: Bearer`). The response carries [`Synthesized`] in its extensions
/// and an exact `content-length`.
pub fn error_response(
    cause: Cause,
    detail: &str,
    hop: Hop,
    trace_id: Option<&str>,
) -> http::Response<Full<Bytes>> {
    let status = cause.status();
    let body = ErrorBody {
        cause: cause.as_str(),
        status: status.as_u16(),
        hop: hop.as_str(),
        detail,
        trace_id,
    };
    // Serializing a struct of strings and integers cannot fail; fall back to an empty body.
    let mut json = serde_json::to_vec(&body).unwrap_or_default();
    json.push(b'\n');
    let len = json.len();
    let mut resp = http::Response::new(Full::new(Bytes::from(json)));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(Synthesized {
        cause,
        detail: detail.to_owned(),
    });
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, http::HeaderValue::from_static(cause.as_str()));
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if cause == Cause::Unauthenticated {
        // RFC 9110 §15.5.2: a 401 names the scheme the client should use.
        h.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn synthesized_response_carries_cause_header_and_json_body() {
        use http_body_util::BodyExt;
        let e = ProxyError::new(Cause::IdentityMismatch, "expected \"a\", got b");
        let resp = e.to_response(Hop::Outbound, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[ERROR_HEADER], "identity-mismatch");
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["cause"], "identity-mismatch");
        assert_eq!(v["status"], 502);
        assert_eq!(v["hop"], "outbound");
        assert_eq!(v["detail"], "expected \"a\", got b");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let none = error_response(Cause::Forbidden, "x", Hop::Inbound, None);
        let body = none.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["trace_id"].is_null());
        assert_eq!(v["status"], 403);
    }

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut names: Vec<_> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Cause::ALL.len());
        assert!(names.iter().all(|n| n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')));
    }

    #[test]
    fn synthesized_response_carries_the_attempt_count() {
        let mut e = ProxyError::new(Cause::ConnectRefused, "nothing listens");
        let r = e.to_response(Hop::Outbound, None);
        assert_eq!(r.extensions().get::<Attempts>(), None);
        e.attempts = Some(3);
        let r = e.to_response(Hop::Outbound, None);
        assert_eq!(r.extensions().get::<Attempts>(), Some(&Attempts(3)));
        assert_eq!(r.status(), 502);
    }

    #[tokio::test]
    async fn synthesized_response_names_its_cause_and_length_without_parsing() {
        use http_body_util::BodyExt;
        let e = ProxyError::new(Cause::ConnectRefused, "nothing listens at 10.0.0.5:80");
        let resp = e.to_response(Hop::Inbound, Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(
            resp.extensions().get::<Synthesized>(),
            Some(&Synthesized {
                cause: Cause::ConnectRefused,
                detail: "nothing listens at 10.0.0.5:80".into(),
            })
        );
        let len: usize = resp.headers()[http::header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), len);
        assert!(body.ends_with(b"}\n"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["hop"], "inbound");
    }

    #[test]
    fn statuses_follow_the_design_table() {
        assert_eq!(Cause::ConnectRefused.status(), 502);
        assert_eq!(Cause::ConnectTimeout.status(), 504);
        assert_eq!(Cause::CircuitOpen.status(), 503);
        assert_eq!(Cause::Unauthenticated.status(), 401);
        assert_eq!(Cause::Forbidden.status(), 403);
    }
}
