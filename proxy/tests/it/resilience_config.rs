//! `[resilience]` in the whole proxy configuration: every problem is reported with its field
//! path (as `docmesh-proxy check` prints it), and environment overrides reach the section.

use std::path::Path;
use std::time::Duration;

use docmesh_proxy::config::{Config, ConfigError};
use docmesh_proxy::resilience::resolve::{service_policy, service_policy_for};
use http::Method;

const BASE: &str = r#"
[outbound]
transparent = false
[[outbound.services]]
name = "documentserver"
addresses = ["127.0.0.1:16080"]
spiffe_id = "spiffe://example.org/ns/oo/sa/documentserver"
"#;

fn load(extra: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let text = format!("{BASE}{extra}");
    let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_parts(Some(&text), Path::new("proxy.toml"), vars)
}

fn problems(extra: &str) -> Vec<String> {
    match load(extra, &[]) {
        Err(ConfigError::Invalid(ps)) => ps.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn a_documentserver_profile_loads_and_resolves() {
    let c = load(
        r#"
        [resilience.services.documentserver.health_check]
        path = "/healthcheck"
        expect_body = "true"
        [resilience.services.documentserver.timeouts]
        pool_idle = "3s"
        [[resilience.services.documentserver.routes]]
        methods = ["POST"]
        path_prefix = "/coauthoring/CommandService.ashx"
        retry = { max_attempts = 1 }
        "#,
        &[],
    )
    .unwrap();
    let p = service_policy_for(&c.resilience, "documentserver", &c.outbound);
    assert_eq!(
        p.health_check.as_ref().unwrap().expect_body.as_deref(),
        Some("true")
    );
    assert_eq!(p.default_route.timeouts.pool_idle, Duration::from_secs(3));
    assert_eq!(p.default_route.timeouts.connect, c.outbound.connect_timeout);
    let cmd = p.route(&Method::POST, "/coauthoring/CommandService.ashx?c=info");
    assert_eq!(cmd.retry.max_attempts, 1);
    let conv = p.route(&Method::POST, "/ConvertService.ashx");
    assert_eq!(
        conv.timeouts.response_headers,
        Some(Duration::from_secs(1800))
    );
}

#[test]
fn problems_name_their_field_paths() {
    let ps = problems(
        r#"
        [resilience.services.documentsrever.retry]
        max_attempts = 2
        [resilience.defaults.breaker]
        jitter = 3.0
        "#,
    );
    assert!(
        ps.iter()
            .any(|p| p.starts_with("resilience.services.documentsrever")
                && p.contains("no service named")),
        "{ps:?}"
    );
    assert!(
        ps.iter()
            .any(|p| p.starts_with("resilience.defaults.breaker.jitter")),
        "{ps:?}"
    );
    let ps = problems("[resilience.defaults.retry]\nmax_atempts = 2\n");
    assert!(ps.iter().any(|p| p.contains("max_atempts")), "{ps:?}");
    let ps = problems("[resilience.defaults.timeouts]\nrequest = \"soon\"\n");
    assert!(
        ps.iter()
            .any(|p| p.contains("resilience.defaults.timeouts.request")),
        "{ps:?}"
    );
}

#[test]
fn environment_overrides_reach_the_section() {
    let c = load(
        "",
        &[("DOCMESH_RESILIENCE__DEFAULTS__RETRY__MAX_ATTEMPTS", "5")],
    )
    .unwrap();
    let p = service_policy(&c.resilience, "documentserver");
    assert_eq!(p.default_route.retry.max_attempts, 5);
}
