//! Sidecar pairs of real `docmesh-proxy run` processes: [`ProcessMesh`] (a working directory
//! and a dev CA, explicit-mode configs, processes that are ready once every listener of their
//! config is bound) and [`ProcessPair`] (the usual client + server pair in front of one app,
//! mTLS between them).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use prometheus_parse::{Sample, Scrape};
use serde_json::Value as Json;

use super::process::{explicit_client_toml, explicit_server_toml, identity_toml, ProxyProcess};
use super::{bounded, dev_ca, get, h1_client, svid, text, CertificateAuthority};
use super::{CLIENT_ID, SERVER_ID};

/// Listener field of the server's first inbound port.
pub const FIRST_INBOUND: &str = "inbound.ports[0].listen";
/// Listener field of the client's first outbound listener.
pub const FIRST_OUTBOUND: &str = "outbound.listeners[0].listen";

/// A working directory (configs, certificates) and a dev CA for `example.org`, shared by the
/// `docmesh-proxy` processes of one test.
pub struct ProcessMesh {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl ProcessMesh {
    pub fn new() -> ProcessMesh {
        ProcessMesh {
            dir: tempfile::tempdir().unwrap(),
            ca: dev_ca("example.org"),
        }
    }

    /// The `[identity]` and `[admin]` sections of process `name`, holding an SVID for
    /// `spiffe_id` (see [`identity_toml`]).
    pub fn identity(&self, name: &str, spiffe_id: &str) -> String {
        identity_toml(self.dir.path(), name, &svid(&self.ca, spiffe_id), &self.ca)
    }

    /// The config of the server sidecar (SERVER_ID): one explicit inbound port in front of the
    /// app at `app_port`.
    pub fn server_toml(&self, app_port: u16) -> String {
        explicit_server_toml(&self.identity("server", SERVER_ID), app_port)
    }

    /// The config of client sidecar `name` (CLIENT_ID): one outbound listener for the service
    /// `documentserver` at `inbound`.
    pub fn client_toml(&self, name: &str, inbound: &str) -> String {
        explicit_client_toml(&self.identity(name, CLIENT_ID), inbound)
    }

    /// Starts process `name` with `config` and waits until its admin server and every
    /// explicit listener of the config (`[[inbound.ports]]`, `[[outbound.listeners]]`) are
    /// bound.
    pub async fn start(&self, name: &str, config: &str) -> ProxyProcess {
        let fields = listener_fields(config);
        let want: Vec<&str> = fields.iter().map(String::as_str).collect();
        ProxyProcess::start(self.dir.path(), name, config, &want).await
    }

    /// Starts the server sidecar ([`ProcessMesh::server_toml`] followed by `extra`).
    pub async fn start_server(&self, app_port: u16, extra: &str) -> ProxyProcess {
        self.start("server", &(self.server_toml(app_port) + extra))
            .await
    }

    /// Starts the client sidecar ([`ProcessMesh::client_toml`] for the server's first inbound
    /// port, followed by `extra`).
    pub async fn start_client(&self, server: &ProxyProcess, extra: &str) -> ProxyProcess {
        let inbound = &server.listening[FIRST_INBOUND];
        self.start("client", &(self.client_toml("client", inbound) + extra))
            .await
    }
}

impl Default for ProcessMesh {
    fn default() -> Self {
        Self::new()
    }
}

/// The field paths (`inbound.ports[N].listen`, `outbound.listeners[N].listen`) of the
/// explicit listeners `config` declares, as the proxy logs them when they are bound.
fn listener_fields(config: &str) -> Vec<String> {
    let table: toml::Table = config
        .parse()
        .unwrap_or_else(|e| panic!("the test config is not TOML: {e}\n{config}"));
    let count = |section: &str, list: &str| {
        table
            .get(section)
            .and_then(|s| s.get(list))
            .and_then(|l| l.as_array())
            .map_or(0, Vec::len)
    };
    let inbound = (0..count("inbound", "ports")).map(|i| format!("inbound.ports[{i}].listen"));
    let outbound =
        (0..count("outbound", "listeners")).map(|i| format!("outbound.listeners[{i}].listen"));
    inbound.chain(outbound).collect()
}

/// A client and a server sidecar process (mTLS between them) in front of one app.
pub struct ProcessPair {
    pub mesh: ProcessMesh,
    pub client: ProxyProcess,
    pub server: ProxyProcess,
    /// The client's first outbound listener (service `documentserver`).
    pub outbound: SocketAddr,
}

impl ProcessPair {
    /// The plain pair in front of the app at `app_port`.
    pub async fn start(app_port: u16) -> ProcessPair {
        ProcessPair::start_with(app_port, "", "").await
    }

    /// The pair with `server_extra` and `client_extra` appended to the configs of
    /// [`ProcessMesh::start_server`] and [`ProcessMesh::start_client`].
    pub async fn start_with(app_port: u16, server_extra: &str, client_extra: &str) -> ProcessPair {
        let mesh = ProcessMesh::new();
        let server = mesh.start_server(app_port, server_extra).await;
        let client = mesh.start_client(&server, client_extra).await;
        let outbound = client.addr(FIRST_OUTBOUND);
        ProcessPair {
            mesh,
            client,
            server,
            outbound,
        }
    }

    /// The next access lines matching `pred` of both sidecars: (outbound, inbound).
    pub async fn access_lines(&mut self, pred: impl Fn(&Json) -> bool) -> (Json, Json) {
        let out = self.client.access_line(&pred).await;
        let inb = self.server.access_line(&pred).await;
        (out, inb)
    }

    /// The next access lines of both sidecars for requests to `path`: (outbound, inbound).
    pub async fn path_lines(&mut self, path: &str) -> (Json, Json) {
        self.access_lines(|v| v["path"] == path).await
    }

    /// SIGTERM to the client, then the server; each must drain and exit 0.
    pub async fn terminate(&mut self) {
        self.client.terminate().await;
        self.server.terminate().await;
    }
}

/// GET `path` (host `documentserver`, with `traceparent` when given) through the outbound
/// listener `outbound`: the response head and its whole body.
pub async fn get_through(
    outbound: SocketAddr,
    path: &str,
    traceparent: Option<&str>,
) -> (http::response::Parts, Bytes) {
    let mut c = h1_client(outbound).await;
    let mut req = get(path, "documentserver");
    if let Some(tp) = traceparent {
        req.headers_mut().insert("traceparent", tp.parse().unwrap());
    }
    let resp = bounded(c.send_request(req)).await.unwrap();
    let (head, body) = resp.into_parts();
    let body = bounded(body.collect()).await.unwrap().to_bytes();
    (head, body)
}

/// The text of the admin `/metrics` endpoint at `admin`.
pub async fn admin_metrics(admin: &str) -> String {
    let mut c = h1_client(admin.parse().unwrap()).await;
    let resp = bounded(c.send_request(get("/metrics", "admin")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    text(resp).await
}

/// The admin `/metrics` endpoint at `admin`, read with a Prometheus text-format parser.
pub async fn admin_samples(admin: &str) -> Vec<Sample> {
    let text = admin_metrics(admin).await;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}
