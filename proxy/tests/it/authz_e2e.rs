//! Authorization end to end through an mTLS sidecar pair: an integrator stand-in calls a
//! document-server stand-in's CommandService with OnlyOffice-style tokens (made by PyJWT).
//! Admitted calls reach the app with `docmesh-client-id` and `docmesh-tenant`; a SPIFFE ID
//! that is not allowed and a tenant that is not permitted get 403, no token gets 401.

use crate::authz_support;
use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{
    bounded, full, h1_client, identity, mtls_options, serve_app, svid, CLIENT_ID, SERVER_ID,
};
use bytes::Bytes;
use docmesh_proxy::config::inbound::{InboundConfig, InboundPortConfig};
use docmesh_proxy::config::observability::ObservabilityConfig;
use docmesh_proxy::config::outbound::Protocol;
use docmesh_proxy::inbound::Inbound;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::observe::Observability;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

const ACME_SECRET: &str = "acme-document-server-secret-0123";
const GLOBEX_SECRET: &str = "globex-document-server-secret-01";
const INTRUDER_ID: &str = "spiffe://example.org/ns/elsewhere/sa/intruder";
const CMD: &str = "/coauthoring/CommandService.ashx";

/// The document-server stand-in: answers `{"error":0}` and reports, in `x-seen-*` headers,
/// the identity headers it received; echoes the request body in `x-seen-body`.
async fn start_document_server() -> SocketAddr {
    serve_app(|req: http::Request<hyper::body::Incoming>| async move {
        let seen = |n: &str| {
            req.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let (client, tenant) = (seen("docmesh-client-id"), seen("docmesh-tenant"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let resp = http::Response::builder()
            .header("x-seen-client-id", client)
            .header("x-seen-tenant", tenant)
            .header("x-seen-body-len", body.len().to_string())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"{\"error\":0}",
            )))
            .unwrap();
        Ok::<_, Infallible>(resp)
    })
    .await
}

struct Mesh {
    ca: docmesh_certs::ca::CertificateAuthority,
    inbound: SocketAddr,
    lifecycle: Lifecycle,
    metrics: Metrics,
    /// The inbound sidecar's access log lines.
    log: tokio::sync::Mutex<tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// The document server behind an inbound sidecar with the OnlyOffice authz profile.
    async fn start() -> Mesh {
        let app = start_document_server().await;
        let dir = tempfile::tempdir().unwrap();
        authz_support::write(
            dir.path(),
            "tenants/acme/secret.key",
            ACME_SECRET.as_bytes(),
        );
        authz_support::write(
            dir.path(),
            "tenants/globex/secret.key",
            GLOBEX_SECRET.as_bytes(),
        );
        let cfg = format!(
            r#"
            [services]
            documentserver = {port}

            [[spiffe]]
            name = "OnlyOffice namespace"
            port = {port}
            methods = ["POST"]
            path_prefix = "/coauthoring/"
            allow = ["spiffe://example.org/ns/oo/"]

            [jwt]
            enabled = true
            header = "AuthorizationJwt"
            in_body = true
            tenant_secrets_dir = "{dir}/tenants"

            [tenants]
            base_domain = "docs.example.org"
            [[tenants.permissions]]
            tenant = "acme"
            service = "documentserver"
            methods = ["POST"]
            path_prefix = "{CMD}"
            "#,
            port = app.port(),
            dir = dir.path().display(),
        );
        Mesh::start_with(app, &cfg, dir).await
    }

    /// `app` behind an inbound sidecar with the `[authz]` section `cfg`.
    async fn start_with(app: SocketAddr, cfg: &str, dir: tempfile::TempDir) -> Mesh {
        let ca = support::dev_ca("example.org");
        let az = authz_support::authorizer(cfg);
        let lifecycle = Lifecycle::new();
        let metrics = Metrics::new();
        let icfg = InboundConfig {
            transparent: false,
            mode: docmesh_proxy::config::inbound::InboundMode::Strict,
            ports: vec![InboundPortConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                app_port: app.port(),
            }],
            ..InboundConfig::default()
        };
        let server = identity(&svid(&ca, SERVER_ID), &[&ca]);
        let inbound = Inbound::new(
            &icfg,
            docmesh_proxy::inbound::MeshServer::Mtls(server),
            lifecycle.clone(),
            &metrics,
        );
        inbound.set_authorizer(Arc::new(az));
        let (log_w, log_r) = tokio::io::duplex(1 << 20);
        inbound.set_observability(Observability::with_log_writer(
            &ObservabilityConfig::default(),
            &metrics,
            log_w,
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let port = app.port();
        tokio::spawn(async move { inbound.serve_port(l, port).await });
        Mesh {
            ca,
            inbound: addr,
            lifecycle,
            metrics,
            log: tokio::sync::Mutex::new(tokio::io::AsyncBufReadExt::lines(
                tokio::io::BufReader::new(log_r),
            )),
            _dir: dir,
        }
    }

    /// The inbound's next access log line.
    async fn access_line(&self) -> serde_json::Value {
        let line = bounded(self.log.lock().await.next_line())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// An outbound sidecar for a caller with SPIFFE ID `client`; returns where its app connects.
    async fn caller(&self, client: &str) -> SocketAddr {
        self.caller_with(client, Protocol::Detect).await
    }

    async fn caller_with(&self, client: &str, protocol: Protocol) -> SocketAddr {
        let mut opts = mtls_options(
            identity(&svid(&self.ca, client), &[&self.ca]),
            identity(&svid(&self.ca, SERVER_ID), &[&self.ca]),
        );
        opts.protocol = protocol;
        support::start_outbound(
            vec![self.inbound.to_string()],
            &opts,
            &self.lifecycle,
            &self.metrics,
        )
        .await
    }
}

struct Answer {
    status: u16,
    cause: String,
    client_id: String,
    tenant: String,
    body_len: String,
    body: String,
}

async fn call(outbound: SocketAddr, host: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut c = h1_client(outbound).await;
    let mut b = http::Request::post(CMD)
        .header("host", host)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = bounded(c.send_request(b.body(full(body.to_string())).unwrap()))
        .await
        .unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, cause, client_id, tenant, body_len) = (
        resp.status().as_u16(),
        h("docmesh-error"),
        h("x-seen-client-id"),
        h("x-seen-tenant"),
        h("x-seen-body-len"),
    );
    Answer {
        status,
        cause,
        client_id,
        tenant,
        body_len,
        body: support::text(resp).await,
    }
}

fn detail(a: &Answer) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body));
    v["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn onlyoffice_command_service_through_an_authorizing_sidecar_pair() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let acme = authz_support::pyjwt(now, ACME_SECRET);
    let globex = authz_support::pyjwt(now, GLOBEX_SECRET);
    let mesh = Mesh::start().await;
    let integrator = mesh.caller(CLIENT_ID).await;
    let intruder = mesh.caller(INTRUDER_ID).await;
    let request = r#"{"c":"info","key":"doc-1"}"#;
    let acme_host = "acme.docs.example.org";

    // Admitted: header form (`AuthorizationJwt: Bearer`), forged identity headers replaced.
    let bearer = format!("Bearer {}", acme.tokens["hs256_header"]);
    let a = call(
        integrator,
        acme_host,
        &[
            ("AuthorizationJwt", &bearer),
            ("docmesh-client-id", "spiffe://example.org/ns/oo/sa/admin"),
            ("docmesh-tenant", "globex"),
        ],
        request,
    )
    .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "{\"error\":0}"),
        "cause {}",
        a.cause
    );
    assert_eq!(
        a.client_id, CLIENT_ID,
        "the app sees the verified SPIFFE ID only"
    );
    assert_eq!(a.tenant, "acme", "the app sees the verified tenant only");
    assert_eq!(a.body_len, request.len().to_string());
    let line = mesh.access_line().await;
    assert_eq!(
        (line["status"].as_u64(), line["tenant"].as_str()),
        (Some(200), Some("acme")),
        "the access log (and the span) name the verified tenant: {line}"
    );
    assert_eq!(line["bytes_received"], request.len(), "{line}");

    // Admitted: body form (JWT_IN_BODY), the buffered body reaches the app whole.
    let body = serde_json::json!({"c": "info", "key": "doc-1", "token": acme.tokens["hs512_body"]})
        .to_string();
    let a = call(integrator, acme_host, &[], &body).await;
    assert_eq!(a.status, 200, "cause {}: {}", a.cause, a.body);
    assert_eq!(
        (a.client_id.as_str(), a.tenant.as_str()),
        (CLIENT_ID, "acme")
    );
    assert_eq!(a.body_len, body.len().to_string());

    // Refused: a SPIFFE ID the rules do not allow, with a perfectly good token.
    let a = call(
        intruder,
        acme_host,
        &[("AuthorizationJwt", &bearer)],
        request,
    )
    .await;
    assert_eq!((a.status, a.cause.as_str()), (403, "forbidden"));
    assert!(
        detail(&a).contains(INTRUDER_ID) && detail(&a).contains("[OnlyOffice namespace]"),
        "{}",
        a.body
    );
    assert!(
        a.client_id.is_empty(),
        "a refused call never reaches the app"
    );

    // Refused: a tenant that is not permitted (valid globex token on globex's host).
    let g = format!("Bearer {}", globex.tokens["hs256_header"]);
    let a = call(
        integrator,
        "globex.docs.example.org:443",
        &[("AuthorizationJwt", &g)],
        request,
    )
    .await;
    assert_eq!((a.status, a.cause.as_str()), (403, "forbidden"));
    assert!(
        detail(&a).contains("tenant not permitted: tenant \"globex\""),
        "{}",
        a.body
    );

    // Refused: a token of another tenant's key on acme's host.
    let a = call(integrator, acme_host, &[("AuthorizationJwt", &g)], request).await;
    assert_eq!((a.status, a.cause.as_str()), (401, "unauthenticated"));
    assert!(detail(&a).contains("bad signature"), "{}", a.body);

    // Refused: no token.
    let a = call(integrator, acme_host, &[], request).await;
    assert_eq!((a.status, a.cause.as_str()), (401, "unauthenticated"));
    assert!(detail(&a).contains("missing token"), "{}", a.body);
    assert!(a.client_id.is_empty());

    // Refused: a path the SPIFFE rules do not cover (default deny on a governed port).
    let mut c = h1_client(integrator).await;
    let resp = bounded(c.send_request(support::get("/healthcheck", acme_host)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn opaque_tcp_is_admitted_or_closed_by_spiffe_rules() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = support::start_tcp_echo().await;
    let cfg = format!(
        "[[spiffe]]\nname = \"database clients\"\nport = {}\nallow = [\"{CLIENT_ID}\"]\n",
        echo.port()
    );
    let mesh = Mesh::start_with(echo, &cfg, tempfile::tempdir().unwrap()).await;
    let allowed = mesh.caller_with(CLIENT_ID, Protocol::Opaque).await;
    let refused = mesh.caller_with(INTRUDER_ID, Protocol::Opaque).await;

    let mut s = tokio::net::TcpStream::connect(allowed).await.unwrap();
    s.write_all(b"ping over opaque mTLS").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ping over opaque mTLS");

    // The intruder's connection is closed by the inbound sidecar: nothing is echoed.
    let mut s = tokio::net::TcpStream::connect(refused).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = bounded(s.read_to_end(&mut got)).await;
    assert!(
        got.is_empty(),
        "a refused TCP peer reached the app: {got:?}"
    );

    // Both decisions are counted once, per inbound pair, in the Prometheus family.
    let text = mesh.metrics.encode().unwrap();
    let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples;
    let count = |source: &str, decision: &str, reason: &str| -> f64 {
        let found: Vec<_> = samples
            .iter()
            .filter(|s| {
                s.metric == "docmesh_authz_decisions_total"
                    && s.labels.get("direction") == Some("inbound")
                    && s.labels.get("source") == Some(source)
                    && s.labels.get("decision") == Some(decision)
                    && s.labels.get("reason") == Some(reason)
            })
            .collect();
        assert_eq!(found.len(), 1, "{source} {decision} {reason}: {text}");
        match found[0].value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("not a counter: {other:?}"),
        }
    };
    assert_eq!(count(CLIENT_ID, "allow", "allow"), 1.0);
    assert_eq!(count(INTRUDER_ID, "deny", "spiffe-id-not-allowed"), 1.0);
}
