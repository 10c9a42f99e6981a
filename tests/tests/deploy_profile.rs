//! The OnlyOffice mesh profile (`examples/onlyoffice/*.toml` and the explicit-mode variants in
//! `examples/compose/explicit/`): every file passes `docmesh-proxy check` (the same
//! `Config` loader, with an empty environment), the identities match the SVID list, and the
//! resolved resilience and authorization policies do what the comments promise, pair by pair.

use std::path::{Path, PathBuf};
use std::time::Duration;

use docmesh_certs::spiffe_id::SpiffeId;
use docmesh_proxy::authz::{Authorizer, Decision};
use docmesh_proxy::config::Config;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::resilience::resolve::service_policy_for;
use http::Method;

mod deploy_support;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://onlyoffice.local/ns/onlyoffice/sa/{sa}")
        .parse()
        .unwrap()
}

fn load(path: &Path) -> Config {
    deploy_support::check(path)
        .unwrap_or_else(|e| panic!("{} does not pass check:\n{e}", path.display()))
}

fn profile(svc: &str) -> Config {
    load(&examples().join(format!("onlyoffice/{svc}.toml")))
}

#[test]
fn every_profile_config_passes_check() {
    for dir in ["onlyoffice", "compose/explicit"] {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(examples().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path);
                found.push(path.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
        found.sort();
        let mut want: Vec<String> = deploy_support::MESH.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(found, want, "configs in examples/{dir}");
    }
}

#[test]
fn check_rejects_a_misspelled_field_in_the_profile() {
    // The checker the other tests rely on is strict: one typo is named with its path.
    let path = examples().join("onlyoffice/ingress.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("expect_body = \"true\"", "expect_bdy = \"true\"");
    let e = docmesh_proxy::check::from_parts(Some(&text), &path, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expect_bdy"), "{e}");
}

#[test]
fn identities_match_the_svid_list_and_the_compose_certs_layout() {
    let list = std::fs::read_to_string(examples().join("onlyoffice/svids.list")).unwrap();
    let issued: Vec<&str> = list
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    for svc in deploy_support::MESH {
        assert!(
            issued.contains(&id(svc).to_string().as_str()),
            "{svc} not issued"
        );
        for dir in ["onlyoffice", "compose/explicit"] {
            let c = load(&examples().join(format!("{dir}/{svc}.toml")));
            // docmesh-certs issue --from writes <out>/<last path segment>/svid.pem.
            let want = format!("/etc/docmesh/certs/{svc}/");
            for p in [&c.identity.cert, &c.identity.key, &c.identity.bundle] {
                assert!(p.to_string_lossy().starts_with(&want), "{dir}/{svc}: {p:?}");
            }
            for s in &c.outbound.services {
                assert!(
                    issued.contains(&s.spiffe_id.as_str()),
                    "{dir}/{svc}: {} expects {} which is never issued",
                    s.name,
                    s.spiffe_id
                );
                assert_eq!(s.spiffe_id, id(&s.name).to_string(), "{dir}/{svc}");
            }
        }
    }
}

#[test]
fn opaque_ports_cover_the_databases_and_queues() {
    for svc in ["ingress", "documentserver", "converter", "integrator"] {
        let c = profile(svc);
        for port in [5432, 3306, 6379, 5672] {
            assert!(c.outbound.opaque_ports.contains(&port), "{svc}: {port}");
        }
        for s in &c.outbound.services {
            let opaque = matches!(s.name.as_str(), "postgresql" | "rabbitmq" | "redis");
            assert_eq!(
                s.protocol == docmesh_proxy::config::outbound::Protocol::Opaque,
                opaque,
                "{svc}: {}",
                s.name
            );
        }
    }
}

#[test]
fn resilience_per_pair_is_what_the_comments_say() {
    let at_least = |d: Option<Duration>, min: Duration, what: &str| {
        let d = d.unwrap_or_else(|| panic!("{what}: timeout disabled"));
        assert!(d >= min, "{what}: {d:?} < {min:?}");
    };
    // integrator -> documentserver: long synchronous conversions, body-matched health check.
    let c = profile("integrator");
    let ds = service_policy_for(&c.resilience, "documentserver", &c.outbound);
    let convert = ds.route(&Method::POST, "/ConvertService.ashx?async=false");
    at_least(
        convert.timeouts.response_headers,
        Duration::from_secs(30 * 60),
        "ConvertService",
    );
    at_least(
        convert.timeouts.request,
        Duration::from_secs(30 * 60),
        "ConvertService request",
    );
    at_least(
        ds.route(&Method::POST, "/docbuilder")
            .timeouts
            .response_headers,
        Duration::from_secs(30 * 60),
        "docbuilder",
    );
    let hc = ds
        .health_check
        .as_ref()
        .expect("health check on documentserver");
    assert_eq!(hc.path, "/healthcheck");
    assert_eq!(hc.expect_body.as_deref(), Some("true"));

    // ingress -> documentserver: WebSocket idle well above socket.io's 25 s + 20 s, on the
    // versioned path too.
    let c = profile("ingress");
    let ds = service_policy_for(&c.resilience, "documentserver", &c.outbound);
    for path in [
        "/8.2.2-1/doc/abc/c/?EIO=4&transport=websocket",
        "/doc/abc/c/",
    ] {
        let idle = ds.route(&Method::GET, path).timeouts.stream_idle;
        at_least(idle, Duration::from_secs(90), path);
    }
    let hc = ds
        .health_check
        .as_ref()
        .expect("health check on documentserver");
    assert_eq!(hc.expect_body.as_deref(), Some("true"));

    // documentserver -> integrator: callbacks wait up to OnlyOffice's 10 min and are retried at
    // most once (and, being POSTs, only when nothing was sent: retry.rs); downloads 2 min.
    let c = profile("documentserver");
    let integ = service_policy_for(&c.resilience, "integrator", &c.outbound);
    let cb = integ.route(&Method::POST, "/track?filename=a.docx");
    at_least(
        cb.timeouts.response_headers,
        Duration::from_secs(600),
        "callback",
    );
    assert!(
        cb.retry.max_attempts <= 2,
        "callback attempts {}",
        cb.retry.max_attempts
    );
    let dl = integ.route(&Method::GET, "/download?fileName=a.docx");
    at_least(
        dl.timeouts.response_headers,
        Duration::from_secs(120),
        "download",
    );
    // Long-lived database and queue connections are never cut for idleness.
    for svc in ["postgresql", "rabbitmq", "redis"] {
        let p = service_policy_for(&c.resilience, svc, &c.outbound);
        assert_eq!(p.default_route.timeouts.stream_idle, None, "{svc}");
    }
}

#[test]
fn explicit_variants_keep_the_same_resilience_and_authz() {
    for svc in deploy_support::MESH {
        let read = |p: PathBuf| -> toml::Table {
            toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let t = read(examples().join(format!("onlyoffice/{svc}.toml")));
        let e = read(examples().join(format!("compose/explicit/{svc}.toml")));
        for section in ["resilience", "authz", "identity", "admin"] {
            assert_eq!(t.get(section), e.get(section), "{svc}: [{section}]");
        }
        let c = load(&examples().join(format!("compose/explicit/{svc}.toml")));
        assert!(!c.inbound.transparent && !c.outbound.transparent, "{svc}");
        // Every mesh service has a local listener on its usual port. The mesh port is the app
        // port + 20000, except RabbitMQ's: 25672 is its Erlang distribution port, so 25673.
        for s in &c.outbound.services {
            let port: u16 = s.addresses[0].rsplit(':').next().unwrap().parse().unwrap();
            assert_ne!(
                port, 25672,
                "{svc}: {} on RabbitMQ's distribution port",
                s.name
            );
            let offset = if s.name == "rabbitmq" { 20001 } else { 20000 };
            assert!(
                c.outbound
                    .listeners
                    .iter()
                    .any(|l| l.service == s.name && l.listen.port() == port - offset),
                "{svc}: no listener for {}",
                s.name
            );
        }
    }
}

fn authorizer(svc: &str, dir: &Path) -> Authorizer {
    let mut c = profile(svc);
    if c.authz.jwt.enabled {
        let secret = dir.join("secret");
        std::fs::write(&secret, "profile-test-secret").unwrap();
        c.authz.jwt.secret_file = Some(secret);
    }
    Authorizer::from_config(&c.authz).unwrap()
}

async fn http(
    a: &Authorizer,
    port: u16,
    client: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Decision {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("Authorization", format!("Bearer {t}"));
    }
    let (mut parts, ()) = b.body(()).unwrap().into_parts();
    let body = http_body_util::Empty::<bytes::Bytes>::new();
    a.authorize_http(port, Some(&id(client)), &mut parts, body)
        .await
        .0
}

fn denied(d: &Decision) -> Option<Cause> {
    match d {
        Decision::Allow { .. } => None,
        Decision::Deny { cause, .. } => Some(*cause),
    }
}

#[tokio::test]
async fn authz_allows_exactly_the_onlyoffice_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let ds = authorizer("documentserver", dir.path());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"payload": {"c": "info", "key": "k1"}}),
        &jsonwebtoken::EncodingKey::from_secret(b"profile-test-secret"),
    )
    .unwrap();
    let cmd = "/coauthoring/CommandService.ashx";
    // ingress -> documentserver: the editor and co-editing.
    let d = http(
        &ds,
        8888,
        "ingress",
        Method::GET,
        "/web-apps/apps/api/documents/api.js",
        None,
    );
    assert_eq!(denied(&d.await), None);
    // integrator -> documentserver: API calls need OnlyOffice's JWT; /healthcheck does not.
    let d = http(&ds, 8888, "integrator", Method::POST, cmd, Some(&token)).await;
    assert_eq!(denied(&d), None);
    let d = http(&ds, 8888, "integrator", Method::POST, cmd, None).await;
    assert_eq!(denied(&d), Some(Cause::Unauthenticated));
    let d = http(&ds, 8888, "integrator", Method::GET, "/healthcheck", None).await;
    assert_eq!(denied(&d), None);
    // The converter never calls the document server; the integrator may not POST elsewhere.
    let d = http(&ds, 8888, "converter", Method::POST, cmd, Some(&token)).await;
    assert_eq!(denied(&d), Some(Cause::Forbidden));
    let d = http(
        &ds,
        8888,
        "integrator",
        Method::POST,
        "/upload",
        Some(&token),
    )
    .await;
    assert_eq!(denied(&d), Some(Cause::Forbidden));

    // documentserver/converter -> integrator: callbacks and downloads.
    let integ = authorizer("integrator", dir.path());
    let d = http(
        &integ,
        3000,
        "documentserver",
        Method::POST,
        "/track?f=a.docx",
        None,
    )
    .await;
    assert_eq!(denied(&d), None);
    let d = http(
        &integ,
        3000,
        "converter",
        Method::GET,
        "/download?f=a.docx",
        None,
    )
    .await;
    assert_eq!(denied(&d), None);
    let d = http(
        &integ,
        3000,
        "converter",
        Method::POST,
        "/track?f=a.docx",
        None,
    )
    .await;
    assert_eq!(denied(&d), Some(Cause::Forbidden));

    // Opaque backends: only the services that use them.
    for (svc, port, allowed, refused) in [
        (
            "postgresql",
            5432,
            &["documentserver", "converter"][..],
            &["ingress", "integrator"][..],
        ),
        (
            "rabbitmq",
            5672,
            &["documentserver", "converter"],
            &["integrator"],
        ),
        (
            "redis",
            6379,
            &["documentserver"],
            &["converter", "ingress"],
        ),
    ] {
        let a = authorizer(svc, dir.path());
        for c in allowed {
            assert_eq!(
                denied(&a.authorize_tcp(port, Some(&id(c)))),
                None,
                "{c} -> {svc}"
            );
        }
        for c in refused {
            assert_eq!(
                denied(&a.authorize_tcp(port, Some(&id(c)))),
                Some(Cause::Forbidden),
                "{c} -> {svc}"
            );
        }
    }
}
