//! The one failure classifier: maps every failure of an upstream call (TCP connect, TLS
//! handshake, peer identity, HTTP exchange) to a [`Cause`] with a detail written for the
//! operator (what failed, where, what to check). The data path (`net`, `outbound::connect`,
//! `http::pool`, `resilience`) and `diagnose` call these functions, so they name the same cause
//! for the same failure.
//!
//! Classification is typed (`io::ErrorKind`, `rustls::Error`, the certs crate's `SvidError`,
//! `h2::Reason`, `hyper::Error`). Two facts only exist as text, each read by one function whose
//! test pins the text: hyper-util's resolver failure ([`is_dns_error`]) and a TLS alert that
//! tokio-rustls reports as an `io::Error` message ([`alert_in_text`]).

use std::error::Error as StdError;
use std::io;

use docmesh_certs::svid::SvidError;

use crate::errors::{Cause, ProxyError};

/// A failed attempt: the error the client will see, and whether the upstream certainly received
/// nothing of the request (which makes even a non-idempotent request safe to retry).
#[derive(Debug, Clone)]
pub struct AttemptError {
    /// Cause and operator-facing detail.
    pub error: ProxyError,
    /// `true` when none of the request reached the upstream.
    pub unsent: bool,
}

impl AttemptError {
    /// An error from which "nothing was sent" follows from the cause alone.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Self {
        ProxyError::new(cause, detail).into()
    }
}

impl From<ProxyError> for AttemptError {
    fn from(error: ProxyError) -> Self {
        let unsent = before_any_byte(error.cause);
        AttemptError { error, unsent }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl StdError for AttemptError {}

/// Causes that are decided before any byte of the request could be written.
pub fn before_any_byte(cause: Cause) -> bool {
    !matches!(cause, Cause::UpstreamReset | Cause::ResponseTimeout)
}

/// Iterates over an error and its sources. `io::Error::source()` skips the error it wraps, so
/// the wrapped error is visited explicitly (connectors often return `io::Error::other(..)`).
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| match e.downcast_ref::<io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

/// Classifies a failure to establish a connection (TCP connect, DNS, TLS handshake, peer
/// identity) to `upstream` (e.g. `documentserver (10.0.0.5:80)`). Used by the HTTP connector
/// path and by the opaque TCP path. A [`ProxyError`] anywhere in the chain wins.
pub fn connect_error(err: &(dyn StdError + 'static), upstream: &str) -> ProxyError {
    for e in chain(err) {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return p.clone();
        }
        if let Some(a) = e.downcast_ref::<AttemptError>() {
            return a.error.clone();
        }
    }
    for e in chain(err) {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_error(tls, upstream);
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return connect_timeout(upstream);
        }
    }
    if chain(err).any(is_dns_error) {
        return ProxyError::new(
            Cause::DnsFailure,
            format!(
                "the name of {upstream} did not resolve ({}); check the service's DNS name in the \
                 config and the resolver (/etc/resolv.conf, cluster DNS)",
                innermost(err)
            ),
        );
    }
    for e in chain(err) {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_connect_error(io, upstream);
        }
    }
    ProxyError::new(
        Cause::ConnectRefused,
        format!("could not connect to {upstream}: {}", innermost(err)),
    )
}

fn connect_timeout(upstream: &str) -> ProxyError {
    ProxyError::new(
        Cause::ConnectTimeout,
        format!(
            "no TCP connection to {upstream} within the connect timeout; packets are dropped on \
             the way: check network policies, firewalls and routes between the two hosts, and \
             that the address is current"
        ),
    )
}

/// Classifies an I/O error of a TCP connect.
pub fn io_connect_error(err: &io::Error, upstream: &str) -> ProxyError {
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return tls_error(tls, upstream);
    }
    match err.kind() {
        io::ErrorKind::TimedOut => connect_timeout(upstream),
        io::ErrorKind::ConnectionRefused => ProxyError::new(
            Cause::ConnectRefused,
            format!(
                "connection to {upstream} refused: nothing listens there. Check that the service \
                 (and its sidecar's inbound listener) is running and bound to that address and \
                 port, not only to 127.0.0.1 or to IPv6 `::`"
            ),
        ),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ProxyError::new(
            Cause::UpstreamReset,
            format!(
                "{upstream} closed the connection during setup ({err}); check the upstream's \
                 logs and whether it expects TLS or plaintext on that port"
            ),
        ),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ProxyError::new(
            Cause::ConnectTimeout,
            format!("{upstream} is unreachable ({err}); check routes and network policies"),
        ),
        _ => ProxyError::new(
            Cause::ConnectRefused,
            format!("could not connect to {upstream}: {err}"),
        ),
    }
}

/// Classifies a TLS failure on the mesh hop.
pub fn tls_error(err: &rustls::Error, upstream: &str) -> ProxyError {
    use rustls::Error as E;
    match err {
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => ProxyError::new(
            Cause::TlsPlaintextPeer,
            format!(
                "{upstream} answered the TLS handshake with something that is not TLS ({err}): \
                     it speaks plaintext on that port. Is its docmesh sidecar missing, or is the \
                     port excluded from redirection?"
            ),
        ),
        E::AlertReceived(alert) => rejected_by_peer(&format!("{alert:?}"), upstream),
        _ => match docmesh_certs::tls::svid_error_of(err) {
            Some(SvidError::IdentityMismatch { expected, got }) => ProxyError::new(
                Cause::IdentityMismatch,
                format!(
                    "{upstream} presented a valid SVID for {got}, expected {expected}; check the \
                     service's `spiffe_id` in outbound.services, or which workload really \
                     listens at that address (`docmesh-certs inspect`)"
                ),
            ),
            Some(svid) => ProxyError::new(
                Cause::TlsUntrustedPeer,
                format!(
                    "the SVID of {upstream} is not trusted ({svid}); check that both sidecars \
                     share a trust bundle (during a CA rotation the bundle must hold the old and \
                     the new root) and that the peer's SVID is valid"
                ),
            ),
            None if matches!(
                err,
                E::InvalidCertificate(_) | E::NoCertificatesPresented | E::UnsupportedNameType
            ) =>
            {
                ProxyError::new(
                    Cause::TlsUntrustedPeer,
                    format!(
                        "{upstream} presented a certificate our trust bundle does not accept \
                         ({err}); check that both sidecars share a trust bundle (during a CA \
                         rotation the bundle must hold the old and the new root) and that the \
                         peer's SVID is valid"
                    ),
                )
            }
            None => ProxyError::new(
                Cause::UpstreamReset,
                format!("TLS handshake with {upstream} failed ({err}); check both sidecars' logs"),
            ),
        },
    }
}

fn rejected_by_peer(alert: &str, upstream: &str) -> ProxyError {
    ProxyError::new(
        Cause::TlsRejectedByPeer,
        format!(
            "{upstream} rejected our TLS client certificate (alert {alert}): our SVID may be \
             expired, or the peer's bundle does not trust our trust domain"
        ),
    )
}

/// Whether `e` is hyper-util's resolver failure, which exists only as text
/// (`dns error: ...`); the one place that text is read.
pub fn is_dns_error(e: &(dyn StdError + 'static)) -> bool {
    e.to_string().starts_with("dns error")
}

/// The name of a fatal TLS alert that tokio-rustls reports only as the text of an `io::Error`
/// (`received fatal alert: <name>`), as it does when the peer rejects our client SVID after
/// our side of a TLS 1.3 handshake finished; the one place that text is read.
pub fn alert_in_text(e: &(dyn StdError + 'static)) -> Option<String> {
    let io = e.downcast_ref::<io::Error>()?;
    let text = io.get_ref()?.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    Some(name.to_owned())
}

/// How a peer showed that it does not speak HTTP/2: the HTTP/1.x status line it answered the
/// preface with, or `None` when it closed the connection without a byte.
#[derive(Debug, Clone)]
pub struct NotHttp2Answer {
    /// The first line the peer sent, lossily decoded, at most 64 bytes.
    pub status_line: Option<String>,
}

/// How [`NotHttp2Answer`]'s message starts. The HTTP/2 connection keeps only the kind and the
/// message of an I/O error, so [`not_http2_in_text`] recognises the answer by this text (set by
/// `http::h2_probe`).
pub const NOT_HTTP2: &str = "the peer does not speak HTTP/2: ";

impl std::fmt::Display for NotHttp2Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status_line {
            Some(line) => write!(
                f,
                "{NOT_HTTP2}it answered the connection preface with `{line}`"
            ),
            None => write!(
                f,
                "{NOT_HTTP2}it closed the connection after the preface without a byte (an \
                 HTTP/2 server answers with its SETTINGS first)"
            ),
        }
    }
}

impl std::error::Error for NotHttp2Answer {}

/// The message of a [`NotHttp2Answer`], which the HTTP/2 connection
/// passes on as the text of an `io::Error` only; the one place that text is read.
pub fn not_http2_in_text(e: &(dyn StdError + 'static)) -> Option<String> {
    let text = match e.downcast_ref::<io::Error>() {
        Some(io) => io.get_ref().map(ToString::to_string)?,
        None => e.downcast_ref::<NotHttp2Answer>()?.to_string(),
    };
    text.starts_with(NOT_HTTP2).then_some(text)
}

/// Classifies an error of an HTTP exchange through a hyper(-util) client. Connect-phase errors
/// go to [`connect_error`]; HTTP/2 `REFUSED_STREAM` and requests cancelled before they were
/// written are marked unsent (safe to retry even when not idempotent).
pub fn http_error(
    err: &(dyn StdError + 'static),
    is_connect: bool,
    upstream: &str,
) -> AttemptError {
    if is_connect {
        return connect_error(err, upstream).into();
    }
    for e in chain(err) {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return p.clone().into();
        }
        if let Some(a) = e.downcast_ref::<AttemptError>() {
            return a.clone();
        }
    }
    for e in chain(err) {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return AttemptError {
                    error: ProxyError::new(
                        Cause::UpstreamReset,
                        format!(
                            "{upstream} refused the HTTP/2 stream before processing it \
                             (REFUSED_STREAM); it is at its concurrent-stream limit or shutting down"
                        ),
                    ),
                    unsent: true,
                };
            }
        }
        if let Some(answer) = not_http2_in_text(e) {
            return ProxyError::new(
                Cause::UpstreamNotHttp2,
                format!(
                    "{upstream}: {answer}. Call it with HTTP/1.1, or make the app accept HTTP/2 \
                     without TLS (h2c prior knowledge)"
                ),
            )
            .into();
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_library() && h2.reason() == Some(h2::Reason::FRAME_SIZE_ERROR) {
                return ProxyError::new(
                    Cause::UpstreamNotHttp2,
                    format!(
                        "{upstream} does not speak HTTP/2: it answered the HTTP/2 connection \
                         preface with bytes that are no HTTP/2 frame ({h2}), most likely an \
                         HTTP/1.1 response. Call it with HTTP/1.1, or make the app accept \
                         HTTP/2 without TLS (h2c prior knowledge)"
                    ),
                )
                .into();
            }
        }
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return rejected_by_peer(&format!("{a:?}"), upstream).into();
        }
        if let Some(a) = alert_in_text(e) {
            return rejected_by_peer(&a, upstream).into();
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return ProxyError::new(
                    Cause::ResponseTimeout,
                    format!("no complete response from {upstream} in time ({h})"),
                )
                .into();
            }
            if h.is_canceled() {
                return AttemptError {
                    error: reset(
                        upstream,
                        "the connection closed before the request was written",
                    ),
                    unsent: true,
                };
            }
        }
    }
    AttemptError {
        error: reset(upstream, &innermost(err)),
        unsent: false,
    }
}

fn reset(upstream: &str, what: &str) -> ProxyError {
    ProxyError::new(
        Cause::UpstreamReset,
        format!(
            "{upstream} closed or reset the connection before a complete response ({what}); \
             check the upstream's logs for crashes or restarts, and that its keep-alive timeout \
             is longer than docmesh's `pool_idle`"
        ),
    )
}

/// The innermost message of an error chain (usually the most specific one).
fn innermost(err: &(dyn StdError + 'static)) -> String {
    chain(err).last().map(|e| e.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_map_to_causes() {
        let up = "ds (127.0.0.1:1)";
        let c = |k| io_connect_error(&io::Error::from(k), up).cause;
        assert_eq!(c(io::ErrorKind::ConnectionRefused), Cause::ConnectRefused);
        assert_eq!(c(io::ErrorKind::TimedOut), Cause::ConnectTimeout);
        assert_eq!(c(io::ErrorKind::ConnectionReset), Cause::UpstreamReset);
        let plain = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(connect_error(&plain, up).cause, Cause::TlsPlaintextPeer);
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(tls_error(&untrusted, up).cause, Cause::TlsUntrustedPeer);
        assert!(connect_error(&plain, up).detail.contains(up));
    }

    #[test]
    fn identity_mismatch_is_read_from_the_typed_svid_error() {
        let id = |s: &str| s.parse::<docmesh_certs::SpiffeId>().unwrap();
        let svid = SvidError::IdentityMismatch {
            expected: id("spiffe://onlyoffice.local/ns/oo/sa/docservice"),
            got: id("spiffe://onlyoffice.local/ns/oo/sa/converter"),
        };
        let err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(svid)),
        ));
        let got = tls_error(&err, "ds");
        assert_eq!(got.cause, Cause::IdentityMismatch, "{got}");
        assert!(got.detail.contains("sa/converter"), "{got}");
        let other = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(io::Error::other("expected nothing"))),
        ));
        assert_eq!(tls_error(&other, "ds").cause, Cause::TlsUntrustedPeer);
    }

    #[test]
    fn the_two_texts_read_are_pinned() {
        // hyper-util's resolver error and tokio-rustls's alert message: if a dependency update
        // changes these texts, this test names the function to fix.
        let dns = io::Error::other("dns error: failed to lookup address information");
        assert!(is_dns_error(&dns));
        assert_eq!(connect_error(&dns, "ds").cause, Cause::DnsFailure);
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired),
        );
        let as_text = io::Error::new(io::ErrorKind::InvalidData, alert.to_string());
        assert_eq!(
            alert_in_text(&as_text).as_deref(),
            Some("CertificateExpired")
        );
        // The HTTP/2 connection keeps an I/O error's kind and message only.
        let answer = NotHttp2Answer { status_line: None };
        let as_text = io::Error::new(io::ErrorKind::InvalidData, answer.to_string());
        let e = http_error(&as_text, false, "the app").error;
        assert_eq!(e.cause, Cause::UpstreamNotHttp2, "{}", e.detail);
    }

    #[test]
    fn unreachable_hosts_are_connect_timeouts() {
        let e = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(io_connect_error(&e, "ds").cause, Cause::ConnectTimeout);
    }

    /// An HTTP/2 client against a real HTTP/1.1-only server (a socket answering the preface
    /// with an HTTP/1.1 400, as hyper or nginx do) gets `upstream-not-http2`.
    #[tokio::test]
    async fn http2_to_an_http1_server_is_upstream_not_http2() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            // Like a real server, keep the socket open until the client hangs up.
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        let err = tx.send_request(req).await.unwrap_err();
        let got = http_error(&err, false, "the app at 127.0.0.1").error;
        assert_eq!(got.cause, Cause::UpstreamNotHttp2, "{got}");
        assert!(got.detail.contains("HTTP/1.1"), "{got}");
    }

    #[test]
    fn proxy_errors_in_the_chain_win() {
        let inner = ProxyError::new(Cause::IdentityMismatch, "expected a got b");
        let io = io::Error::other(inner);
        let got = connect_error(&io, "x");
        assert_eq!(got.cause, Cause::IdentityMismatch);
        assert!(AttemptError::from(got).unsent);
        assert!(!AttemptError::new(Cause::UpstreamReset, "x").unsent);
    }
}
