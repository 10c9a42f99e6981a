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
