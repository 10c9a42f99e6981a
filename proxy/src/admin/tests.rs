use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ready::{await_ready, poll_until_ready, probe_ready, AwaitError, Probe};
use super::*;

/// One HTTP/1.1 request to the admin server; returns status and body.
pub(crate) async fn call(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn server(identity: Option<Identity>) -> (AdminServer, Lifecycle, Metrics) {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let s = AdminServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        AdminState {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            identity,
        },
    )
    .await
    .unwrap();
    (s, lifecycle, metrics)
}

#[tokio::test]
async fn live_is_always_200() {
    let (s, l, _) = server(None).await;
    assert_eq!(call(s.local_addr(), Method::GET, "/live").await.0, 200);
    l.start_drain();
    assert_eq!(call(s.local_addr(), Method::GET, "/live").await.0, 200);
}

#[tokio::test]
async fn ready_lists_closed_gates_then_turns_200_then_503_when_draining() {
    let (s, l, _) = server(None).await;
    let a = s.local_addr();
    let (st, body) = call(a, Method::GET, "/ready").await;
    assert_eq!(st, 503);
    assert!(body.contains("no readiness gate"), "{body}");

    l.register_gate("identity");
    l.register_gate("outbound");
    l.open_gate("outbound");
    let (st, body) = call(a, Method::GET, "/ready").await;
    assert_eq!(st, 503);
    assert_eq!(body.trim(), "not ready: closed gates: identity");

    l.open_gate("identity");
    assert_eq!(call(a, Method::GET, "/ready").await.0, 200);

    l.start_drain_because("SIGTERM");
    let (st, body) = call(a, Method::GET, "/ready").await;
    assert_eq!(st, 503);
    assert!(body.contains("draining (SIGTERM)"), "{body}");
}

#[tokio::test]
async fn metrics_serves_the_shared_registry() {
    use prometheus_client::metrics::gauge::Gauge;
    let (s, _, m) = server(None).await;
    let g: Gauge = Gauge::default();
    m.register("test_gauge", "A gauge set by the test", g.clone());
    g.set(42);
    let (st, body) = call(s.local_addr(), Method::GET, "/metrics").await;
    assert_eq!(st, 200);
    assert!(body.contains("docmesh_test_gauge 42"), "{body}");
    assert!(body.contains("docmesh_build_info{"), "{body}");
}

#[tokio::test]
async fn certs_without_identity_is_503() {
    let (s, _, _) = server(None).await;
    let (st, body) = call(s.local_addr(), Method::GET, "/certs").await;
    assert_eq!(st, 503);
    assert!(body.contains("no SVID"), "{body}");
}

#[tokio::test]
async fn certs_reports_the_current_svid() {
    let ca = crate::identity::tests::ca("mesh.test");
    let id = crate::identity::tests::identity(&ca, "spiffe://mesh.test/ns/oo/sa/docservice");
    let (s, _, _) = server(Some(id.clone())).await;
    let (st, body) = call(s.local_addr(), Method::GET, "/certs").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://mesh.test/ns/oo/sa/docservice");
    assert_eq!(v["serial"], id.svid_info().serial.as_str());
    assert_eq!(v["source"], "fixed");
    assert_eq!(v["trust_domains"], serde_json::json!(["mesh.test"]));
    let left = v["seconds_left"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    let not_after = time::OffsetDateTime::parse(
        v["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(std::time::SystemTime::from(not_after), id.svid_expiry());
}

#[tokio::test]
async fn shutdown_from_loopback_starts_the_drain() {
    let (s, l, _) = server(None).await;
    let a = s.local_addr();
    let (st, _) = call(a, Method::GET, "/shutdown").await;
    assert_eq!(st, 405);
    assert!(!l.is_draining(), "GET must not drain");
    let (st, body) = call(a, Method::POST, "/shutdown").await;
    assert_eq!(st, 202, "{body}");
    assert!(l.is_draining());
    assert_eq!(l.drain_reason().as_deref(), Some("POST /shutdown"));
}

#[test]
fn shutdown_from_a_non_loopback_peer_is_refused() {
    let l = Lifecycle::new();
    let state = AdminState {
        lifecycle: l.clone(),
        metrics: Metrics::new(),
        identity: None,
    };
    let req = Request::post("/shutdown").body(()).unwrap();
    let resp = route(&state, "192.0.2.7:40000".parse().unwrap(), req);
    assert_eq!(resp.status(), 403);
    assert!(!l.is_draining());
    // IPv4-mapped loopback counts as loopback.
    let req = Request::post("/shutdown").body(()).unwrap();
    let resp = route(&state, "[::ffff:127.0.0.1]:40000".parse().unwrap(), req);
    assert_eq!(resp.status(), 202);
    assert!(l.is_draining());
}

/// An IPv4 address of this host that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        let ip = ifa.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

#[tokio::test]
async fn shutdown_over_a_real_non_loopback_connection_is_refused() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("no non-loopback IPv4 address on this host; covered by the unit test only");
        return;
    };
    let lifecycle = Lifecycle::new();
    let s = AdminServer::bind(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        AdminState {
            lifecycle: lifecycle.clone(),
            metrics: Metrics::new(),
            identity: None,
        },
    )
    .await
    .unwrap();
    let (st, body) = call(
        SocketAddr::from((ip, s.local_addr().port())),
        Method::POST,
        "/shutdown",
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains(&ip.to_string()), "{body}");
    assert!(!lifecycle.is_draining());
    // The same server accepts it over loopback.
    let (st, _) = call(
        SocketAddr::from((Ipv4Addr::LOCALHOST, s.local_addr().port())),
        Method::POST,
        "/shutdown",
    )
    .await;
    assert_eq!(st, 202);
    assert!(lifecycle.is_draining());
}

#[tokio::test]
async fn unknown_paths_and_methods_are_named() {
    let (s, _, _) = server(None).await;
    let (st, body) = call(s.local_addr(), Method::GET, "/nope").await;
    assert_eq!(st, 404);
    assert!(body.contains("/ready"), "{body}");
    assert_eq!(call(s.local_addr(), Method::DELETE, "/ready").await.0, 405);
}

#[tokio::test]
async fn await_returns_once_the_proxy_turns_ready() {
    let (s, l, _) = server(None).await;
    l.register_gate("identity");
    assert!(matches!(
        probe_ready(s.local_addr(), Duration::from_secs(5)).await,
        Probe::NotReady(ref why) if why.contains("503") && why.contains("identity")
    ));
    let waiter = tokio::spawn(await_ready(
        s.local_addr(),
        Duration::from_secs(30),
        Duration::from_millis(20),
    ));
    l.open_gate("identity");
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn probe_names_a_refused_connection() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    match probe_ready(addr, Duration::from_secs(5)).await {
        Probe::NotReady(why) => assert!(why.contains("cannot connect"), "{why}"),
        Probe::Ready => panic!("nothing listens there"),
    }
}

#[tokio::test(start_paused = true)]
async fn await_times_out_with_the_last_answer() {
    let admin: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let start = tokio::time::Instant::now();
    let mut probes = 0;
    let err = poll_until_ready(
        admin,
        Duration::from_secs(10),
        Duration::from_secs(1),
        |_| {
            probes += 1;
            async { Probe::NotReady("503 not ready: closed gates: identity".into()) }
        },
    )
    .await
    .unwrap_err();
    let AwaitError::Timeout { waited, last, .. } = &err;
    assert_eq!(probes, 11);
    assert_eq!(*waited, Duration::from_secs(10));
    assert!(start.elapsed() <= Duration::from_secs(10));
    assert!(last.contains("identity"));
    let msg = err.to_string();
    assert!(
        msg.contains("127.0.0.1:15020") && msg.contains("10s"),
        "{msg}"
    );
}
