use std::path::Path;

use super::*;

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_parts(
        Some(text),
        Path::new("test.toml"),
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
    match load(text, vars) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

const GOOD: &str = r#"
[inbound]
mode = "permissive"
[[inbound.ports]]
listen = "0.0.0.0:16080"
app_port = 8080

[outbound]
transparent = false
detect_timeout = "150ms"
[[outbound.services]]
name = "documentserver"
addresses = ["127.0.0.1:16080", "docs.example:80"]
spiffe_id = "spiffe://example.org/ns/oo/sa/docs"
[[outbound.listeners]]
listen = "127.0.0.1:18000"
service = "documentserver"
"#;

#[test]
fn defaults_follow_the_design() {
    let c = Config::from_parts(None, Path::new("-"), Vec::new()).unwrap();
    assert_eq!(c.outbound.listen.to_string(), "127.0.0.1:15001");
    assert_eq!(c.inbound.listen.to_string(), "0.0.0.0:15006");
    assert_eq!(c.inbound.mode, inbound::InboundMode::Strict);
    assert!(c.outbound.opaque_ports.contains(&5432));
}

#[test]
fn a_good_file_loads() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.inbound.mode, inbound::InboundMode::Permissive);
    assert_eq!(c.inbound.ports[0].app_port, 8080);
    assert_eq!(c.outbound.services[0].addresses.len(), 2);
    assert_eq!(c.outbound.detect_timeout.as_millis(), 150);
    assert_eq!(c.outbound.listeners[0].service, "documentserver");
}

#[test]
fn every_field_error_is_reported_with_its_path() {
    let text = r#"
[inbound]
mode = "lenient"
listne = "0.0.0.0:1"
[outbound]
connect_timeout = "five seconds"
[[outbound.services]]
name = "docs"
addresses = ["127.0.0.1:80"]
spiffe_id = "spiffe://td/docs"
colour = "blue"
"#;
    let p = problems(text, &[]);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"inbound.mode"), "{p:?}");
    assert!(paths.contains(&"inbound.listne"), "{p:?}");
    assert!(paths.contains(&"outbound.connect_timeout"), "{p:?}");
    assert!(paths.contains(&"outbound.services[0].colour"), "{p:?}");
    assert_eq!(p.len(), 4, "{p:?}");
    let mode = p.iter().find(|p| p.path == "inbound.mode").unwrap();
    assert!(mode.message.contains("lenient"), "{mode}");
}

#[test]
fn semantic_problems_name_their_fields() {
    let text = r#"
[outbound]
[[outbound.services]]
name = "docs"
addresses = ["nohost"]
spiffe_id = "https://td/docs"
[[outbound.services]]
name = "docs"
addresses = ["10.0.0.1:80"]
spiffe_id = "spiffe://td/docs2"
[[outbound.listeners]]
listen = "127.0.0.1:18000"
service = "doc"
[[outbound.listeners]]
listen = "127.0.0.1:18000"
service = "docs"
"#;
    let p = problems(text, &[]);
    let find = |path: &str| {
        p.iter()
            .find(|x| x.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {p:?}"))
    };
    assert!(find("outbound.services[0].addresses[0]")
        .message
        .contains("host:port"));
    assert!(find("outbound.services[0].spiffe_id")
        .message
        .contains("spiffe://"));
    assert!(find("outbound.services[1].name")
        .message
        .contains("duplicate"));
    assert!(find("outbound.listeners[0].service")
        .message
        .contains("unknown service `doc`"));
    assert!(find("outbound.listeners[1].listen")
        .message
        .contains("already used"));
}

#[test]
fn environment_overrides_fields_nested_and_by_index() {
    let vars = [
        ("DOCMESH_INBOUND__MODE", "strict"),
        (
            "DOCMESH_OUTBOUND__SERVICES__0__SPIFFE_ID",
            "spiffe://example.org/other",
        ),
        ("DOCMESH_OUTBOUND__SERVICES__0__ADDRESSES__1", "10.1.2.3:80"),
        ("DOCMESH_OUTBOUND__SERVICES__1__NAME", "redis"),
        (
            "DOCMESH_OUTBOUND__SERVICES__1__ADDRESSES",
            "[\"redis:6379\"]",
        ),
        (
            "DOCMESH_OUTBOUND__SERVICES__1__SPIFFE_ID",
            "spiffe://example.org/redis",
        ),
        ("DOCMESH_OUTBOUND__SERVICES__1__PROTOCOL", "opaque"),
        ("DOCMESH_OUTBOUND__OPAQUE_PORTS", "[5432]"),
        ("DOCMESH_ADMIN__LISTEN", "127.0.0.1:9999"),
        ("DOCMESH_CONFIG", "/not/a/field"),
        ("OTHER__THING", "ignored"),
    ];
    let c = load(GOOD, &vars).unwrap();
    assert_eq!(c.inbound.mode, inbound::InboundMode::Strict);
    assert_eq!(
        c.outbound.services[0].spiffe_id,
        "spiffe://example.org/other"
    );
    assert_eq!(c.outbound.services[0].addresses[1], "10.1.2.3:80");
    assert_eq!(c.outbound.services[1].name, "redis");
    assert_eq!(c.outbound.services[1].protocol, outbound::Protocol::Opaque);
    assert_eq!(c.outbound.opaque_ports, vec![5432]);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9999");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let p = problems(GOOD, &[("DOCMESH_OUTBOUND__CONNECT_TIMEOUT", "soon")]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "outbound.connect_timeout");
    assert!(
        p[0].message.contains("DOCMESH_OUTBOUND__CONNECT_TIMEOUT"),
        "{}",
        p[0]
    );

    let p = problems(GOOD, &[("DOCMESH_OUTBOUND__NOPE", "1")]);
    assert_eq!(p[0].path, "outbound.nope");
    assert!(p[0].message.contains("DOCMESH_OUTBOUND__NOPE"), "{}", p[0]);

    let p = problems(GOOD, &[("DOCMESH_OUTBOUND__SERVICES__5__NAME", "x")]);
    assert!(p[0].message.contains("skips elements"), "{}", p[0]);
}

#[test]
fn syntax_errors_carry_the_position() {
    match load("[inbound\nmode = 1", &[]) {
        Err(ConfigError::Syntax { message, .. }) => {
            assert!(message.contains("line 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vips_and_pool_settings_are_checked_with_their_paths() {
    let text = r#"
[outbound]
pool_idle_timeout = "0s"
h2_keep_alive_timeout = "0s"
[[outbound.services]]
name = "docservice"
addresses = ["docservice-headless:8000"]
spiffe_id = "spiffe://example.org/ns/oo/sa/docservice"
vips = ["10.96.0.12:8000", "docservice:8000", "10.96.0.13", "0.0.0.0:8000"]
"#;
    let p = problems(text, &[]);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "outbound.pool_idle_timeout",
        "outbound.h2_keep_alive_timeout",
        "outbound.services[0].vips[1]",
        "outbound.services[0].vips[2]",
        "outbound.services[0].vips[3]",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert!(
        !paths.contains(&"outbound.services[0].vips[0]"),
        "{paths:?}"
    );
}
