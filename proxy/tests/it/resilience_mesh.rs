//! The resilience stack inside the outbound data path, through an mTLS sidecar pair (dev CA,
//! SPIFFE IDs): retries that recover, callbacks that are not replayed once sent, and an open
//! circuit that fails fast without connecting and closes after a probe.

use crate::resilience_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::resilience_support::{Kind, Upstream};
use crate::support::{
    bounded, dev_ca, full, h1_client, healthy_mtls, start_inbound, text, PairOptions,
};
use docmesh_proxy::config::outbound::{OutboundConfig, ServiceConfig};
use docmesh_proxy::config::resilience::ResilienceConfig;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::outbound::Outbound;
use tokio::net::{TcpListener, TcpStream};

/// An outbound sidecar for service `svc` at `address` with the given `[resilience]` TOML.
async fn start_outbound(address: SocketAddr, opts: &PairOptions, resilience: &str) -> SocketAddr {
    start_outbound_to(&[address], opts, resilience).await
}

/// Like [`start_outbound`] with several endpoints.
async fn start_outbound_to(
    addresses: &[SocketAddr],
    opts: &PairOptions,
    resilience: &str,
) -> SocketAddr {
    let cfg = OutboundConfig {
        transparent: false,
        services: vec![ServiceConfig {
            name: "svc".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            spiffe_id: opts.spiffe_id.clone(),
            protocol: opts.protocol,
            ..ServiceConfig::default()
        }],
        ..OutboundConfig::default()
    };
    let res: ResilienceConfig = toml::from_str(resilience).unwrap();
    res.validate().unwrap();
    let outbound = Outbound::new(
        &cfg,
        opts.outbound_mesh.clone(),
        Lifecycle::new(),
        &Metrics::new(),
    )
    .unwrap();
    outbound.set_resilience(&res);
    outbound.start(cfg.resolve_interval).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { outbound.serve_service(l, "svc").await.unwrap() });
    addr
}

/// A pair in front of `app`; returns the outbound listener.
async fn pair(app: SocketAddr, resilience: &str) -> SocketAddr {
    let ca = dev_ca("example.org");
    let opts = healthy_mtls(&ca);
    let inbound = start_inbound(app, &opts, &Lifecycle::new(), &Metrics::new()).await;
    start_outbound(inbound, &opts, resilience).await
}

/// Sends one request through `outbound`: (status, docmesh-error, body).
async fn call(
    outbound: SocketAddr,
    method: &str,
    body: impl Into<bytes::Bytes>,
) -> (u16, String, String) {
    let mut c = h1_client(outbound).await;
    let req = http::Request::builder()
        .method(method)
        .uri("/callback")
        .header("host", "integrator.example")
        .body(full(body))
        .unwrap();
    let resp = bounded(c.send_request(req)).await.unwrap();
    let status = resp.status().as_u16();
    let cause = resp
        .headers()
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cause, text(resp).await)
}

const FAST: &str = r#"
[defaults.retry]
backoff_base = "1ms"
backoff_max = "5ms"
"#;

#[tokio::test]
async fn retries_through_the_mesh_recover_from_503s() {
    let app = Upstream::spawn(Kind::Fail503(2)).await;
    let outbound = pair(app.addr, FAST).await;
    let (status, cause, body) = call(outbound, "GET", "").await;
    assert_eq!((status, cause.as_str(), body.as_str()), (200, "", "ok"));
    assert_eq!(app.counters.requests(), 3, "two 503s retried over mTLS");
}

#[tokio::test]
async fn a_callback_whose_body_reached_the_app_is_not_replayed() {
    let app = Upstream::spawn(Kind::ResetAfterBody).await;
    let outbound = pair(app.addr, FAST).await;
    let (status, cause, body) = call(outbound, "POST", "{\"status\":2}").await;
    // The peer's inbound sidecar saw the app reset and answered for it.
    assert_eq!((status, cause.as_str()), (502, "upstream-reset"), "{body}");
    assert!(body.contains("\"hop\":\"inbound\""), "{body}");
    assert_eq!(
        app.counters.requests(),
        1,
        "the callback reached the app exactly once"
    );
    // The same failure on an idempotent request is retried.
    let (status, _, _) = call(outbound, "PUT", "same").await;
    assert_eq!(status, 502);
    assert_eq!(app.counters.requests(), 4);
}

/// A TCP forwarder in front of `to` that counts accepted connections and, while `down`,
/// resets them at once.
async fn gate(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (a, d) = (accepts.clone(), down.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            if d.load(Ordering::SeqCst) {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    (addr, accepts, down)
}

#[tokio::test]
async fn open_circuit_fails_fast_over_the_mesh_and_the_probe_closes_it() {
    let app = Upstream::spawn(Kind::Ok).await;
    let ca = dev_ca("example.org");
    let opts = healthy_mtls(&ca);
    let inbound = start_inbound(app.addr, &opts, &Lifecycle::new(), &Metrics::new()).await;
    let (gate_addr, accepts, down) = gate(inbound).await;
    let outbound = start_outbound(
        gate_addr,
        &opts,
        r#"
        [services.svc.retry]
        max_attempts = 1
        [services.svc.breaker]
        consecutive_failures = 3
        open_base = "200ms"
        jitter = 0.0
        "#,
    )
    .await;
    down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let (status, cause, body) = call(outbound, "GET", "").await;
        assert_eq!(status, 502, "{cause} {body}");
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
    let (status, cause, body) = call(outbound, "GET", "").await;
    assert_eq!((status, cause.as_str()), (503, "circuit-open"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hop"], "outbound");
    assert!(v["detail"].as_str().unwrap().contains("svc"), "{body}");
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        3,
        "no connection while the circuit is open"
    );

    down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, cause, _) = call(outbound, "GET", "").await;
        if status == 200 {
            break;
        }
        assert_eq!(cause, "circuit-open");
        assert!(
            Instant::now() < deadline,
            "the probe never closed the circuit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 4, "one probe connection");
    assert_eq!(call(outbound, "GET", "").await.0, 200);
}

#[tokio::test]
async fn a_callback_goes_to_another_endpoint_when_a_peer_could_not_reach_its_app() {
    let ca = dev_ca("example.org");
    let opts = healthy_mtls(&ca);
    let dead_app = resilience_support::refusing_addr().await;
    let app = Upstream::spawn(Kind::Ok).await;
    let to_dead = start_inbound(dead_app, &opts, &Lifecycle::new(), &Metrics::new()).await;
    let to_app = start_inbound(app.addr, &opts, &Lifecycle::new(), &Metrics::new()).await;
    // Random first choice (no load), and no ejection: half the callbacks start at the endpoint
    // whose app is down.
    let outbound = start_outbound_to(
        &[to_dead, to_app],
        &opts,
        r#"
        [services.svc.balance]
        strategy = "p2c-load"
        [services.svc.breaker]
        consecutive_failures = 0
        "#,
    )
    .await;
    for i in 0..12 {
        let (status, cause, body) = call(outbound, "POST", format!("callback {i}")).await;
        assert_eq!((status, cause.as_str()), (200, ""), "{body}");
    }
    let bodies = app.counters.bodies.lock().unwrap().clone();
    let want: Vec<bytes::Bytes> = (0..12).map(|i| format!("callback {i}").into()).collect();
    assert_eq!(
        bodies, want,
        "each callback reached the live app exactly once"
    );
}
