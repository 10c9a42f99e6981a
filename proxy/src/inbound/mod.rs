//! The inbound data path: connections from other sidecars to the local app.
//!
//! A connection arrives on the transparent listener (the original destination port is the app
//! port) or on an explicit public port mapped to an app port. The first byte says whether the
//! peer starts TLS: plaintext is refused in strict mode (closed, counted, logged with a hint)
//! and forwarded as is in permissive mode. mTLS is terminated with a required client SVID; the
//! ALPN says what runs inside (`h2`, `http/1.1`, `docmesh-tcp`). HTTP requests carry the
//! client's [`PeerIdentity`] in their extensions (for authorization) and are forwarded to the
//! app on loopback over pooled connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};

use crate::config::inbound::{InboundConfig, InboundMode};
use crate::errors::{Hop, ProxyError};
use crate::http::forward::forward;
use crate::http::pool::{HttpVersion, Pool};
use crate::http::serve::serve_connection;
use crate::http::ProxyBody;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// The SPIFFE ID the calling workload proved with its client SVID; attached to every inbound
/// HTTP request's extensions so that authorization can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    spiffe_id: Arc<str>,
}

impl PeerIdentity {
    /// A verified peer identity.
    pub fn new(spiffe_id: impl Into<Arc<str>>) -> Self {
        PeerIdentity {
            spiffe_id: spiffe_id.into(),
        }
    }

    /// The peer's SPIFFE ID, e.g. `spiffe://example.org/ns/oo/sa/integrator`.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }
}

/// How the inbound side secures the hop.
#[derive(Clone, Debug)]
pub enum MeshServer {
    /// No TLS: every connection is plaintext (tests of the non-TLS path, with permissive mode).
    Plaintext,
}

/// Key of a pooled app connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    app: SocketAddr,
    version: HttpVersion,
}

// `handshake_timeout` and `handshake_failures` serve the mTLS path (next increment).
#[allow(dead_code)]
struct Shared {
    mode: InboundMode,
    app_host: IpAddr,
    detect_timeout: Duration,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    mesh: MeshServer,
    pool: Pool<PoolKey, Incoming>,
    lifecycle: Lifecycle,
    plaintext_refused: Counter,
    handshake_failures: Counter,
}

/// The inbound side; cheap to clone, shared by all its listeners.
#[derive(Clone)]
pub struct Inbound {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    /// Builds the inbound side; `mesh` terminates mTLS (in production).
    pub fn new(
        cfg: &InboundConfig,
        mesh: MeshServer,
        lifecycle: Lifecycle,
        metrics: &Metrics,
    ) -> Self {
        let plaintext_refused = Counter::default();
        metrics.register(
            "inbound_plaintext_refused",
            "Plaintext connections refused by a strict inbound port (peer without a sidecar?)",
            plaintext_refused.clone(),
        );
        let handshake_failures = Counter::default();
        metrics.register(
            "inbound_tls_handshake_failures",
            "Inbound TLS handshakes that failed (untrusted or invalid client SVID, timeout, ...)",
            handshake_failures.clone(),
        );
        Inbound {
            shared: Arc::new(Shared {
                mode: cfg.mode,
                app_host: cfg.app_host,
                detect_timeout: cfg.detect_timeout,
                handshake_timeout: cfg.handshake_timeout,
                connect_timeout: cfg.connect_timeout,
                mesh,
                pool: Pool::new(cfg.pool_idle_timeout),
                lifecycle,
                plaintext_refused,
                handshake_failures,
            }),
        }
    }

    /// Serves the transparent listener (app port = original destination port) until the
    /// drain starts.
    pub async fn serve_transparent(&self, listener: TcpListener) {
        let local = listener.local_addr().ok();
        self.accept_loop(listener, move |s: &TcpStream| {
            let dst = crate::net::original_dst(s).map_err(|e| e.to_string())?;
            if Some(dst.port()) == local.map(|l| l.port()) {
                return Err(format!(
                    "connection addressed to the inbound listener itself ({dst})"
                ));
            }
            Ok(dst.port())
        })
        .await;
    }

    /// Serves an explicit public port that forwards to `app_port` until the drain starts.
    pub async fn serve_port(&self, listener: TcpListener, app_port: u16) {
        self.accept_loop(listener, move |_: &TcpStream| Ok(app_port))
            .await;
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        app_port: impl Fn(&TcpStream) -> Result<u16, String>,
    ) {
        let drain = self.shared.lifecycle.draining();
        tokio::pin!(drain);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut drain => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let port = match app_port(&stream) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "inbound connection closed");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let guard = self.shared.lifecycle.track();
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        handle(shared, stream, peer, port).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

async fn handle(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, app_port: u16) {
    let app = SocketAddr::new(shared.app_host, app_port);
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout(shared.detect_timeout, stream.peek(&mut first)).await {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => first[0] == TLS_HANDSHAKE,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            return;
        }
        Err(_) => false,
    };
    match (&shared.mesh, tls) {
        (MeshServer::Plaintext, _) => plaintext(&shared, stream, peer, app).await,
    }
}

/// A connection that did not start TLS: refused in strict mode, forwarded in permissive mode.
async fn plaintext(shared: &Shared, mut stream: TcpStream, peer: SocketAddr, app: SocketAddr) {
    if shared.mode == InboundMode::Strict {
        shared.plaintext_refused.inc();
        tracing::warn!(
            %peer,
            app_port = app.port(),
            "peer sent plaintext to an mTLS port: is its sidecar missing? (connection closed; \
             inbound.mode = \"permissive\" accepts plaintext during a migration)"
        );
        return;
    }
    match crate::net::connect(app, shared.connect_timeout, "the app").await {
        Ok(mut up) => {
            if let Err(e) = crate::net::copy_bidirectional(&mut stream, &mut up).await {
                tracing::debug!(%peer, error = %e, "plaintext connection ended with an error");
            }
        }
        Err(e) => log_failure(&e, peer),
    }
}

fn log_failure(e: &ProxyError, peer: SocketAddr) {
    tracing::warn!(cause = e.cause.as_str(), hop = "inbound", %peer, detail = %e.detail, "inbound connection failed");
}

/// Serves HTTP from a verified peer: every request carries `peer` and goes to the app.
#[allow(dead_code)]
async fn http<Io>(
    shared: Arc<Shared>,
    io: Io,
    peer: PeerIdentity,
    app: SocketAddr,
    version: HttpVersion,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let lifecycle = shared.lifecycle.clone();
    let handler = move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let shared = Arc::clone(&shared);
        async move { to_app(&shared, app, version, req).await }
    };
    serve_connection(io, version, handler, &lifecycle).await;
}

async fn to_app(
    shared: &Shared,
    app: SocketAddr,
    version: HttpVersion,
    req: http::Request<Incoming>,
) -> http::Response<ProxyBody> {
    let key = PoolKey { app, version };
    forward(&shared.pool, &key, version, req, Hop::Inbound, || {
        crate::net::connect(app, shared.connect_timeout, "the app")
    })
    .await
}
