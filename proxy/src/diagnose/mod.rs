//! `docmesh-proxy diagnose`: walk the path to a service step by step — DNS, TCP, TLS with this
//! proxy's SVID, the peer's SPIFFE ID, one HTTP request — timing each step, and at the first
//! failure name the cause and what to check.
//!
//! It tells apart: a name that does not resolve, a closed port, dropped packets, a plaintext
//! peer, an untrusted chain, a peer that rejects our SVID, the wrong identity, authorization
//! refused by the peer's docmesh (401/403 with `docmesh-error`), an app refusing by itself, and
//! an upstream answering 5xx (from the peer's docmesh, or from the app).

pub mod advice;
pub mod command;
pub mod http;
pub mod net;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

pub use report::{Finding, Report, Step, StepStatus};

use crate::config::observability::TracingConfig;
use crate::observe::trace::propagate;

/// Errors that stop `diagnose` before it can walk the path (bad arguments or config).
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// The target is neither a configured service nor a valid URL.
    #[error("{0:?} is neither a service in the config nor an http(s)://host:port/path URL; check the name against `outbound.services`")]
    UnknownTarget(String),
    /// The URL could not be used.
    #[error("bad URL {url:?}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target as the operator named it (service name or URL).
    pub label: String,
    /// Mesh hop with mTLS (`https`) or plain HTTP (`http`, e.g. to check an app directly).
    pub tls: bool,
    /// Host name or IP literal.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path (and query) of the HTTP request: the health check path, else `/`.
    pub path: String,
    /// The SPIFFE ID the peer must present, when known.
    pub expected_id: Option<String>,
    /// The exact body a healthy answer carries (OnlyOffice `/healthcheck` answers `true`).
    pub expect_body: Option<String>,
}

impl Target {
    /// A target from an `https://host:port/path` (mesh hop, mTLS) or `http://...` URL.
    pub fn from_url(url: &str) -> Result<Target, DiagnoseError> {
        let bad = |why: &str| DiagnoseError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: ::http::Uri = url
            .parse()
            .map_err(|e: ::http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https (mesh hop) or http")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            label: url.to_owned(),
            tls,
            host,
            port,
            path,
            expected_id: None,
            expect_body: None,
        })
    }

    /// The URL probed.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// This proxy's TLS client side for the mesh hop.
#[derive(Clone)]
pub struct TlsClient {
    /// Client config presenting our SVID and trusting our bundles. It should accept any
    /// trusted SVID so that the identity step can show which ID the peer presented.
    pub config: Arc<rustls::ClientConfig>,
    /// Our own SPIFFE ID (shown in authorization findings).
    pub our_id: Option<String>,
}

/// The SPIFFE ID of the peer's leaf (strict X.509-SVID rules of `docmesh_certs`).
fn peer_id(leaf: &CertificateDer<'_>) -> Result<String, String> {
    docmesh_certs::check_leaf(leaf)
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// DNS resolution.
    pub dns: Duration,
    /// TCP connect (per address).
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
    /// Response headers and body.
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            dns: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            response: Duration::from_secs(10),
        }
    }
}

/// Walks the path to `target` and reports every step; stops at the first failure.
pub async fn diagnose(target: &Target, tls: Option<&TlsClient>, t: &Timeouts) -> Report {
    let mut headers = ::http::HeaderMap::new();
    let trace = propagate(&mut headers, &TracingConfig::default());
    let mut r = Report::new(
        &target.label,
        &target.url(),
        target.expected_id.as_deref(),
        trace.trace_id.to_string(),
    );

    let start = Instant::now();
    let addrs = match net::resolve(&target.host, target.port, t.dns).await {
        Ok(a) => a,
        Err(f) => {
            r.fail(
                "dns",
                start.elapsed(),
                f,
                &["tcp", "tls", "identity", "http"],
            );
            return r;
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.ok(
        "dns",
        start.elapsed(),
        format!("{} -> {}", target.host, list.join(", ")),
    );

    let start = Instant::now();
    let mut first_failure = None;
    let mut tcp = None;
    for addr in &addrs {
        match net::connect(*addr, t.connect).await {
            Ok(s) => {
                tcp = Some((s, *addr));
                break;
            }
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
    }
    let Some((tcp, addr)) = tcp else {
        let f = first_failure.unwrap_or_else(|| advice::dns_failure(&target.host, "no address"));
        r.fail("tcp", start.elapsed(), f, &["tls", "identity", "http"]);
        return r;
    };
    r.ok("tcp", start.elapsed(), format!("connected to {addr}"));

    if !target.tls {
        r.skip("tls", "plain http:// URL: no mesh hop");
        r.skip("identity", "plain http:// URL: no mesh hop");
        http_step(&mut r, tcp, target, headers, None, t).await;
        return r;
    }
    let Some(client) = tls else {
        let f = Finding::new(
            "config",
            "no SVID loaded, so the mTLS hop cannot be tried",
            &["the [identity] section of the config and that its files (or the Workload API socket) are readable"],
        );
        r.fail("tls", Duration::ZERO, f, &["identity", "http"]);
        return r;
    };

    let start = Instant::now();
    let mut hs =
        match net::handshake(tcp, client.config.clone(), &target.host, addr, t.handshake).await {
            Ok(h) => h,
            Err(f) if f.cause == crate::errors::Cause::IdentityMismatch.as_str() => {
                r.ok(
                    "tls",
                    start.elapsed(),
                    "chain trusted; the identity check failed",
                );
                r.fail("identity", Duration::ZERO, f, &["http"]);
                return r;
            }
            Err(f) => {
                r.fail("tls", start.elapsed(), f, &["identity", "http"]);
                return r;
            }
        };
    // The peer's verdict on our certificate comes about one round trip after our side of
    // the handshake: wait twice the handshake's time (at least 50 ms, at most 1 s) unless a
    // session ticket says it was accepted.
    let wait = (start.elapsed() * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    if let Err(f) = net::peer_verdict(&mut hs.stream, wait, addr).await {
        r.fail("tls", start.elapsed(), f, &["identity", "http"]);
        return r;
    }
    r.ok(
        "tls",
        start.elapsed(),
        format!(
            "TLS 1.3 with our SVID, chain trusted, ALPN {}",
            hs.alpn.as_deref().unwrap_or("none")
        ),
    );

    let start = Instant::now();
    let peer = match hs.peer_chain.first().map(peer_id) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            let f = advice::untrusted_peer(&format!(
                "the peer's certificate is not an X.509-SVID: {e}"
            ));
            r.fail("identity", start.elapsed(), f, &["http"]);
            return r;
        }
        None => {
            let f = advice::untrusted_peer("the peer presented no certificate");
            r.fail("identity", start.elapsed(), f, &["http"]);
            return r;
        }
    };
    match &target.expected_id {
        Some(want) if *want != peer => {
            let f = advice::identity_mismatch(want, &peer);
            r.fail("identity", start.elapsed(), f, &["http"]);
            return r;
        }
        Some(_) => r.ok("identity", start.elapsed(), format!("{peer} (as expected)")),
        None => r.ok(
            "identity",
            start.elapsed(),
            format!("{peer} (no expected ID configured: not checked)"),
        ),
    }
    http_step(
        &mut r,
        hs.stream,
        target,
        headers,
        client.our_id.as_deref(),
        t,
    )
    .await;
    r
}

async fn http_step<S>(
    r: &mut Report,
    io: S,
    target: &Target,
    headers: ::http::HeaderMap,
    our_id: Option<&str>,
    t: &Timeouts,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let host = format!("{}:{}", target.host, target.port);
    let answer = match http::request(io, &host, &target.path, headers, t.response).await {
        Ok(a) => a,
        Err(f) => {
            r.fail("http", start.elapsed(), f, &[]);
            return;
        }
    };
    match http::verdict(&answer, target.expect_body.as_deref(), our_id) {
        Ok(summary) => r.ok(
            "http",
            start.elapsed(),
            format!("GET {} -> {summary}", target.path),
        ),
        Err(f) => r.fail("http", start.elapsed(), f, &[]),
    }
}
