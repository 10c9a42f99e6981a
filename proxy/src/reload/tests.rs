use super::*;
use crate::config::inbound::InboundConfig;
use crate::inbound::MeshServer;
use crate::outbound::connect::MeshClient;
use crate::resilience::observer::NoopObserver;

const BASE: &str = r#"
[outbound]
transparent = false
[[outbound.services]]
name = "docservice"
addresses = ["127.0.0.1:16080"]
spiffe_id = "spiffe://example.org/ns/oo/sa/docservice"
[[outbound.services]]
name = "docservice-canary"
addresses = ["127.0.0.1:16081"]
spiffe_id = "spiffe://example.org/ns/oo/sa/docservice-canary"
"#;

const ROUTE: &str = r#"
[[outbound.routes]]
service = "docservice"
backends = [{ service = "docservice-canary", weight = 1 }]
[[inbound.rate_limits]]
requests = 5
"#;

fn targets(cfg: &Config) -> Targets {
    let (lifecycle, metrics) = (Lifecycle::new(), Metrics::new());
    Targets {
        outbound: Outbound::new(
            &cfg.outbound,
            MeshClient::Plaintext,
            lifecycle.clone(),
            &metrics,
        )
        .unwrap(),
        inbound: Inbound::new(
            &InboundConfig::default(),
            MeshServer::Plaintext,
            lifecycle,
            &metrics,
        ),
        observer: Arc::new(|_: &[crate::config::outbound::ServiceConfig]| {
            Arc::new(NoopObserver) as Arc<dyn Observer>
        }),
    }
}

fn load(text: &str) -> Config {
    Config::from_parts(Some(text), Path::new("t.toml"), Vec::new()).unwrap()
}

#[tokio::test]
async fn routes_limits_and_resilience_reload_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut running = load(BASE);
    let t = targets(&running);
    std::fs::write(&path, format!("{BASE}{ROUTE}")).unwrap();
    let changed = reload(&path, &mut running, &t).await.unwrap();
    assert_eq!(changed, ["outbound.routes", "inbound.rate_limits"]);
    assert_eq!(running.outbound.routes.len(), 1);
    // The same file again changes nothing.
    assert_eq!(reload(&path, &mut running, &t).await.unwrap(), ["nothing"]);
    std::fs::write(
        &path,
        format!("{BASE}{ROUTE}[resilience.defaults.retry]\nmax_attempts = 1\n"),
    )
    .unwrap();
    assert_eq!(
        reload(&path, &mut running, &t).await.unwrap(),
        ["resilience"]
    );
    // [authz] too: a tenant or SPIFFE rule changes without a restart.
    std::fs::write(
        &path,
        format!(
            "{BASE}{ROUTE}[resilience.defaults.retry]\nmax_attempts = 1\n[[authz.spiffe]]\nport = 8000\nallow = [\"spiffe://example.org/ns/oo/\"]\n"
        ),
    )
    .unwrap();
    assert_eq!(reload(&path, &mut running, &t).await.unwrap(), ["authz"]);
}

#[tokio::test]
async fn a_bad_file_or_a_fixed_setting_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut running = load(&format!("{BASE}{ROUTE}"));
    let t = targets(&running);
    std::fs::write(
        &path,
        format!("{BASE}{}", ROUTE.replace("weight = 1", "weight = 0")),
    )
    .unwrap();
    let e = reload(&path, &mut running, &t).await.unwrap_err();
    assert_eq!(e.result(), "invalid");
    assert!(e.to_string().contains("outbound.routes[0].backends"), "{e}");
    // A changed service, a listen address and the admin address are not live.
    let fixed = format!(
        "{}{ROUTE}[admin]\nlisten = \"127.0.0.1:15999\"\n",
        BASE.replace(
            "transparent = false",
            "transparent = false\nlisten = \"127.0.0.1:15111\""
        )
        .replace("127.0.0.1:16081", "127.0.0.1:16082")
    );
    std::fs::write(&path, fixed).unwrap();
    let e = reload(&path, &mut running, &t).await.unwrap_err();
    assert_eq!(e.result(), "restart-required");
    let msg = e.to_string();
    for name in ["outbound.listen", "outbound.services", "admin.listen"] {
        assert!(msg.contains(name), "{name} missing: {msg}");
    }
    // Nothing changed: the running config still has its route with weight 1.
    assert_eq!(running.outbound.routes[0].backends[0].weight, 1);
    assert_eq!(running.outbound.services.len(), 2);
}

#[tokio::test]
async fn services_added_at_the_end_reload_live_and_routes_may_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut running = load(BASE);
    let t = targets(&running);
    let next = "[[outbound.services]]\nname = \"docservice-next\"\naddresses = [\"127.0.0.1:16090\"]\nspiffe_id = \"spiffe://example.org/ns/oo/sa/next\"\n";
    let route = "[[outbound.routes]]\nservice = \"docservice\"\nbackends = [{ service = \"docservice-next\", weight = 1 }]\n";
    std::fs::write(&path, format!("{BASE}{next}{route}")).unwrap();
    let changed = reload(&path, &mut running, &t).await.unwrap();
    assert_eq!(
        changed,
        [
            "outbound.services (added docservice-next)",
            "outbound.routes"
        ]
    );
    let services = t.outbound.services();
    let next = services.by_name("docservice-next").unwrap();
    assert_eq!(next.index, 2);
    assert_eq!(next.endpoints()[0].port(), 16090);
    // Existing services are the same objects.
    assert_eq!(services.by_name("docservice").unwrap().index, 0);
    // Removing it again is not live.
    std::fs::write(&path, BASE).unwrap();
    let e = reload(&path, &mut running, &t).await.unwrap_err();
    assert!(e.to_string().contains("outbound.services"), "{e}");
}
