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
        observer: Arc::new(NoopObserver),
    }
}

fn load(text: &str) -> Config {
    Config::from_parts(Some(text), Path::new("t.toml"), Vec::new()).unwrap()
}

#[test]
fn routes_limits_and_resilience_reload_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut running = load(BASE);
    let t = targets(&running);
    std::fs::write(&path, format!("{BASE}{ROUTE}")).unwrap();
    let changed = reload(&path, &mut running, &t).unwrap();
    assert_eq!(changed, ["outbound.routes", "inbound.rate_limits"]);
    assert_eq!(running.outbound.routes.len(), 1);
    // The same file again changes nothing.
    assert_eq!(reload(&path, &mut running, &t).unwrap(), ["nothing"]);
    std::fs::write(
        &path,
        format!("{BASE}{ROUTE}[resilience.defaults.retry]\nmax_attempts = 1\n"),
    )
    .unwrap();
    assert_eq!(reload(&path, &mut running, &t).unwrap(), ["resilience"]);
}

#[test]
fn a_bad_file_or_a_fixed_setting_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut running = load(&format!("{BASE}{ROUTE}"));
    let t = targets(&running);
    std::fs::write(
        &path,
        format!("{BASE}{}", ROUTE.replace("weight = 1", "weight = 0")),
    )
    .unwrap();
    let e = reload(&path, &mut running, &t).unwrap_err();
    assert_eq!(e.result(), "invalid");
    assert!(e.to_string().contains("outbound.routes[0].backends"), "{e}");
    // A new service, a listen address and the identity source are not live.
    let fixed = format!(
        "{}{ROUTE}[[outbound.services]]\nname = \"x\"\naddresses = [\"10.0.0.9:80\"]\nspiffe_id = \"spiffe://example.org/x\"\n[admin]\nlisten = \"127.0.0.1:15999\"\n",
        BASE.replace("transparent = false", "transparent = false\nlisten = \"127.0.0.1:15111\"")
    );
    std::fs::write(&path, fixed).unwrap();
    let e = reload(&path, &mut running, &t).unwrap_err();
    assert_eq!(e.result(), "restart-required");
    let msg = e.to_string();
    for name in ["outbound.listen", "outbound.services", "admin.listen"] {
        assert!(msg.contains(name), "{name} missing: {msg}");
    }
    // Nothing changed: the running config still has its route with weight 1.
    assert_eq!(running.outbound.routes[0].backends[0].weight, 1);
    assert_eq!(running.outbound.services.len(), 2);
}
