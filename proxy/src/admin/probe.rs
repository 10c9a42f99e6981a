//! `/app-health/<container>/<probe>`: the app's own Kubernetes probes, performed by the
//! sidecar over loopback.
//!
//! The kubelet probes in plaintext from the node; on a captured port the strict inbound
//! refuses that. `docmesh-init inject` therefore points the app's `httpGet`, `tcpSocket` and
//! `grpc` probes at this endpoint on the admin port (never captured) and hands the originals
//! to the sidecar in `DOCMESH_APP_PROBES`: a JSON object from `<container>/<probe>` to the
//! probe's handler as Kubernetes writes it (`{"httpGet": {"path": "/", "port": 8000}}`, plus
//! `timeoutSeconds`). The sidecar runs the original probe against `127.0.0.1` (loopback is
//! never redirected) and answers 200 when it passes, 503 with the reason when it fails.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpStream;

/// Environment variable holding the app probes (JSON), set by `docmesh-init inject`.
pub const ENV_VAR: &str = "DOCMESH_APP_PROBES";
/// Path prefix of the app probe endpoint.
pub const PATH_PREFIX: &str = "/app-health/";

/// Why `DOCMESH_APP_PROBES` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    /// Not the JSON shape described in the module documentation.
    #[error("{ENV_VAR} is not a JSON object of Kubernetes probe handlers: {0}")]
    Json(#[from] serde_json::Error),
    /// A probe names no handler, or one the sidecar cannot perform.
    #[error("{ENV_VAR}: probe {name:?}: {reason}")]
    Probe {
        /// `<container>/<probe>`.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A probe handler as Kubernetes writes it (the fields the sidecar uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawPort>,
    grpc: Option<RawGrpc>,
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: u16,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RawPort {
    port: u16,
}

#[derive(Debug, Clone, Deserialize)]
struct RawGrpc {
    port: u16,
    service: Option<String>,
}

/// One app probe the sidecar performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProbe {
    /// `GET path` on `127.0.0.1:port`; 200-399 passes, as for the kubelet.
    Http {
        /// Port of the app.
        port: u16,
        /// Path and query.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
        /// How long the probe may take.
        timeout: Duration,
    },
    /// A TCP connect to `127.0.0.1:port`.
    Tcp {
        /// Port of the app.
        port: u16,
        /// How long the connect may take.
        timeout: Duration,
    },
    /// `grpc.health.v1.Health/Check` on `127.0.0.1:port`; `SERVING` passes.
    Grpc {
        /// Port of the app.
        port: u16,
        /// Service name in the request (empty: the server as a whole).
        service: String,
        /// How long the call may take.
        timeout: Duration,
    },
}

/// The app probes by `<container>/<probe>`.
#[derive(Debug, Clone, Default)]
pub struct AppProbes(HashMap<String, AppProbe>);

impl AppProbes {
    /// Reads [`ENV_VAR`]; unset or empty means no app probes.
    pub fn from_env() -> Result<AppProbes, ProbeConfigError> {
        match std::env::var(ENV_VAR) {
            Ok(v) if !v.trim().is_empty() => AppProbes::from_json(&v),
            _ => Ok(AppProbes::default()),
        }
    }

    /// Parses the JSON object described in the module documentation.
    pub fn from_json(text: &str) -> Result<AppProbes, ProbeConfigError> {
        let raw: HashMap<String, RawProbe> = serde_json::from_str(text)?;
        let mut out = HashMap::new();
        for (name, p) in raw {
            let bad = |reason: &str| ProbeConfigError::Probe {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
                return Err(bad("the name must be `<container>/<probe>`"));
            }
            let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1));
            let probe = match (p.http_get, p.tcp_socket, p.grpc) {
                (Some(h), None, None) => {
                    if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                        return Err(bad("only `scheme: HTTP` can be probed over loopback"));
                    }
                    let path = h.path.unwrap_or_else(|| "/".to_owned());
                    if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                        return Err(bad("httpGet.path must be an absolute path"));
                    }
                    AppProbe::Http {
                        port: h.port,
                        path,
                        headers: h
                            .http_headers
                            .into_iter()
                            .map(|x| (x.name, x.value))
                            .collect(),
                        timeout,
                    }
                }
                (None, Some(t), None) => AppProbe::Tcp {
                    port: t.port,
                    timeout,
                },
                (None, None, Some(g)) => AppProbe::Grpc {
                    port: g.port,
                    service: g.service.unwrap_or_default(),
                    timeout,
                },
                _ => return Err(bad("expected exactly one of httpGet, tcpSocket, grpc")),
            };
            out.insert(name, probe);
        }
        Ok(AppProbes(out))
    }

    /// How many probes are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no probe is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Answers `GET /app-health/<container>/<probe>`.
    pub async fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let name = path.strip_prefix(PATH_PREFIX).unwrap_or(path);
        let Some(probe) = self.0.get(name) else {
            return super::text(
                StatusCode::NOT_FOUND,
                format!("no app probe {name:?} is configured ({ENV_VAR})\n"),
            );
        };
        match run(probe).await {
            Ok(()) => super::text(StatusCode::OK, "ok\n"),
            Err(reason) => {
                tracing::debug!(probe = name, %reason, "app probe failed");
                super::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("app probe {name} failed: {reason}\n"),
                )
            }
        }
    }
}

/// Performs one probe; `Err` says why it failed.
async fn run(probe: &AppProbe) -> Result<(), String> {
    let timeout = match probe {
        AppProbe::Http { timeout, .. }
        | AppProbe::Tcp { timeout, .. }
        | AppProbe::Grpc { timeout, .. } => *timeout,
    };
    match tokio::time::timeout(timeout, run_inner(probe)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))
}

async fn run_inner(probe: &AppProbe) -> Result<(), String> {
    match probe {
        AppProbe::Tcp { port, .. } => connect(*port).await.map(drop),
        AppProbe::Http {
            port,
            path,
            headers,
            ..
        } => {
            let stream = connect(*port).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with 127.0.0.1:{port}: {e}"))?;
            tokio::spawn(conn);
            let mut req = Request::get(path.as_str())
                .header(header::HOST, format!("127.0.0.1:{port}"))
                .header(header::USER_AGENT, "docmesh-probe")
                .header(header::ACCEPT, "*/*");
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| format!("invalid probe request: {e}"))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("GET {path} on 127.0.0.1:{port}: {e}"))?;
            let status = resp.status();
            if (200..400).contains(&status.as_u16()) {
                Ok(())
            } else {
                Err(format!("GET {path} on 127.0.0.1:{port} answered {status}"))
            }
        }
        AppProbe::Grpc { port, service, .. } => grpc_check(*port, service).await,
    }
}

/// `grpc.health.v1.Health/Check` over HTTP/2 cleartext, as the kubelet's gRPC probe does.
async fn grpc_check(port: u16, service: &str) -> Result<(), String> {
    let stream = connect(port).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .header(header::CONTENT_TYPE, "application/grpc")
    .header("te", "trailers")
    .body(Full::new(health_request(service)))
    .map_err(|e| format!("invalid gRPC request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC health check on 127.0.0.1:{port}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("gRPC health check on 127.0.0.1:{port}: {e}"))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => return Err(format!("gRPC health check answered grpc-status {code}")),
        None => {
            return Err(format!(
                "gRPC health check answered HTTP {} without grpc-status",
                parts.status
            ))
        }
    }
    match health_status(collected.to_bytes()) {
        Some(1) => Ok(()),
        Some(s) => Err(format!(
            "gRPC health status is {} (not SERVING)",
            status_name(s)
        )),
        None => Err("gRPC health answer is not a HealthCheckResponse".to_owned()),
    }
}

/// A length-prefixed `HealthCheckRequest { service }` message.
fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0); // not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when the field is absent, as
/// protobuf defaults it); `None` when the bytes are not such a message.
fn health_status(mut frame: Bytes) -> Option<u64> {
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    frame.advance(1);
    let len = frame.get_u32() as usize;
    if frame.len() < len {
        return None;
    }
    let mut msg = frame.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = get_varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = get_varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let l = usize::try_from(get_varint(&mut msg)?).ok()?;
                if msg.len() < l {
                    return None;
                }
                msg.advance(l);
            }
            _ => return None,
        }
    }
    Some(status)
}

fn status_name(s: u64) -> String {
    match s {
        0 => "UNKNOWN".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
