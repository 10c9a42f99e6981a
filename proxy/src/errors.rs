//! The causes of every response the proxy synthesizes (the "502 taxonomy").
//!
//! Each failure the proxy produces maps to exactly one [`Cause`]; the cause travels in the
//! `docmesh-error` header, in the JSON body, in the access log and as a metric label, so an
//! operator never has to guess why a call failed.

use std::fmt;

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
    /// The upstream closed or reset before a complete response.
    UpstreamReset,
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
}

impl Cause {
    /// Every cause, in documentation order.
    pub const ALL: [Cause; 13] = [
        Cause::DnsFailure,
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::TlsPlaintextPeer,
        Cause::TlsUntrustedPeer,
        Cause::IdentityMismatch,
        Cause::UpstreamReset,
        Cause::ResponseTimeout,
        Cause::CircuitOpen,
        Cause::Overloaded,
        Cause::NoHealthyEndpoint,
        Cause::Unauthenticated,
        Cause::Forbidden,
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
            Cause::UpstreamReset => "upstream-reset",
            Cause::ResponseTimeout => "response-timeout",
            Cause::CircuitOpen => "circuit-open",
            Cause::Overloaded => "overloaded",
            Cause::NoHealthyEndpoint => "no-healthy-endpoint",
            Cause::Unauthenticated => "unauthenticated",
            Cause::Forbidden => "forbidden",
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
            | Cause::UpstreamReset => S::BAD_GATEWAY,
            Cause::ConnectTimeout | Cause::ResponseTimeout => S::GATEWAY_TIMEOUT,
            Cause::CircuitOpen | Cause::Overloaded | Cause::NoHealthyEndpoint => {
                S::SERVICE_UNAVAILABLE
            }
            Cause::Unauthenticated => S::UNAUTHORIZED,
            Cause::Forbidden => S::FORBIDDEN,
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
}

impl ProxyError {
    /// A failure of the given cause with an operator-facing detail.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Self {
        ProxyError {
            cause,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut names: Vec<_> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Cause::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
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
