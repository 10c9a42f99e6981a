//! The admin server (default `127.0.0.1:15020`): `/live`, `/ready`, `/metrics`, `/certs` and
//! `POST /shutdown`, for probes, Prometheus, operators and Jobs that must end their sidecar.
//!
//! It keeps answering while the proxy drains, so `/ready` can say "draining" and the
//! orchestrator takes the Pod out of rotation.

pub mod probe;
pub mod ready;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::identity::Identity;
use crate::lifecycle::Lifecycle;
use crate::metrics::{self, Metrics};

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address is taken or not local.
    #[error("admin server cannot listen on {addr}: {source} (check [admin] listen / DOCMESH_ADMIN_LISTEN and that no other proxy runs here)")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the admin server reports on.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Readiness gates and the drain.
    pub lifecycle: Lifecycle,
    /// The shared metrics registry rendered at `/metrics`.
    pub metrics: Metrics,
    /// The proxy's identity for `/certs`; `None` until one is loaded.
    pub identity: Option<Identity>,
}

/// A running admin server; dropping it stops accepting admin connections.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves the admin endpoints in the
    /// background.
    pub async fn bind(addr: SocketAddr, state: AdminState) -> Result<AdminServer, AdminError> {
        Self::bind_with_probes(addr, state, probe::AppProbes::default()).await
    }

    /// Like [`AdminServer::bind`], also answering the app's probes at
    /// `/app-health/<container>/<probe>` (see [`probe`]).
    pub async fn bind_with_probes(
        addr: SocketAddr,
        state: AdminState,
        probes: probe::AppProbes,
    ) -> Result<AdminServer, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        tracing::info!(%local_addr, "admin server listening");
        let task = tokio::spawn(accept_loop(listener, Arc::new(state), Arc::new(probes)));
        Ok(AdminServer { local_addr, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AdminState>, probes: Arc<probe::AppProbes>) {
    // No drain, no connection slots: probes and `/shutdown` must answer while the data path
    // drains or is at its limits.
    loop {
        let (stream, peer) = crate::accept::next_connection(&listener, "admin").await;
        let state = state.clone();
        let probes = probes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                let probes = probes.clone();
                async move {
                    let is_get = matches!(*req.method(), Method::GET | Method::HEAD);
                    if is_get && req.uri().path().starts_with(probe::PATH_PREFIX) {
                        return Ok::<_, Infallible>(probes.answer(req.uri().path()).await);
                    }
                    Ok::<_, Infallible>(route(&state, peer, req))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Routes one admin request; `peer` is the TCP peer (for the loopback check of `/shutdown`).
fn route<B>(state: &AdminState, peer: SocketAddr, req: Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    match (path, method) {
        ("/shutdown", &Method::POST) => shutdown(state, peer),
        ("/shutdown", _) => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /shutdown to start the drain\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            r
        }
        (_, m) if m != Method::GET && m != Method::HEAD => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        ("/live", _) => text(StatusCode::OK, "live\n"),
        ("/ready", _) => ready(&state.lifecycle),
        ("/metrics", _) => match state.metrics.encode() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                r
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            ),
        },
        ("/certs", _) => certs(state.identity.as_ref()),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /live, /ready, /metrics, /certs, POST /shutdown\n",
        ),
    }
}

fn ready(lifecycle: &Lifecycle) -> Response<Full<Bytes>> {
    if lifecycle.is_draining() {
        let reason = lifecycle.drain_reason().unwrap_or_default();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: draining ({reason})\n"),
        );
    }
    let notes: String = lifecycle.notes().iter().map(|n| format!("{n}\n")).collect();
    if lifecycle.is_ready() {
        return text(StatusCode::OK, format!("ready\n{notes}"));
    }
    let closed = lifecycle.closed_gates();
    let body = if closed.is_empty() {
        "not ready: no readiness gate registered yet\n".to_owned()
    } else {
        format!("not ready: closed gates: {}\n{notes}", closed.join(", "))
    };
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn shutdown(state: &AdminState, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !is_loopback(peer.ip()) {
        tracing::warn!(%peer, "refused POST /shutdown from a non-loopback peer");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "POST /shutdown is only accepted from loopback; {} is not\n",
                peer.ip()
            ),
        );
    }
    state.lifecycle.start_drain_because("POST /shutdown");
    text(StatusCode::ACCEPTED, "draining\n")
}

fn certs(identity: Option<&Identity>) -> Response<Full<Bytes>> {
    let Some(identity) = identity else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "no SVID loaded yet"}),
        );
    };
    let info = identity.svid_info();
    let seconds_left = info
        .not_after
        .duration_since(SystemTime::now())
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
    json(
        StatusCode::OK,
        &serde_json::json!({
            "spiffe_id": info.spiffe_id,
            "serial": info.serial,
            "not_before": rfc3339(info.not_before),
            "not_after": rfc3339(info.not_after),
            "seconds_left": seconds_left,
            "source": info.source,
            "trust_domains": info.trust_domains,
            "rotations": info.rotations,
        }),
    )
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
