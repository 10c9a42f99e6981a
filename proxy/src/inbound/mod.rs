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

use docmesh_certs::SpiffeId;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};

use crate::authz::{Authorizer, AuthzBody, Decision};
use crate::config::inbound::{InboundConfig, InboundMode};
use crate::errors::{Hop, ProxyError};
use crate::http::forward::{error_response, forward};
use crate::http::pool::Pool;
use crate::http::serve::serve_connection_limited;
use crate::http::ProxyBody;
use crate::lifecycle::Lifecycle;
use crate::limits::{GuardedBody, Limits};
use crate::metrics::Metrics;
use crate::observe::{request_trace_id, Direction, HopAddrs, Observability};
use crate::outbound::detect::{self, DetectEnd};
use crate::protocol::{HttpVersion, WireProtocol};

pub mod rate_limit;

/// The SPIFFE ID the calling workload proved with its client SVID; attached to every inbound
/// HTTP request's extensions (`req.extensions().get::<PeerIdentity>()`) so that authorization
/// can read it. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    spiffe_id: Arc<SpiffeId>,
    addr: SocketAddr,
}

impl PeerIdentity {
    /// A verified peer identity and the peer's socket address.
    pub fn new(spiffe_id: SpiffeId, addr: SocketAddr) -> Self {
        PeerIdentity {
            spiffe_id: Arc::new(spiffe_id),
            addr,
        }
    }

    /// The peer's SPIFFE ID, e.g. `spiffe://example.org/ns/oo/sa/integrator`.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The peer's address (its sidecar's outbound socket).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Provides the rustls server config of the mesh hop (implemented by the identity module's
/// `Identity`): TLS 1.3 only, client SVID required and verified against the bundles, ALPN
/// `h2`, `http/1.1`, `docmesh-tcp`.
pub trait ServerTls: Send + Sync + 'static {
    /// The current server config; called per connection, so it must be cheap (an `Arc`
    /// clone of a config built once).
    fn server_config(&self) -> Arc<rustls::ServerConfig>;

    /// Wakes on every change of the trust bundles (`None`: they never change).
    fn bundle_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Whether a client chain verified at an earlier handshake still verifies against the
    /// current bundles; connections whose client no longer does are wound down after a
    /// change (a TLS connection is verified only at its handshake).
    fn still_trusts(&self, _chain: &[rustls_pki_types::CertificateDer<'static>]) -> bool {
        true
    }
}

impl ServerTls for crate::identity::Identity {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        crate::identity::Identity::server_config(self)
    }

    fn bundle_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(crate::identity::Identity::bundle_changes(self))
    }

    fn still_trusts(&self, chain: &[rustls_pki_types::CertificateDer<'static>]) -> bool {
        use rustls::server::danger::ClientCertVerifier as _;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        docmesh_certs::tls::SpiffeClientVerifier::new(self.shared_bundles())
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .is_ok()
    }
}

/// Resolves once the trust of `chain` is lost: after a change of `server`'s trust bundles
/// that no longer verify it. Never resolves when the bundles do not change (an SVID renewal
/// alone re-verifies nothing, so frequent renewals cost open connections nothing).
async fn trust_lost(server: &dyn ServerTls, chain: &[rustls_pki_types::CertificateDer<'static>]) {
    let Some(mut changes) = server.bundle_changes() else {
        return std::future::pending().await;
    };
    while changes.changed().await.is_ok() {
        if !server.still_trusts(chain) {
            return;
        }
    }
    std::future::pending().await
}

/// How the inbound side secures the hop.
#[derive(Clone)]
pub enum MeshServer {
    /// No TLS: every connection is plaintext (tests of the non-TLS path, with permissive mode).
    Plaintext,
    /// mTLS with a required client SVID.
    Mtls(Arc<dyn ServerTls>),
}

impl std::fmt::Debug for MeshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshServer::Plaintext => "MeshServer::Plaintext",
            MeshServer::Mtls(_) => "MeshServer::Mtls",
        })
    }
}

/// Key of a pooled app connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    app: SocketAddr,
    version: HttpVersion,
}

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
        let drain = self.shared.lifecycle.draining();
        tokio::pin!(drain);
        let slots = self.shared.limits.load().listener();
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
                    let Some(permit) = slots.admit() else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let guard = self.shared.lifecycle.track();
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        handle(shared, stream, peer, port).await;
                        drop((guard, permit));
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
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
    let (tls, silent) = match tokio::time::timeout(shared.detect_timeout, stream.peek(&mut first))
        .await
    {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => (first[0] == TLS_HANDSHAKE, false),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            return;
        }
        Err(_) => (false, true),
    };
    match (&shared.mesh, tls) {
        (MeshServer::Mtls(server), true) => {
            let server = Arc::clone(server);
            mtls(shared, stream, peer, app, server).await
        }
        _ => plaintext(shared, stream, peer, app, silent).await,
    }
}

/// Terminates mTLS, then serves what the ALPN announces.
async fn mtls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    server: Arc<dyn ServerTls>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let obs = shared.obs.load_full();
    let service = format!("app:{}", app.port());
    let tls = match tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Ok(()));
            tls
        }
        Ok(Err(e)) => {
            shared.handshake_failures.inc();
            let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => match docmesh_certs::tls::svid_error_of(r) {
                    Some(svid) => svid.rule(),
                    None if matches!(r, rustls::Error::NoCertificatesPresented) => "no-client-cert",
                    None => "handshake-error",
                },
                None => "connection-closed",
            };
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Err(reason));
            let why = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(|r| match docmesh_certs::tls::svid_error_of(r) {
                    Some(svid) => format!("client SVID rejected: {svid}"),
                    None => r.to_string(),
                })
                .unwrap_or_else(|| e.to_string());
            tracing::warn!(%peer, app_port = app.port(), reason = %why, "inbound TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.handshake_failures.inc();
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Err("timeout"));
            tracing::warn!(%peer, app_port = app.port(), "inbound TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let id = conn
        .peer_certificates()
        .and_then(docmesh_certs::tls::peer_spiffe_id);
    let Some(id) = id else {
        // The verifier requires a client SVID; this is unreachable with a correct config.
        tracing::warn!(%peer, "inbound TLS connection without a client SPIFFE ID closed");
        return;
    };
    // No ALPN or `docmesh-tcp`: opaque TCP.
    let version = conn
        .alpn_protocol()
        .and_then(WireProtocol::from_alpn)
        .and_then(WireProtocol::http_version);
    let chain: Vec<_> = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let identity = PeerIdentity::new(id, peer);
    tracing::debug!(%peer, client = %identity.spiffe_id(), ?version, "inbound mTLS connection");
    let client = identity.spiffe_id().to_string();
    let revoked = async {
        trust_lost(server.as_ref(), &chain).await;
        tracing::info!(%peer, %client, "the trust bundles no longer verify this client's SVID: its connection is closed (gracefully for HTTP)");
    };
    match version {
        Some(v) => http(shared, tls, Some(identity), peer, app, v, revoked).await,
        None => {
            let pair = obs.inbound_pair(app.port(), Some(identity.spiffe_id()));
            if !tcp_allowed(&shared, &obs, &pair, app.port(), Some(identity.spiffe_id())) {
                return;
            }
            tokio::select! {
                _ = opaque(&shared, &obs, &pair, tls, peer, app) => {}
                _ = revoked => {}
            }
        }
    }
}

/// Relays an opaque TCP connection to the app, logged and counted per connection.
async fn opaque<S>(
    shared: &Shared,
    obs: &Observability,
    pair: &crate::observe::ServicePair,
    mut down: S,
    peer: SocketAddr,
    app: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let _open = obs.metrics.connection_opened(pair, "tcp");
    let addrs = HopAddrs {
        peer: Some(peer),
        upstream: Some(app),
    };
    match crate::net::connect(app, shared.connect_timeout, crate::net::APP).await {
        Ok(mut up) => {
            let bytes = match crate::net::copy_bidirectional(&mut down, &mut up).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "opaque inbound connection ended with an error");
                    (0, 0)
                }
            };
            obs.tcp_finished(pair, addrs, started, bytes, None);
        }
        Err(e) => {
            log_failure(&e, peer);
            obs.tcp_finished(pair, addrs, started, (0, 0), Some(&e));
        }
    }
}

/// A connection that did not start TLS: refused in strict mode. In permissive mode plaintext
/// HTTP is served as HTTP without a peer identity, so every request still goes through the
/// HTTP authorization (SPIFFE rules see no ID, JWT checks apply); anything else is opaque TCP,
/// refused where the port requires a JWT (so skipping TLS never skips authorization).
async fn plaintext(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    silent: bool,
) {
    let obs = shared.obs.load_full();
    if shared.mode == InboundMode::Strict {
        shared.plaintext_refused.inc();
        let service = format!("app:{}", app.port());
        obs.metrics
            .tls_handshake(Direction::Inbound, &service, Err("plaintext-client"));
        tracing::warn!(
            %peer,
            app_port = app.port(),
            "peer sent plaintext to an mTLS port: is its sidecar missing? (connection closed; \
             inbound.mode = \"permissive\" accepts plaintext during a migration)"
        );
        return;
    }
    // A peer that stayed silent for detect_timeout already is server-speaks-first.
    let detected = if silent {
        Ok((
            WireProtocol::Opaque,
            bytes::Bytes::new(),
            DetectEnd::Timeout,
        ))
    } else {
        detect::detect(&mut stream, shared.detect_timeout).await
    };
    let (proto, prefix) = match detected {
        Ok((_, _, DetectEnd::Closed)) => return,
        Ok((d, bytes, _)) => (d, bytes),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "plaintext inbound connection failed during detection");
            return;
        }
    };
    let version = match proto.http_version() {
        Some(version) => version,
        None => {
            let authz = shared.authz.load();
            if authz.jwt_applies_to_port(app.port()) {
                // The bytes are not recognisably HTTP, yet the app on this port may parse them
                // as HTTP (a leading CRLF, a method outside the list): without a token check
                // they must not reach it.
                let pair = obs.inbound_pair(app.port(), None);
                let decision = authz.refuse_tcp(
                    app.port(),
                    "a JWT: plaintext that is not HTTP reached a port where authz.jwt applies",
                );
                obs.metrics.authz_decision(&pair, false, decision.reason());
                return;
            }
            let pair = obs.inbound_pair(app.port(), None);
            if !tcp_allowed(&shared, &obs, &pair, app.port(), None) {
                return;
            }
            let io = crate::net::Prefixed::new(prefix, stream);
            return opaque(&shared, &obs, &pair, io, peer, app).await;
        }
    };
    let io = crate::net::Prefixed::new(prefix, stream);
    http(shared, io, None, peer, app, version, std::future::pending()).await
}

fn log_failure(e: &ProxyError, peer: SocketAddr) {
    tracing::warn!(cause = e.cause.as_str(), hop = "inbound", %peer, detail = %e.detail, "inbound connection failed");
}

/// Serves HTTP from a verified peer: every request carries `peer` and goes to the app.
async fn http<Io>(
    shared: Arc<Shared>,
    io: Io,
    identity: Option<PeerIdentity>,
    peer: SocketAddr,
    app: SocketAddr,
    version: HttpVersion,
    revoked: impl std::future::Future<Output = ()>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let lifecycle = shared.lifecycle.clone();
    let stop = async {
        tokio::select! {
            _ = lifecycle.draining() => {}
            _ = revoked => {}
        }
    };
    let obs = shared.obs.load_full();
    let client = identity
        .as_ref()
        .map(|i| i.spiffe_id() as &dyn std::fmt::Display);
    let pair = obs.inbound_pair(app.port(), client);
    let _open = obs.metrics.connection_opened(&pair, "http");
    let addrs = HopAddrs {
        peer: Some(peer),
        upstream: Some(app),
    };
    let server_limits = shared.limits.load().server(Hop::Inbound);
    let handler = move |mut req: http::Request<Incoming>| {
        if let Some(id) = &identity {
            req.extensions_mut().insert(id.clone());
        }
        let shared = Arc::clone(&shared);
        let (obs, pair) = (Arc::clone(&obs), pair.clone());
        async move {
            obs.http(&pair, addrs, req, |req| to_app(&shared, app, version, req))
                .await
        }
    };
    serve_connection_limited(io, version, handler, stop, server_limits).await;
}

/// Authorization of an opaque TCP connection (the authorizer logs refusals, the decision is
/// counted for `pair`; a refused connection is then closed).
fn tcp_allowed(
    shared: &Shared,
    obs: &Observability,
    pair: &crate::observe::ServicePair,
    app_port: u16,
    client: Option<&SpiffeId>,
) -> bool {
    let decision = shared.authz.load().authorize_tcp(app_port, client);
    let allowed = decision.is_allow();
    obs.metrics.authz_decision(pair, allowed, decision.reason());
    allowed
}

async fn to_app(
    shared: &Shared,
    app: SocketAddr,
    version: HttpVersion,
    req: http::Request<Incoming>,
) -> http::Response<ProxyBody> {
    // The one authorization spot for HTTP: strips client-sent identity headers, checks the
    // SPIFFE rules, the JWT and the tenant, and sets docmesh-client-id/docmesh-tenant.
    let (mut parts, body) = req.into_parts();
    let trace_id = request_trace_id(&parts.extensions);
    let limits = shared.limits.load_full();
    let body_limit = match limits.check_request(&mut parts) {
        Ok(l) => l,
        Err(e) => return error_response(&e, Hop::Inbound, trace_id),
    };
    let (body, body_faults) = limits.guard_body(&mut parts, body, body_limit);
    let peer = parts.extensions.get::<PeerIdentity>().cloned();
    let authz = shared.authz.load_full();
    let client = peer.as_ref().map(PeerIdentity::spiffe_id);
    let (decision, body) = authz
        .authorize_http(app.port(), client, &mut parts, body)
        .await;
    let reason = crate::observe::AuthzReason(decision.reason());
    let tenant = match &decision {
        Decision::Allow { tenant, .. } => tenant.clone(),
        Decision::Deny { .. } => None,
    };
    if let Decision::Deny { cause, detail, .. } = decision {
        let trace_id = trace_id.map(|t| t.to_string());
        let mut resp =
            crate::errors::error_response(cause, &detail, Hop::Inbound, trace_id.as_deref())
                .map(http_body_util::Either::Right);
        resp.extensions_mut().insert(reason);
        return resp;
    }
    // `[[inbound.rate_limits]]`: a bucket per route and verified tenant.
    let limiter = shared.rate_limits.load();
    if !limiter.is_empty() {
        if let Err(limited) = limiter.check(app.port(), parts.uri.path(), tenant.as_deref()) {
            let trace_id = trace_id.map(|t| t.to_string());
            let mut resp = rate_limit::limited_response(&limited, trace_id.as_deref());
            resp.extensions_mut().insert(reason);
            return resp;
        }
    }
    // An HTTP/1.x request that a peer outbound carried over HTTP/2 goes to the app as the
    // HTTP/1.x it was (see `http::orig_proto`).
    let version = match crate::http::orig_proto::take(&mut parts) {
        Some(v) if version == HttpVersion::Http2 => {
            parts.version = v;
            HttpVersion::Http1
        }
        _ => version,
    };
    let tenant = parts.headers.get(crate::authz::TENANT_HEADER).cloned();
    let req = http::Request::from_parts(parts, body);
    let key = PoolKey { app, version };
    let resp = forward(&shared.pool, &key, version, req, Hop::Inbound, || {
        crate::net::connect(app, shared.connect_timeout, crate::net::APP)
    })
    .await;
    // A failure of the client's body (too large, silent, malformed) is the client's answer.
    let mut resp = body_faults.settle(resp, Hop::Inbound, trace_id);
    resp.extensions_mut().insert(reason);
    if let Some(t) = tenant {
        resp.extensions_mut().insert(crate::observe::Tenant(t));
    }
    resp
}
