//! `[[outbound.routes]]` through real sidecar pairs: a 90/10 split between `docservice` and
//! `docservice-canary` (each its own app behind its own inbound sidecar) observed within a
//! binomial bound, `x-canary: 1` always reaching the canary, failover to a backup service when
//! the primary has no endpoint, and the per-backend request and error counts in the metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use docmesh_proxy::config::outbound::{OutboundConfig, Protocol, ServiceConfig};
use docmesh_proxy::config::Config;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::outbound::Outbound;
use tokio::net::TcpListener;

use crate::support::{bounded, full, get, h1_client, serve_app, start_inbound, PairOptions};

/// Requests to `/hold` wait for a permit from here ([`release_held`]).
static HOLD: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// Lets one `/hold` request of a named app answer.
pub fn release_held() {
    HOLD.add_permits(1);
}

/// What `/healthcheck` of the app named `docservice-flaky` answers (`true` or `false`, as
/// OnlyOffice's does).
static FLAKY_HEALTHY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An app that names itself in `x-app`, answers 500 on `/fail`, answers `/hold` once the
/// test calls [`release_held`], and `/healthcheck` with `true` (`docservice-flaky`: with
/// [`FLAKY_HEALTHY`]).
pub async fn start_named_app(name: &'static str) -> SocketAddr {
    serve_app(
        move |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/hold" {
                if let Ok(p) = HOLD.acquire().await {
                    p.forget();
                }
            }
            let status = if req.uri().path() == "/fail" {
                500
            } else {
                200
            };
            let body: &'static [u8] = match req.uri().path() {
                "/healthcheck"
                    if name == "docservice-flaky" && !FLAKY_HEALTHY.load(Ordering::SeqCst) =>
                {
                    b"false"
                }
                "/healthcheck" => b"true",
                _ => b"ok",
            };
            let resp = http::Response::builder()
                .status(status)
                .header("x-app", name)
                .body(http_body_util::Full::new(Bytes::from_static(body)))
                .unwrap();
            Ok::<_, Infallible>(resp)
        },
    )
    .await
}

fn service(name: &str, address: String) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        addresses: vec![address],
        spiffe_id: "spiffe://example.org/app".into(),
        protocol: Protocol::Detect,
        ..ServiceConfig::default()
    }
}

const ROUTES: &str = r#"
[[outbound.routes]]
service = "docservice"
backends = [
  { service = "docservice", weight = 90 },
  { service = "docservice-canary", weight = 10 },
]
matches = [{ kind = "header", name = "x-canary", value = "1", backend = "docservice-canary" }]

[[outbound.routes]]
service = "editors"
failover = ["docservice-backup"]
"#;

struct Mesh {
    /// Explicit listeners: docservice, editors.
    docservice: SocketAddr,
    editors: SocketAddr,
    metrics: Metrics,
    _lifecycle: Lifecycle,
}

async fn mesh() -> Mesh {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let opts = PairOptions::default();
    let mut inbound = Vec::new();
    for name in ["docservice", "docservice-canary", "docservice-backup"] {
        let app = start_named_app(name).await;
        inbound.push(start_inbound(app, &opts, &lifecycle, &Metrics::new()).await);
    }
    let routes: Config = toml::from_str(ROUTES).unwrap();
    let cfg = OutboundConfig {
        transparent: false,
        services: vec![
            service("docservice", inbound[0].to_string()),
            service("docservice-canary", inbound[1].to_string()),
            service("docservice-backup", inbound[2].to_string()),
            // The primary of `editors` has no endpoint at all.
            service("editors", "no-such-host.invalid:8000".into()),
        ],
        routes: routes.outbound.routes,
        ..OutboundConfig::default()
    };
    let outbound = Outbound::new(
        &cfg,
        opts.outbound_mesh.clone(),
        lifecycle.clone(),
        &metrics,
    )
    .unwrap();
    outbound.start(cfg.resolve_interval).await;
    let mut listeners = Vec::new();
    for name in ["docservice", "editors"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(l.local_addr().unwrap());
        let o = outbound.clone();
        tokio::spawn(async move { o.serve_service(l, name).await.unwrap() });
    }
    Mesh {
        docservice: listeners[0],
        editors: listeners[1],
        metrics,
        _lifecycle: lifecycle,
    }
}

async fn app_of(
    c: &mut hyper::client::conn::http1::SendRequest<crate::support::TestBody>,
    req: http::Request<crate::support::TestBody>,
) -> (u16, String) {
    let resp = bounded(c.send_request(req)).await.unwrap();
    let app = resp
        .headers()
        .get("x-app")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = resp.status().as_u16();
    crate::support::text(resp).await;
    (status, app)
}

fn counter(text: &str, labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{labels} ")))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_90_10_split_header_route_and_failover_through_real_sidecars() {
    let m = mesh().await;
    let mut c = h1_client(m.docservice).await;
    // The split: 10% canary within a 5-sigma binomial bound.
    let n = 1000u32;
    let mut canary = 0u32;
    for _ in 0..n {
        let (status, app) = app_of(&mut c, get("/doc", "docservice")).await;
        assert_eq!(status, 200);
        match app.as_str() {
            "docservice-canary" => canary += 1,
            "docservice" => {}
            other => panic!("unexpected backend {other:?}"),
        }
    }
    eprintln!("90/10 split: {canary} of {n} requests reached the canary");
    let (p, nf) = (0.1, f64::from(n));
    let sigma = (nf * p * (1.0 - p)).sqrt();
    let dev = (f64::from(canary) - nf * p).abs();
    assert!(
        dev <= 5.0 * sigma,
        "{canary} of {n} requests reached the canary; expected {} ± {:.0} (5 sigma)",
        nf * p,
        5.0 * sigma
    );
    // The header route: every request with x-canary: 1 reaches the canary.
    for _ in 0..50 {
        let req = http::Request::get("/doc")
            .header("host", "docservice")
            .header("x-canary", "1")
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(app_of(&mut c, req).await, (200, "docservice-canary".into()));
    }
    // A canary error is counted for the canary.
    let req = http::Request::get("/fail")
        .header("x-canary", "1")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(app_of(&mut c, req).await, (500, "docservice-canary".into()));
    // Failover: editors has no endpoint; its traffic goes to the backup.
    let mut e = h1_client(m.editors).await;
    for _ in 0..20 {
        assert_eq!(
            app_of(&mut e, get("/", "editors")).await,
            (200, "docservice-backup".into())
        );
    }
    let text = m.metrics.encode().unwrap();
    let req = |backend: &str, reason: &str| {
        format!(
            "docmesh_route_backend_requests_total{{service=\"docservice\",backend=\"{backend}\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(
        counter(&text, &req("docservice-canary", "weight")),
        u64::from(canary),
        "{text}"
    );
    assert_eq!(
        counter(&text, &req("docservice", "weight")),
        u64::from(n - canary)
    );
    assert_eq!(counter(&text, &req("docservice-canary", "match")), 51);
    assert_eq!(
        counter(
            &text,
            "docmesh_route_backend_errors_total{service=\"docservice\",backend=\"docservice-canary\",reason=\"match\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "docmesh_route_backend_requests_total{service=\"editors\",backend=\"docservice-backup\",reason=\"failover\"}"
        ),
        20
    );
}

/// Failover on health: the primary's only endpoint fails its `/healthcheck` (body `false`),
/// so the route sends to the standby; once the check passes again, traffic returns.
#[tokio::test]
async fn failover_to_a_standby_while_the_primary_fails_its_health_check() {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let opts = PairOptions::default();
    let flaky = start_named_app("docservice-flaky").await;
    let standby = start_named_app("docservice-standby").await;
    let flaky_in = start_inbound(flaky, &opts, &lifecycle, &Metrics::new()).await;
    let standby_in = start_inbound(standby, &opts, &lifecycle, &Metrics::new()).await;
    let text = format!(
        r#"
[outbound]
transparent = false
[[outbound.services]]
name = "docservice"
addresses = ["{flaky_in}"]
spiffe_id = "spiffe://example.org/app"
[[outbound.services]]
name = "docservice-standby"
addresses = ["{standby_in}"]
spiffe_id = "spiffe://example.org/app"
[[outbound.routes]]
service = "docservice"
failover = ["docservice-standby"]
[resilience.services.docservice.health_check]
path = "/healthcheck"
expect_body = "true"
interval = "100ms"
unhealthy_threshold = 1
healthy_threshold = 1
"#
    );
    let cfg = Config::from_parts(Some(&text), std::path::Path::new("t.toml"), Vec::new()).unwrap();
    let outbound = Outbound::new(
        &cfg.outbound,
        opts.outbound_mesh.clone(),
        lifecycle.clone(),
        &metrics,
    )
    .unwrap();
    outbound.set_resilience(&cfg.resilience);
    outbound.start(cfg.outbound.resolve_interval).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let o = outbound.clone();
    tokio::spawn(async move { o.serve_service(l, "docservice").await.unwrap() });

    let mut c = h1_client(addr).await;
    // Until the first check fails, requests may still reach the primary (it answers them).
    bounded(async {
        while app_of(&mut c, get("/", "docservice")).await.1 != "docservice-standby" {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            app_of(&mut c, get("/", "docservice")).await,
            (200, "docservice-standby".into())
        );
    }
    // The primary recovers: traffic returns to it.
    FLAKY_HEALTHY.store(true, Ordering::SeqCst);
    bounded(async {
        while app_of(&mut c, get("/", "docservice")).await.1 != "docservice-flaky" {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            app_of(&mut c, get("/", "docservice")).await,
            (200, "docservice-flaky".into())
        );
    }
    let text = metrics.encode().unwrap();
    assert!(
        counter(
            &text,
            "docmesh_route_backend_requests_total{service=\"docservice\",backend=\"docservice-standby\",reason=\"failover\"}"
        ) >= 21,
        "{text}"
    );
}
