//! `[[inbound.rate_limits]]` through a sidecar pair with the OnlyOffice tenant profile: a noisy
//! tenant flooding the document server gets `429 rate-limited` with `Retry-After` (counted
//! per tenant), while a quiet tenant's requests within its own limit all succeed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use docmesh_proxy::config::inbound::{InboundConfig, InboundPortConfig};
use docmesh_proxy::config::ratelimit::RateLimitConfig;
use docmesh_proxy::inbound::{Inbound, MeshServer};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use jsonwebtoken::Algorithm::HS256;
use tokio::net::TcpListener;

use crate::authz_support::{authorizer, hs, write};
use crate::routes_split::start_named_app;
use crate::support::{bounded, full, h1_client, start_outbound, PairOptions};

const CMD: &str = "/coauthoring/CommandService.ashx";
const NOISY_SECRET: &[u8] = b"noisy-tenant-document-server-secret";
const QUIET_SECRET: &[u8] = b"quiet-tenant-document-server-secret";

fn token(secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "payload": {"c": "info", "key": "doc-1"}, "iat": now, "exp": now + 300
    });
    format!("Bearer {}", hs(HS256, secret, &claims))
}

/// The document server behind an inbound sidecar that verifies tenant tokens and limits
/// each tenant to 20 requests per second (burst 20); returns the caller's outbound listener.
async fn mesh(dir: &std::path::Path, metrics: &Metrics, lifecycle: &Lifecycle) -> SocketAddr {
    let app = start_named_app("documentserver").await;
    write(dir, "tenants/noisy/secret.key", NOISY_SECRET);
    write(dir, "tenants/quiet/secret.key", QUIET_SECRET);
    let az = authorizer(&format!(
        r#"
        [jwt]
        enabled = true
        path_prefixes = ["/coauthoring/"]
        tenant_secrets_dir = "{}/tenants"
        [tenants]
        base_domain = "docs.example.org"
        "#,
        dir.display()
    ));
    let cfg = InboundConfig {
        transparent: false,
        mode: docmesh_proxy::config::inbound::InboundMode::Permissive,
        ports: vec![InboundPortConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            app_port: app.port(),
        }],
        rate_limits: vec![RateLimitConfig {
            requests: 20,
            per: Duration::from_secs(1),
            ..RateLimitConfig::default()
        }],
        ..InboundConfig::default()
    };
    let inbound = Inbound::new(&cfg, MeshServer::Plaintext, lifecycle.clone(), metrics);
    inbound.set_authorizer(Arc::new(az));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let port = app.port();
    tokio::spawn(async move { inbound.serve_port(l, port).await });
    start_outbound(
        vec![addr.to_string()],
        &PairOptions::default(),
        lifecycle,
        &Metrics::new(),
    )
    .await
}

fn post(tenant: &str, auth: &str) -> http::Request<crate::support::TestBody> {
    http::Request::post(CMD)
        .header("host", format!("{tenant}.docs.example.org"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(full(r#"{"c":"info","key":"doc-1"}"#))
        .unwrap()
}

#[tokio::test]
async fn a_noisy_tenant_is_limited_and_cannot_starve_a_quiet_one() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, lifecycle) = (Metrics::new(), Lifecycle::new());
    let outbound = mesh(dir.path(), &metrics, &lifecycle).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let noisy_auth = token(NOISY_SECRET);
    let mut flood = Vec::new();
    for _ in 0..8 {
        let (stop, ok, limited, auth) = (
            stop.clone(),
            ok.clone(),
            limited.clone(),
            noisy_auth.clone(),
        );
        flood.push(tokio::spawn(async move {
            let mut c = h1_client(outbound).await;
            while !stop.load(Ordering::Relaxed) {
                let resp = bounded(c.send_request(post("noisy", &auth))).await.unwrap();
                match resp.status().as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        assert_eq!(resp.headers()["docmesh-error"], "rate-limited");
                        let secs: u64 = resp.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert_eq!(secs, 1, "Retry-After rounds 50 ms up to a second");
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("noisy tenant got {s}"),
                };
                crate::support::text(resp).await;
            }
        }));
    }
    // Let the flood empty the noisy bucket, then the quiet tenant sends 15 requests (its burst
    // is 20) spread over 1.5 s, all while the flood goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_auth = token(QUIET_SECRET);
    let mut q = h1_client(outbound).await;
    for i in 0..15 {
        let resp = bounded(q.send_request(post("quiet", &quiet_auth)))
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "quiet request {i} refused: {:?}",
            resp.headers().get("docmesh-error")
        );
        crate::support::text(resp).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        bounded(f).await.unwrap();
    }
    let (ok, limited) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    eprintln!(
        "noisy tenant: {ok} admitted, {limited} refused with 429; quiet tenant: 15 of 15 admitted"
    );
    assert!(
        limited > ok,
        "the flood should mostly be refused: {ok} admitted, {limited} limited"
    );
    let text = metrics.encode().unwrap();
    let counted = |tenant: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("docmesh_rate_limited_total{")
                    && l.contains(&format!("tenant=\"{tenant}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(counted("noisy"), limited, "{text}");
    assert_eq!(counted("quiet"), 0, "{text}");
}
