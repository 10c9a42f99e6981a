//! Every upstream failure maps to its cause and status, with real sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use crate::resilience_support::*;
use bytes::Bytes;
use docmesh_proxy::classify;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::resilience::policy::HealthCheckPolicy;
use http::Method;

fn assert_cause(
    r: Result<(u16, Bytes), docmesh_proxy::errors::ProxyError>,
    cause: Cause,
    status: u16,
) -> String {
    let e = r.expect_err("the stack must fail");
    assert_eq!(e.cause, cause, "{e}");
    assert_eq!(e.cause.status().as_u16(), status);
    e.detail
}

#[tokio::test]
async fn connect_refused_is_502_and_names_the_address() {
    let addr = refusing_addr().await;
    let mut p = policy("documentserver");
    with_route(&mut p, |r| r.retry.max_attempts = 2);
    let s = stack(p, &[addr]);
    let d = assert_cause(get(&s, "/healthcheck").await, Cause::ConnectRefused, 502);
    assert!(
        d.contains(&addr.to_string()) && d.contains("documentserver"),
        "{d}"
    );
    assert!(
        d.contains("2 attempt(s)"),
        "connect failures are retried: {d}"
    );
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let (addr, _fill, _sock) = blackhole_addr().await;
    let mut p = policy("ds");
    with_route(&mut p, |r| {
        r.timeouts.connect = Duration::from_millis(300);
        r.retry.max_attempts = 1;
    });
    let s = stack(p, &[addr]);
    let d = assert_cause(get(&s, "/").await, Cause::ConnectTimeout, 504);
    assert!(d.contains("firewall"), "{d}");
}

#[tokio::test]
async fn dns_failure_is_502() {
    let client = docmesh_proxy::resilience::endpoint::plain_client(&Default::default());
    let req = http::Request::get("http://no-such-service.invalid/")
        .body(docmesh_proxy::resilience::ReplayBody::empty())
        .unwrap();
    let err = client.request(req).await.unwrap_err();
    let e = classify::http_error(
        &err,
        err.is_connect(),
        "converter (no-such-service.invalid:80)",
    );
    assert_eq!(e.error.cause, Cause::DnsFailure, "{}", e.error);
    assert_eq!(e.error.cause.status(), 502);
    assert!(e.unsent);
}

#[tokio::test]
async fn reset_mid_response_is_502_upstream_reset() {
    let up = Upstream::spawn(Kind::ResetMidResponse).await;
    let mut p = policy("ds");
    with_route(&mut p, |r| r.retry.max_attempts = 1);
    let s = stack(p, &[up.addr]);
    let d = assert_cause(get(&s, "/x").await, Cause::UpstreamReset, 502);
    assert!(d.contains("keep-alive"), "{d}");
    assert_eq!(up.counters.requests(), 1);
}

#[tokio::test]
async fn stalled_upstream_is_504_response_timeout() {
    let up = Upstream::spawn(Kind::Stall).await;
    let mut p = policy("ds");
    with_route(&mut p, |r| {
        r.timeouts.response_headers = Some(Duration::from_millis(200));
        r.retry.max_attempts = 1;
    });
    let s = stack(p, &[up.addr]);
    let d = assert_cause(get(&s, "/slow").await, Cause::ResponseTimeout, 504);
    assert!(d.contains("response_headers"), "{d}");
}

#[tokio::test]
async fn limits_give_overloaded_503() {
    let up = Upstream::spawn(Kind::Stall).await;
    let mut p = policy("ds");
    p.limits.max_concurrent = 1;
    p.limits.max_pending = 0;
    with_route(&mut p, |r| {
        r.timeouts.response_headers = Some(Duration::from_secs(30))
    });
    let s = stack(p, &[up.addr]);
    let s2 = s.clone();
    let first = tokio::spawn(async move { get(&s2, "/").await });
    // Wait (bounded) until the first request occupies the only slot at the upstream.
    for _ in 0..200 {
        if up.counters.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.counters.requests(), 1);
    let d = assert_cause(get(&s, "/").await, Cause::Overloaded, 503);
    assert!(d.contains("max_pending"), "{d}");
    assert_eq!(
        up.counters.requests(),
        1,
        "the overloaded request never reached the upstream"
    );
    first.abort();
}

#[tokio::test]
async fn failing_health_check_gives_no_healthy_endpoint_and_recovers() {
    let up = Upstream::spawn(Kind::Ok).await;
    let mut p = policy("documentserver");
    p.health_check = Some(HealthCheckPolicy {
        expect_body: Some("true".into()),
        unhealthy_threshold: 1,
        interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let s = stack(p, &[up.addr]);
    assert_eq!(get(&s, "/").await.unwrap().0, 200);
    up.counters.set_down(true); // /healthcheck now answers 200 `false`
    s.balancer().check_health_now().await;
    let before = up.counters.requests();
    let d = assert_cause(get(&s, "/").await, Cause::NoHealthyEndpoint, 503);
    assert!(d.contains("body `false`, expected `true`"), "{d}");
    assert_eq!(
        up.counters.requests(),
        before,
        "no request went to the unhealthy endpoint"
    );
    up.counters.set_down(false);
    s.balancer().check_health_now().await;
    assert_eq!(get(&s, "/").await.unwrap().0, 200);
}

#[tokio::test]
async fn no_endpoints_at_all_is_no_healthy_endpoint() {
    let s = stack(policy("ds"), &[]);
    let d = assert_cause(
        send(&s, Method::POST, "/", Bytes::from_static(b"x")).await,
        Cause::NoHealthyEndpoint,
        503,
    );
    assert!(d.contains("resolved to nothing"), "{d}");
}

mod tls {
    use super::*;
    use rustls_pki_types::ServerName;
    use tokio::net::TcpStream;

    fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    async fn handshake(addr: std::net::SocketAddr, roots: rustls::RootCertStore) -> std::io::Error {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config(roots));
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map(|_| ())
            .unwrap_err()
    }

    #[tokio::test]
    async fn plaintext_peer_is_tls_plaintext_peer() {
        let up = Upstream::spawn(Kind::Ok).await;
        let err = handshake(up.addr, rustls::RootCertStore::empty()).await;
        let e = classify::connect_error(&err, "ds (peer)");
        assert_eq!(e.cause, Cause::TlsPlaintextPeer, "{e}");
        assert_eq!(e.cause.status(), 502);
        assert!(e.detail.contains("sidecar missing"), "{e}");
    }

    #[tokio::test]
    async fn untrusted_peer_is_tls_untrusted_peer() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = acceptor.accept(s).await;
            }
        });
        let err = handshake(addr, rustls::RootCertStore::empty()).await;
        let e = classify::connect_error(&err, "ds (peer)");
        assert_eq!(e.cause, Cause::TlsUntrustedPeer, "{e}");
        assert!(e.detail.contains("trust bundle"), "{e}");
    }
}
