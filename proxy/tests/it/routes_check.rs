//! `docmesh-proxy check` refuses bad `[[outbound.routes]]` and `[[inbound.rate_limits]]`
//! entries, each by its field path, and accepts the OnlyOffice examples of docs/config.md.

use std::process::Command;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const SERVICES: &str = r#"
[outbound]
transparent = false
[[outbound.services]]
name = "docservice"
addresses = ["docservice:8000"]
spiffe_id = "spiffe://example.org/ns/onlyoffice/sa/docservice"
[[outbound.services]]
name = "docservice-canary"
addresses = ["docservice-canary:8000"]
spiffe_id = "spiffe://example.org/ns/onlyoffice/sa/docservice-canary"
"#;

#[test]
fn the_documented_onlyoffice_routes_and_limits_pass() {
    let cfg = format!(
        r#"{SERVICES}
[[outbound.routes]]
service = "docservice"
backends = [
  {{ service = "docservice", weight = 90 }},
  {{ service = "docservice-canary", weight = 10 }},
]
matches = [{{ kind = "header", name = "x-canary", value = "1", backend = "docservice-canary" }}]

[[inbound.rate_limits]]
port = 8000
path_prefix = "/coauthoring/CommandService.ashx"
requests = 20
burst = 40
tenants = {{ bigcorp = {{ requests = 100, burst = 200 }} }}

[[inbound.rate_limits]]
port = 8000
path_prefix = "/ConvertService.ashx"
per_tenant = false
requests = 300
per = "1m"
"#
    );
    let (ok, out) = check(&cfg);
    assert!(ok, "{out}");
}

#[test]
fn bad_routes_and_limits_are_refused_with_their_field_paths() {
    let cfg = format!(
        r#"{SERVICES}
[[outbound.routes]]
service = "docservice"
backends = [
  {{ service = "docservice", weight = 0 }},
  {{ service = "docservice-canary", weight = 0 }},
]

[[outbound.routes]]
service = "docservice-canary"
path_prefix = "/api"
backends = [{{ service = "docservice-nightly", weight = 5 }}]
matches = [{{ kind = "cookie", name = "canary", backend = "docservice" }}]
failover = ["docservice-dr"]

[[outbound.routes]]
service = "editors"
failover = ["docservice"]

[[inbound.rate_limits]]
requests = 0

[[inbound.rate_limits]]
path_prefix = "/x"
requests = 5
burst = 0
per = "0s"
tenants = {{ acme = {{ requests = 0 }} }}
"#
    );
    let (ok, out) = check(&cfg);
    assert!(!ok, "{out}");
    for (path, needle) in [
        ("outbound.routes[0].backends:", "sum to zero"),
        (
            "outbound.routes[1].backends[0].service:",
            "unknown service `docservice-nightly`",
        ),
        (
            "outbound.routes[1].matches[0].kind:",
            "unknown variant `cookie`",
        ),
        (
            "outbound.routes[1].failover[0]:",
            "unknown service `docservice-dr`",
        ),
        ("outbound.routes[2].service:", "unknown service `editors`"),
        ("inbound.rate_limits[0].requests:", "zero"),
        ("inbound.rate_limits[1].burst:", "zero"),
        ("inbound.rate_limits[1].per:", "greater than zero"),
        ("inbound.rate_limits[1].tenants.acme.requests:", "zero"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("missing {path} in:\n{out}"));
        assert!(line.contains(needle), "{path}: {line}");
    }
}
