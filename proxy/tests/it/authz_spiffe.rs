//! SPIFFE ID rules per port and route, the host's tenant as OnlyOffice computes it, and key
//! reloads.

use crate::authz_support::*;
use docmesh_proxy::authz::tenant::host_tenant;
use docmesh_proxy::authz::{Decision, CLIENT_ID_HEADER, TENANT_HEADER};
use docmesh_proxy::errors::Cause;

const RULES: &str = r#"
[[spiffe]]
name = "onlyoffice namespace may call the command service"
port = 8000
methods = ["POST"]
path_prefix = "/coauthoring/"
allow = ["spiffe://onlyoffice.local/ns/onlyoffice/"]

[[spiffe]]
port = 8000
path_prefix = "/healthcheck"
allow = ["spiffe://onlyoffice.local", "spiffe://monitoring.local/ns/mon/sa/prober"]

[[spiffe]]
name = "postgres clients"
port = 5432
allow = ["spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice"]
"#;

#[tokio::test]
async fn http_rules_match_exact_ids_trust_domains_and_path_prefixes() {
    let az = authorizer(RULES);
    let docservice = Some("spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice");
    let portal = Some("spiffe://onlyoffice.local/ns/portal/sa/integrator");
    let prober = Some("spiffe://monitoring.local/ns/mon/sa/prober");
    let other_prober = Some("spiffe://monitoring.local/ns/mon/sa/prober2");
    let cmd = "/coauthoring/CommandService.ashx";

    // Path-prefix pattern.
    let out = decide(
        &az,
        8000,
        docservice,
        "POST",
        cmd,
        &[(CLIENT_ID_HEADER, "spiffe://forged/x")],
        b"",
    )
    .await;
    assert_eq!(out.allowed(), None);
    assert_eq!(
        out.headers[CLIENT_ID_HEADER],
        "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice"
    );
    assert!(out.headers.get(TENANT_HEADER).is_none());
    // Same trust domain, other namespace: the prefix does not match; detail names ID and rules.
    decide(&az, 8000, portal, "POST", cmd, &[], b"").await.denied(
        Cause::Forbidden,
        "SPIFFE ID spiffe://onlyoffice.local/ns/portal/sa/integrator is not allowed for POST /coauthoring/CommandService.ashx on port 8000 by rules [onlyoffice namespace may call the command service]",
    );
    // A prefix is matched on segment boundaries: ns/onlyoffice-evil is not ns/onlyoffice/.
    decide(
        &az,
        8000,
        Some("spiffe://onlyoffice.local/ns/onlyoffice-evil/sa/x"),
        "POST",
        cmd,
        &[],
        b"",
    )
    .await
    .denied(Cause::Forbidden, "not allowed");
    // Method restriction: GET on the same path has no rule.
    decide(&az, 8000, docservice, "GET", cmd, &[], b"")
        .await
        .denied(
            Cause::Forbidden,
            "no rule matches this route (rules on this port:",
        );
    // Whole trust domain and exact ID on /healthcheck.
    decide(&az, 8000, portal, "GET", "/healthcheck", &[], b"")
        .await
        .allowed();
    decide(&az, 8000, prober, "GET", "/healthcheck", &[], b"")
        .await
        .allowed();
    decide(&az, 8000, other_prober, "GET", "/healthcheck", &[], b"")
        .await
        .denied(
            Cause::Forbidden,
            "spiffe://monitoring.local/ns/mon/sa/prober2 is not allowed",
        );
    // A trust domain whose name merely starts with the allowed one.
    decide(
        &az,
        8000,
        Some("spiffe://onlyoffice.local.evil/ns/x"),
        "GET",
        "/healthcheck",
        &[],
        b"",
    )
    .await
    .denied(Cause::Forbidden, "not allowed");
    // No client ID at all (no mTLS) on a governed port.
    decide(&az, 8000, None, "GET", "/healthcheck", &[], b"")
        .await
        .denied(Cause::Forbidden, "(no client SPIFFE ID)");
    // Unlisted route: default deny once the port has rules.
    decide(
        &az,
        8000,
        docservice,
        "GET",
        "/web-apps/apps/api/documents/api.js",
        &[],
        b"",
    )
    .await
    .denied(Cause::Forbidden, "no rule matches this route");
    // Dot segments cannot walk out of an allowed prefix.
    decide(
        &az,
        8000,
        prober,
        "GET",
        "/healthcheck/../coauthoring/CommandService.ashx",
        &[],
        b"",
    )
    .await
    .denied(Cause::Forbidden, "dot segments");
    decide(
        &az,
        8000,
        prober,
        "GET",
        "/healthcheck/%2e%2e/admin",
        &[],
        b"",
    )
    .await
    .denied(Cause::Forbidden, "dot segments");
    // A port without rules is open to every authenticated peer.
    decide(&az, 9000, portal, "DELETE", "/anything", &[], b"")
        .await
        .allowed();
}

#[test]
fn tcp_rules_use_only_route_free_rules() {
    let az = authorizer(RULES);
    let docservice = id("spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice");
    let converter = id("spiffe://onlyoffice.local/ns/onlyoffice/sa/converter");
    assert!(matches!(
        az.authorize_tcp(5432, Some(&docservice)),
        Decision::Allow { client_id: Some(ref c), tenant: None } if *c == docservice
    ));
    match az.authorize_tcp(5432, Some(&converter)) {
        Decision::Deny { cause: Cause::Forbidden, detail, .. } => assert_eq!(
            detail,
            "SPIFFE ID spiffe://onlyoffice.local/ns/onlyoffice/sa/converter is not allowed for TCP port 5432 by rules [postgres clients]"
        ),
        other => panic!("{other:?}"),
    }
    // Port 8000 only has HTTP route rules: opaque TCP to it is refused, and the detail says why.
    match az.authorize_tcp(8000, Some(&docservice)) {
        Decision::Deny {
            cause: Cause::Forbidden,
            detail,
            reason: "spiffe-id-not-allowed",
        } => {
            assert!(
                detail.contains("no rule without methods or path applies to opaque TCP"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(az.authorize_tcp(6379, None).is_allow());
    // Decisions are counted per pair by the inbound (docmesh_authz_decisions_total), see
    // authz_e2e::opaque_tcp_is_admitted_or_closed_by_spiffe_rules.
}

#[test]
fn bad_rules_are_configuration_errors_naming_the_field() {
    let cases = [
        (
            "[[spiffe]]\nport = 1\nallow = [\"http://x/y\"]",
            "authz.spiffe[0].allow: \"http://x/y\" does not start with spiffe://",
        ),
        (
            "[[spiffe]]\nport = 1\nallow = [\"spiffe://Upper/x\"]",
            "trust domain must be lowercase",
        ),
        (
            "[[spiffe]]\nport = 1\nallow = [\"spiffe://td/a//b\"]",
            "path segments",
        ),
        (
            "[[spiffe]]\nport = 1\nallow = [\"spiffe://td/a/../b\"]",
            "path segments",
        ),
        (
            "[[spiffe]]\nallow = [\"spiffe://td\"]",
            "authz.spiffe[0].port is missing",
        ),
        (
            "[[spiffe]]\nport = 1\nmethods = [\"GE T\"]",
            "is not an HTTP method",
        ),
        (
            "[[spiffe]]\nport = 1\npath_prefix = \"x\"",
            "must start with /",
        ),
        (
            "[[tenants.permissions]]\ntenant = \"acme\"\nservice = \"nope\"",
            "service \"nope\" is not declared in [authz.services]",
        ),
        (
            "[[tenants.permissions]]\ntenant = \"../etc\"",
            "is not a tenant name",
        ),
        ("[jwt]\nenabled = true", "needs a key"),
        (
            "[[tenants.permissions]]\ntenant = \"acme\"",
            "needs authz.jwt.enabled",
        ),
        ("[jwt]\nenabled = true\nsecret = \"\"", "empty HMAC key"),
        (
            "[jwt]\nenabled = true\nsecret = \"x\"\nalgorithms = [\"RS256\"]",
            "is not HS256, HS384 or HS512",
        ),
        (
            "[jwt]\nenabled = true\nsecret_file = \"/nonexistent/secret\"",
            "key file /nonexistent/secret",
        ),
    ];
    for (toml_text, needle) in cases {
        let cfg: docmesh_proxy::config::authz::AuthzConfig = toml::from_str(toml_text).unwrap();
        let err = docmesh_proxy::authz::Authorizer::from_config(&cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{toml_text}: {err:?} lacks {needle:?}"
        );
    }
    // Unknown fields are rejected by the parser, and secrets never appear in Debug output.
    assert!(
        toml::from_str::<docmesh_proxy::config::authz::AuthzConfig>("[jwt]\nsecrett = \"x\"")
            .is_err()
    );
    let cfg: docmesh_proxy::config::authz::AuthzConfig =
        toml::from_str("[jwt]\nsecret = \"top-secret-value\"").unwrap();
    assert!(!format!("{cfg:?}").contains("top-secret-value"));
}

#[test]
fn host_tenant_follows_onlyoffice() {
    let t = |headers: &[(&str, &str)], uri: &str, base: Option<&str>| {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        host_tenant(&map, &uri.parse().unwrap(), base, "localhost")
    };
    let base = Some("docs.example.com");
    assert_eq!(t(&[("host", "acme.docs.example.com")], "/", base), "acme");
    assert_eq!(
        t(&[("host", "ACME.docs.example.com:8443")], "/", base),
        "acme"
    );
    assert_eq!(
        t(&[("host", "docs.example.com")], "/", base),
        "docs.example.com"
    );
    assert_eq!(
        t(&[("host", "evil-docs.example.com")], "/", base),
        "evil-docs.example.com"
    );
    assert_eq!(t(&[("host", "other.org:80")], "/", base), "other.org");
    assert_eq!(t(&[("host", "[::1]:8000")], "/", None), "[::1]");
    assert_eq!(t(&[], "/", base), "localhost");
    assert_eq!(
        t(&[], "http://globex.docs.example.com:80/x", base),
        "globex"
    );
    // X-Forwarded-Host wins over Host; its first value only.
    let xfh = [
        ("host", "acme.docs.example.com"),
        (
            "x-forwarded-host",
            "globex.docs.example.com, proxy.internal",
        ),
    ];
    assert_eq!(t(&xfh, "/", base), "globex");
    let xfh2 = [
        ("x-forwarded-host", "initech.docs.example.com:443"),
        ("x-forwarded-host", "acme.docs.example.com"),
    ];
    assert_eq!(t(&xfh2, "/", base), "initech");
}

#[tokio::test(start_paused = true)]
async fn tenant_secret_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tenants/acme/secret.key",
        b"first-secret-first-secret-first\n",
    );
    let cfg = format!(
        "[jwt]\nenabled = true\ntenant_secrets_dir = \"{}/tenants\"\nreload_interval = \"1s\"\n[tenants]\nbase_domain = \"docs.example.com\"\n",
        dir.path().display()
    );
    let az = std::sync::Arc::new(authorizer(&cfg));
    let _reloader = az.spawn_key_reloader().expect("jwt enabled");
    let claims = serde_json::json!({"payload": {"c": "info"}});
    let first = format!(
        "Bearer {}",
        hs(
            jsonwebtoken::Algorithm::HS256,
            b"first-secret-first-secret-first",
            &claims
        )
    );
    let second = format!(
        "Bearer {}",
        hs(
            jsonwebtoken::Algorithm::HS256,
            b"second-secret-second-secret",
            &claims
        )
    );
    let acme = |auth: &str| {
        [
            ("host", "acme.docs.example.com".to_string()),
            ("authorization", auth.to_string()),
        ]
    };
    let call = |auth: String| {
        let az = az.clone();
        async move {
            let h = acme(&auth);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            decide(&az, 80, None, "GET", "/", &h, b"").await
        }
    };
    assert_eq!(call(first.clone()).await.allowed().as_deref(), Some("acme"));
    call(second.clone())
        .await
        .denied(Cause::Unauthenticated, "bad signature");
    // globex has no key yet.
    let globex = [
        ("host", "globex.docs.example.com"),
        ("authorization", second.as_str()),
    ];
    decide(&az, 80, None, "GET", "/", &globex, b"")
        .await
        .denied(
            Cause::Unauthenticated,
            "unknown tenant key: no secret for tenant \"globex\"",
        );

    write(
        dir.path(),
        "tenants/acme/secret.key",
        b"second-secret-second-secret",
    );
    write(
        dir.path(),
        "tenants/globex/secret.key",
        b"second-secret-second-secret",
    );
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if call(second.clone()).await.decision.is_allow() {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the reloader never picked up the new secret");
    call(first)
        .await
        .denied(Cause::Unauthenticated, "bad signature");
    decide(&az, 80, None, "GET", "/", &globex, b"")
        .await
        .allowed();
    // Nothing changed since: a manual reload reports no change.
    assert!(!az.reload_keys().unwrap());
}

#[tokio::test]
async fn refusals_become_taxonomy_responses() {
    use http_body_util::BodyExt;
    for (cause, status, name) in [
        (Cause::Unauthenticated, 401, "unauthenticated"),
        (Cause::Forbidden, 403, "forbidden"),
        (Cause::PayloadTooLarge, 413, "payload-too-large"),
    ] {
        let resp = docmesh_proxy::errors::error_response(
            cause,
            "the detail",
            docmesh_proxy::errors::Hop::Inbound,
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["docmesh-error"], name);
        let challenge = resp.headers().get("www-authenticate");
        assert_eq!(challenge.is_some(), status == 401, "{name}");
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["cause"], name);
        assert_eq!(v["status"], status);
        assert_eq!(v["hop"], "inbound");
        assert_eq!(v["detail"], "the detail");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

#[test]
fn tcp_to_a_jwt_port_is_refused_and_check_reports_authz_problems() {
    let az =
        authorizer("[jwt]\nenabled = true\nsecret = \"s3cret-s3cret-s3cret\"\nports = [8000]\n");
    match az.authorize_tcp(8000, Some(&id("spiffe://td/a"))) {
        Decision::Deny {
            cause: Cause::Unauthenticated,
            detail,
            reason: "jwt-missing",
        } => {
            assert!(
                detail.contains("port 8000 is in authz.jwt.ports"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(az
        .authorize_tcp(5432, Some(&id("spiffe://td/a")))
        .is_allow());

    let text = "[[authz.spiffe]]\nport = 8000\nallow = [\"https://nope\"]\n";
    let err = docmesh_proxy::check::from_parts(
        Some(text),
        std::path::Path::new("test.toml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("authz") && err.contains("does not start with spiffe://"),
        "{err}"
    );
}
