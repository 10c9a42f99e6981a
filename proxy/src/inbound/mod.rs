//! The inbound data path: connections from other sidecars to the local app.
//!
//! A connection arrives on the transparent listener (the original destination port is the app
//! port) or on an explicit public port mapped to an app port. The first byte says whether the
//! peer starts TLS: plaintext is refused in strict mode (closed, counted, logged with a hint)
//! and forwarded as is in permissive mode. mTLS is terminated with a required client SVID; the
//! ALPN says what runs inside (`h2`, `http/1.1`, `docmesh-tcp`). HTTP requests carry the
//! client's [`PeerIdentity`] in their extensions (for authorization) and are forwarded to the
//! app on loopback over pooled connections.
//!
//! The listeners run the shared accept loop ([`crate::accept::serve_listener`]); then
//! `connection.rs` takes one connection (TLS or plaintext), `serve.rs` serves its HTTP or
//! relays its opaque TCP, `request.rs` handles one HTTP request up to the app, and `tls.rs`
//! holds the types of the mTLS hop.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};

use crate::authz::{Authorizer, AuthzBody};
use crate::config::inbound::{InboundConfig, InboundMode};
use crate::http::pool::Pool;
use crate::lifecycle::Lifecycle;
use crate::limits::{GuardedBody, Limits};
use crate::metrics::Metrics;
use crate::observe::Observability;
use request::PoolKey;

mod connection;
pub mod rate_limit;
mod request;
mod serve;
mod tls;

pub use tls::{MeshServer, PeerIdentity, ServerTls};

struct Shared {
    mode: InboundMode,
    app_host: IpAddr,
    detect_timeout: Duration,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    mesh: MeshServer,
    pool: Pool<PoolKey, AuthzBody<GuardedBody<Incoming>>>,
    /// `[limits]`: connection slots, request head and body checks, HTTP server settings.
    limits: arc_swap::ArcSwap<Limits>,
    /// Authorization of every connection and request (SPIFFE rules, JWT, tenants).
    authz: arc_swap::ArcSwap<Authorizer>,
    lifecycle: Lifecycle,
    plaintext_refused: Counter,
    handshake_failures: Counter,
    obs: arc_swap::ArcSwap<Observability>,
    /// `[[inbound.rate_limits]]` (swapped on reload).
    rate_limits: arc_swap::ArcSwap<rate_limit::RateLimiter>,
    rate_metrics: rate_limit::RateLimitMetrics,
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
        let rate_metrics = rate_limit::RateLimitMetrics::new(metrics);
        let rate_limits = rate_limit::RateLimiter::new(&cfg.rate_limits, rate_metrics.clone());
        Inbound {
            shared: Arc::new(Shared {
                mode: cfg.mode,
                app_host: cfg.app_host,
                detect_timeout: cfg.detect_timeout,
                handshake_timeout: cfg.handshake_timeout,
                connect_timeout: cfg.connect_timeout,
                mesh,
                pool: Pool::new(cfg.pool_idle_timeout).to_apps(),
                authz: arc_swap::ArcSwap::from_pointee(Authorizer::allow_all()),
                limits: arc_swap::ArcSwap::from_pointee(Limits::default()),
                lifecycle,
                plaintext_refused,
                handshake_failures,
                obs: arc_swap::ArcSwap::from_pointee(Observability::noop()),
                rate_limits: arc_swap::ArcSwap::from_pointee(rate_limits),
                rate_metrics,
            }),
        }
    }

    /// Replaces `[[inbound.rate_limits]]` (live reload; the new buckets start full).
    pub fn set_rate_limits(&self, cfg: &[crate::config::ratelimit::RateLimitConfig]) {
        let limiter = rate_limit::RateLimiter::new(cfg, self.shared.rate_metrics.clone());
        self.shared.rate_limits.store(Arc::new(limiter));
    }

    /// Installs the authorizer (from `[authz]`) that every inbound connection and request goes
    /// through; until then every verified peer passes (identity headers are still sanitized).
    pub fn set_authorizer(&self, authz: Arc<Authorizer>) {
        self.shared.authz.store(authz);
    }

    /// Installs trace propagation, the access log and the mesh metrics (until called, only
    /// trace headers are handled).
    pub fn set_observability(&self, obs: Observability) {
        self.shared.obs.store(Arc::new(obs));
    }

    /// Installs `[limits]` (until called, the defaults apply); call before serving, since
    /// each listener takes its connection slots when it starts.
    pub fn set_limits(&self, limits: Limits) {
        self.shared.limits.store(Arc::new(limits));
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
        let shared = &self.shared;
        let slots = shared.limits.load().listener();
        crate::accept::serve_listener(
            listener,
            "inbound",
            &shared.lifecycle,
            slots,
            |stream, peer| match app_port(&stream) {
                Ok(port) => Some(connection::handle(Arc::clone(shared), stream, peer, port)),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "inbound connection closed");
                    None
                }
            },
        )
        .await;
    }
}
