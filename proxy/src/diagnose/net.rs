//! The network steps: DNS resolution, TCP connect, TLS handshake.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::advice;
use super::report::Finding;
use crate::classify::{io_connect_error, tls_error};

/// Resolves `host:port`; an IP literal resolves to itself.
pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Finding> {
    if let Ok(ip) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(advice::dns_timeout(host, timeout)),
        Ok(Err(e)) => Err(advice::dns_failure(host, &e.to_string())),
        Ok(Ok(addrs)) => {
            let mut v: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            if v.is_empty() {
                Err(advice::dns_failure(
                    host,
                    "the resolver returned no address",
                ))
            } else {
                Ok(v)
            }
        }
    }
}

/// Connects to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Finding> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(advice::connect_timeout(addr, timeout)),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(advice::from_error(&io_connect_error(&e, &addr.to_string()))),
    }
}

/// A completed handshake: the stream and the peer's chain (leaf first).
pub struct Handshake {
    /// The TLS stream, ready for the HTTP step.
    pub stream: TlsStream<TcpStream>,
    /// The certificates the peer presented.
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
}

/// Runs the TLS handshake with `config` over `tcp` within `timeout`.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    host: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Handshake, Finding> {
    let name = ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(advice::tls_failed(&format!(
            "no handshake within {timeout:?}: the peer accepted the connection but never answered the ClientHello (a plaintext server waiting for its own protocol, or a stuck peer)"
        ))),
        Ok(Err(e)) => Err(classify_tls(&e, addr)),
        Ok(Ok(stream)) => {
            let (_, conn) = stream.get_ref();
            let peer_chain = conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let alpn = conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            Ok(Handshake {
                stream,
                peer_chain,
                alpn,
            })
        }
    }
}

/// Names the cause of a failed handshake with the data path's own classification.
fn classify_tls(e: &io::Error, addr: SocketAddr) -> Finding {
    let upstream = addr.to_string();
    let err = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls_error(tls, &upstream),
        None => io_connect_error(e, &upstream),
    };
    advice::from_error(&err)
}

/// Waits for the peer's verdict on our client certificate. With TLS 1.3 the client's handshake
/// ends before the server has checked the client's certificate: a server that rejects it sends
/// its alert about one round trip later and closes, and a request written in between can meet
/// the close (a reset) instead of the alert. So before the HTTP step, read until the verdict
/// is known: a session ticket (the server sends tickets only after accepting the client's
/// Finished, as rustls and docmesh do) or `wait` passing mean accepted; an alert means
/// rejected; a reset or close is classified as the data path would.
pub async fn peer_verdict(
    stream: &mut TlsStream<TcpStream>,
    wait: Duration,
    addr: SocketAddr,
) -> Result<(), Finding> {
    use tokio::io::AsyncReadExt;
    const STEP: Duration = Duration::from_millis(2);
    let deadline = tokio::time::Instant::now() + wait;
    let mut byte = [0u8; 1];
    while stream.get_ref().1.tls13_tickets_received() == 0 {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        // Cancelling a read of a rustls stream loses nothing: decrypted data stays buffered.
        match tokio::time::timeout(STEP.min(deadline - now), stream.read(&mut byte)).await {
            Err(_) => continue,
            Ok(Ok(0)) => {
                return Err(advice::upstream_reset(&format!(
                    "{addr} closed the connection right after the TLS handshake, before any \
                     request"
                )))
            }
            Ok(Ok(_)) => {
                return Err(advice::unexpected_answer(format!(
                    "{addr} sent data before the request: not an HTTP server (a \
                     server-speaks-first protocol?)"
                )))
            }
            Ok(Err(e)) => {
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                if let Some(rustls::Error::AlertReceived(alert)) = inner {
                    return Err(advice::rejected_by_peer(&format!(
                        "alert {alert:?} after the handshake, when the peer checked our \
                         certificate"
                    )));
                }
                return Err(classify_tls(&e, addr));
            }
        }
    }
    Ok(())
}
