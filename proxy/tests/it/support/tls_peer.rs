//! A docmesh-like mTLS peer for the `diagnose` tests.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{CertificateAuthority, IssuedSvid};
use docmesh_certs::tls::SpiffeClientVerifier;

/// A docmesh-like inbound on 127.0.0.1: TLS 1.3, presents `server`, requires a client SVID
/// that `trusted`'s bundle verifies, and answers `200` with the body `true` to any request.
/// Returns its port.
pub async fn start_true_peer(trusted: &CertificateAuthority, server: &IssuedSvid) -> u16 {
    let bundles = Arc::new(arc_swap::ArcSwap::from_pointee(trusted.bundle()));
    let config = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundles)))
        .with_single_cert(server.chain.clone(), server.private_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue")
                        .await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    port
}
