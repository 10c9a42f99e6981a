//! Transparent-mode decisions with a given original destination (the iptables redirect itself
//! is tested end to end in the network-namespace tests of the `tests` crate).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::config::outbound::ServiceConfig;

const WAIT: Duration = Duration::from_secs(10);

fn outbound(cfg: OutboundConfig) -> (Outbound, Metrics) {
    let metrics = Metrics::new();
    let o = Outbound::new(&cfg, MeshClient::Plaintext, Lifecycle::new(), &metrics).unwrap();
    (o, metrics)
}

/// A connected pair: the app's end and the proxy's accepted end.
async fn app_connection() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (proxy, _) = l.accept().await.unwrap();
    (app, proxy)
}

/// A server that writes `banner` on accept, then echoes.
async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(banner).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn destinations_outside_the_mesh_pass_through_as_plain_tcp() {
    let dst = banner_server(b"+OK ready\r\n").await;
    let (o, _) = outbound(OutboundConfig::default());
    let (mut app, proxy) = app_connection().await;
    tokio::spawn(redirected(o.shared.clone(), proxy, dst));
    let mut buf = [0u8; 11];
    tokio::time::timeout(WAIT, app.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"+OK ready\r\n");
    app.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, app.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn destinations_outside_the_mesh_are_denied_when_configured() {
    let dst = banner_server(b"+OK ready\r\n").await;
    let cfg = OutboundConfig {
        unknown_destinations: UnknownDestinations::Deny,
        ..OutboundConfig::default()
    };
    let (o, metrics) = outbound(cfg);
    let (mut app, proxy) = app_connection().await;
    tokio::spawn(redirected(o.shared.clone(), proxy, dst));
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, app.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "denied connection got {buf:?}"
    );
    assert!(metrics
        .encode()
        .unwrap()
        .contains("docmesh_outbound_denied_total 1"));
}

#[tokio::test]
async fn declared_opaque_ports_skip_detection() {
    // The "mesh service" is reached over the plaintext hop here; what matters is that its
    // banner arrives although detection would wait an hour.
    let dst = banner_server(b"220 smtp ready\r\n").await;
    let cfg = OutboundConfig {
        detect_timeout: Duration::from_secs(3600),
        opaque_ports: vec![dst.port()],
        services: vec![ServiceConfig {
            name: "mail".into(),
            addresses: vec![dst.to_string()],
            spiffe_id: "spiffe://example.org/mail".into(),
            ..ServiceConfig::default()
        }],
        ..OutboundConfig::default()
    };
    let (o, metrics) = outbound(cfg);
    let (mut app, proxy) = app_connection().await;
    tokio::spawn(redirected(o.shared.clone(), proxy, dst));
    let mut buf = [0u8; 16];
    tokio::time::timeout(WAIT, app.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"220 smtp ready\r\n");
    assert!(metrics
        .encode()
        .unwrap()
        .contains("docmesh_outbound_detect_timeouts_total 0"));
}
