//! The outbound data path: connections from the local app to other services.
//!
//! A connection arrives either on the transparent listener (redirected by iptables; the
//! original destination names the service) or on an explicit listener bound to one service.
//! The protocol is detected (or declared), then HTTP is proxied request by request over pooled
//! mesh connections and anything else is copied as opaque TCP. Destinations that are not mesh
//! services are passed through as plain TCP or denied, by configuration.

pub mod connect;
pub mod detect;
pub mod dns;
pub mod mesh;
pub mod services;
pub mod split;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::outbound::{OutboundConfig, UnknownDestinations};
use crate::config::resilience::ResilienceConfig;
use crate::errors::{Hop, ProxyError};
use crate::http::forward::{error_response, relay};
use crate::http::serve::serve_connection_limited;
use crate::http::ProxyBody;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::net::Prefixed;
use crate::observe::{request_trace_id, HopAddrs, Observability};
use crate::protocol::{HttpVersion, WireProtocol};
use crate::resilience::observer::{NoopObserver, Observer};
use crate::resilience::resolve::service_policy_for;
use connect::{Connectors, HopTimeouts, MeshClient};
use detect::DetectEnd;
use mesh::{mesh_send, MeshStacks, SendFn};
use services::{Service, Services};

pub use connect::MeshStream;

/// Errors setting up the outbound side.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// An explicit listener names a service that is not configured.
    #[error("explicit listener for unknown service `{0}`: add it to outbound.services")]
    UnknownService(String),
    /// A service's `spiffe_id` is not a SPIFFE ID.
    #[error("service `{service}`: spiffe_id `{id}` is invalid: {reason}")]
    InvalidSpiffeId {
        /// The service.
        service: String,
        /// The configured text.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `outbound.routes` names a service that is not configured.
    #[error("invalid outbound.routes: {0}")]
    InvalidRoutes(String),
}

struct Shared {
    /// The service table; replaced (never changed in place) when a reload adds services.
    services: Arc<arc_swap::ArcSwap<Services>>,
    /// The `[resilience]` section and observer the stacks were built with (rebuilt with
    /// them when services are added).
    resilience: std::sync::Mutex<(ResilienceConfig, Arc<dyn Observer>)>,
    mesh: Arc<Connectors>,
    /// Resilience stacks of the services (HTTP); they own the pooled mesh connections.
    stacks: arc_swap::ArcSwap<MeshStacks>,
    send: SendFn,
    hop_defaults: OutboundConfig,
    detect_timeout: Duration,
    opaque_ports: Vec<u16>,
    timeouts: HopTimeouts,
    unknown: UnknownDestinations,
    lifecycle: Lifecycle,
    detect_timeouts: Counter,
    denied: Counter,
    obs: arc_swap::ArcSwap<Observability>,
    /// `[limits]`: connection slots, request head checks, HTTP server settings.
    limits: arc_swap::ArcSwap<Limits>,
    /// `[[outbound.routes]]`: traffic split, matches and failover (swapped on reload).
    router: arc_swap::ArcSwap<split::Router>,
    route_metrics: split::RouteMetrics,
}

/// The outbound side; cheap to clone, shared by all its listeners.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

enum Target {
    /// Transparent listener at this local address: look at the original destination.
    Transparent(SocketAddr),
    /// Explicit listener for one service.
    Service(Arc<Service>),
}

impl Outbound {
    /// Builds the outbound side from its configuration; `mesh` secures the hop (mTLS in
    /// production). Call [`Outbound::start`] to resolve names before serving.
    pub fn new(
        cfg: &OutboundConfig,
        mesh: MeshClient,
        lifecycle: Lifecycle,
        metrics: &Metrics,
    ) -> Result<Self, OutboundError> {
        let services = Arc::new(Services::new(&cfg.services)?);
        let table = Arc::new(arc_swap::ArcSwap::new(services.clone()));
        let connectors = Connectors::new(&mesh);
        let detect_timeouts = Counter::default();
        metrics.register(
            "outbound_detect_timeouts",
            "Outbound connections that sent nothing within outbound.detect_timeout (treated as opaque TCP)",
            detect_timeouts.clone(),
        );
        let denied = Counter::default();
        metrics.register(
            "outbound_denied",
            "Outbound connections to destinations outside the mesh that were denied",
            denied.clone(),
        );
        let router =
            split::Router::new(&cfg.routes, &services).map_err(OutboundError::InvalidRoutes)?;
        let route_metrics = split::RouteMetrics::new(metrics);
        let connectors = Arc::new(connectors);
        let send = mesh_send(
            table.clone(),
            connectors.clone(),
            cfg.pool_idle_timeout,
            cfg.h2_keep_alive(),
        );
        let resilience = ResilienceConfig::default();
        let stacks = MeshStacks::new(
            &services,
            |name| service_policy_for(&resilience, name, cfg),
            send.clone(),
            Arc::new(NoopObserver),
        );
        Ok(Outbound {
            shared: Arc::new(Shared {
                services: table,
                resilience: std::sync::Mutex::new((resilience, Arc::new(NoopObserver))),
                mesh: connectors,
                stacks: arc_swap::ArcSwap::from_pointee(stacks),
                send,
                hop_defaults: cfg.clone(),
                detect_timeout: cfg.detect_timeout,
                opaque_ports: cfg.opaque_ports.clone(),
                timeouts: HopTimeouts {
                    connect: cfg.connect_timeout,
                    handshake: cfg.handshake_timeout,
                    keep_alive: cfg.h2_keep_alive(),
                },
                unknown: cfg.unknown_destinations,
                lifecycle,
                detect_timeouts,
                denied,
                obs: arc_swap::ArcSwap::from_pointee(Observability::noop()),
                limits: arc_swap::ArcSwap::from_pointee(Limits::default()),
                router: arc_swap::ArcSwap::from_pointee(router),
                route_metrics,
            }),
        })
    }

    /// Applies `[resilience]` (timeouts, retries, breakers, limits, balancing, health checks)
    /// to the HTTP traffic of every service; until called, the defaults apply.
    pub fn set_resilience(&self, cfg: &ResilienceConfig) {
        self.set_resilience_observed(cfg, Arc::new(NoopObserver));
    }

    /// Like [`Outbound::set_resilience`], reporting retries, exhausted retry budgets and
    /// circuit transitions to `observer` (metrics).
    pub fn set_resilience_observed(&self, cfg: &ResilienceConfig, observer: Arc<dyn Observer>) {
        let s = &self.shared;
        let stacks = MeshStacks::new(
            &s.services.load(),
            |name| service_policy_for(cfg, name, &s.hop_defaults),
            s.send.clone(),
            observer.clone(),
        );
        s.stacks.store(Arc::new(stacks));
        *s.resilience.lock().unwrap_or_else(|e| e.into_inner()) = (cfg.clone(), observer);
    }

    /// Adds services (live reload): the existing ones keep their endpoints and pooled
    /// connections; the new ones are resolved, then the service table and the resilience
    /// stacks (with `observer`, which knows the new services) are swapped. Call before
    /// routes that name the new services.
    pub async fn add_services(
        &self,
        added: &[crate::config::outbound::ServiceConfig],
        observer: Arc<dyn Observer>,
        resolve_interval: Duration,
    ) -> Result<(), OutboundError> {
        let s = &self.shared;
        let services = Arc::new(s.services.load().with_added(added)?);
        let ttl = services.resolve_all().await;
        // Stacks first: a request that finds a new service in the table finds its stack.
        let cfg = s
            .resilience
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        let stacks = MeshStacks::new(
            &services,
            |name| service_policy_for(&cfg, name, &s.hop_defaults),
            s.send.clone(),
            observer.clone(),
        );
        s.stacks.store(Arc::new(stacks));
        *s.resilience.lock().unwrap_or_else(|e| e.into_inner()) = (cfg, observer);
        s.services.store(services.clone());
        services.spawn_refresh(resolve_interval, ttl, s.lifecycle.clone());
        Ok(())
    }

    /// Installs trace propagation, the access log and the mesh metrics (until called, only
    /// trace headers are handled).
    pub fn set_observability(&self, obs: Observability) {
        self.shared.obs.store(Arc::new(obs));
    }

    /// Installs `[limits]` (until called, the defaults apply); call before serving.
    pub fn set_limits(&self, limits: Limits) {
        self.shared.limits.store(Arc::new(limits));
    }

    /// Replaces `[[outbound.routes]]` (live reload); requests already routed keep their
    /// backend. An unknown service is an error and the old routes stay.
    pub fn set_routes(
        &self,
        routes: &[crate::config::routing::TrafficRoute],
    ) -> Result<(), OutboundError> {
        let router = split::Router::new(routes, &self.shared.services.load())
            .map_err(OutboundError::InvalidRoutes)?;
        self.shared.router.store(Arc::new(router));
        Ok(())
    }

    /// Resolves service names once and keeps re-resolving them when their answers expire
    /// (TTL) and at least every `resolve_interval`.
    pub async fn start(&self, resolve_interval: Duration) {
        let services = self.shared.services.load_full();
        let ttl = services.resolve_all().await;
        services.spawn_refresh(resolve_interval, ttl, self.shared.lifecycle.clone());
    }

    /// The current service table (endpoints, lookup).
    pub fn services(&self) -> Arc<Services> {
        self.shared.services.load_full()
    }

    /// Serves the transparent listener until the drain starts.
    pub async fn serve_transparent(&self, listener: TcpListener) {
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "outbound transparent listener has no address");
                return;
            }
        };
        self.accept_loop(listener, || Target::Transparent(local))
            .await;
    }

    /// Serves an explicit listener for the service `service` until the drain starts.
    pub async fn serve_service(
        &self,
        listener: TcpListener,
        service: &str,
    ) -> Result<(), OutboundError> {
        let svc = self
            .shared
            .services
            .load()
            .by_name(service)
            .cloned()
            .ok_or_else(|| OutboundError::UnknownService(service.to_owned()))?;
        self.accept_loop(listener, || Target::Service(svc.clone()))
            .await;
        Ok(())
    }

    async fn accept_loop(&self, listener: TcpListener, target: impl Fn() -> Target) {
        let shared = &self.shared;
        let slots = shared.limits.load().listener();
        crate::accept::serve_listener(
            listener,
            "outbound",
            &shared.lifecycle,
            slots,
            |stream, _peer| Some(handle(Arc::clone(shared), stream, target())),
        )
        .await;
    }
}

async fn handle(shared: Arc<Shared>, stream: TcpStream, target: Target) {
    let (svc, dst) = match target {
        Target::Service(svc) => (svc, None),
        Target::Transparent(local) => {
            let dst = match crate::net::original_dst(&stream) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "outbound connection without original destination closed");
                    return;
                }
            };
            if dst.port() == local.port() && (dst.ip() == local.ip() || dst.ip().is_loopback()) {
                tracing::warn!(%dst, "connection addressed to the outbound listener itself closed (redirect loop?)");
                return;
            }
            return redirected(shared, stream, dst).await;
        }
    };
    mesh(shared, stream, svc, dst).await
}

/// A connection whose original destination was `dst`: a mesh service, or not.
async fn redirected(shared: Arc<Shared>, stream: TcpStream, dst: SocketAddr) {
    let found = shared.services.load().lookup(dst).cloned();
    match found {
        Some(svc) => mesh(shared, stream, svc, Some(dst)).await,
        None => unknown_destination(&shared, stream, dst).await,
    }
}

/// A connection to the mesh service `svc` (at `dst` in transparent mode): detect or take the
/// declared protocol, then proxy HTTP or copy opaque TCP.
async fn mesh(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    svc: Arc<Service>,
    dst: Option<SocketAddr>,
) {
    let declared_opaque = dst.is_some_and(|d| shared.opaque_ports.contains(&d.port()));
    let (proto, prefix) = match svc.protocol.declared() {
        Some(declared) => (declared, bytes::Bytes::new()),
        None if declared_opaque => (WireProtocol::Opaque, bytes::Bytes::new()),
        None => match detect::detect(&mut stream, shared.detect_timeout).await {
            Ok((_, _, DetectEnd::Closed)) => return,
            Ok((d, bytes, end)) => {
                if end == DetectEnd::Timeout {
                    shared.detect_timeouts.inc();
                    tracing::debug!(service = %svc.name, "app sent nothing within detect_timeout: opaque TCP (declare the port in outbound.opaque_ports to skip the wait)");
                }
                (d, bytes)
            }
            Err(e) => {
                tracing::debug!(error = %e, "app connection failed during protocol detection");
                return;
            }
        },
    };
    match proto.http_version() {
        None => opaque(&shared, stream, &svc, dst, prefix).await,
        Some(version) => http(shared, stream, svc, dst, prefix, version).await,
    }
}

async fn opaque(
    shared: &Shared,
    mut stream: TcpStream,
    svc: &Service,
    dst: Option<SocketAddr>,
    prefix: bytes::Bytes,
) {
    let obs = shared.obs.load_full();
    let pair = obs.outbound_pair(&svc.name, &svc.spiffe_id);
    let _open = obs.metrics.connection_opened(&pair, "tcp");
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let mut addrs = HopAddrs {
        peer: stream.peer_addr().ok(),
        upstream: None,
    };
    let mut bytes = (0, 0);
    let result: Result<(), ProxyError> = async {
        // A virtual IP stands for the service: connect to one of its endpoints.
        let addr = match dst {
            Some(d) if !svc.is_vip(d) => d,
            _ => svc.pick()?,
        };
        addrs.upstream = Some(addr);
        let mut up = shared.mesh.connect(svc, addr, WireProtocol::Opaque, shared.timeouts).await?;
        let copied = async {
            up.write_all(&prefix).await?;
            crate::net::copy_bidirectional(&mut stream, &mut up).await
        };
        match copied.await {
            Ok(n) => bytes = n,
            Err(e) => {
                tracing::debug!(service = %svc.name, error = %e, "opaque connection ended with an error")
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::warn!(cause = e.cause.as_str(), hop = "outbound", service = %svc.name, detail = %e.detail, "opaque connection failed");
    }
    obs.tcp_finished(&pair, addrs, started, bytes, result.as_ref().err());
}

async fn http(
    shared: Arc<Shared>,
    stream: TcpStream,
    svc: Arc<Service>,
    dst: Option<SocketAddr>,
    prefix: bytes::Bytes,
    version: HttpVersion,
) {
    let addrs = HopAddrs {
        peer: stream.peer_addr().ok(),
        upstream: dst,
    };
    let io = Prefixed::new(prefix, stream);
    let lifecycle = shared.lifecycle.clone();
    let server_limits = shared.limits.load().server(Hop::Outbound);
    let obs = shared.obs.load_full();
    let pair = obs.outbound_pair(&svc.name, &svc.spiffe_id);
    let _open = obs.metrics.connection_opened(&pair, "http");
    let handler = move |req| {
        let shared = Arc::clone(&shared);
        let svc = Arc::clone(&svc);
        let (obs, pair) = (Arc::clone(&obs), pair.clone());
        async move {
            obs.http(&pair, addrs, req, |req| {
                proxy_request(&shared, &svc, dst, version, req)
            })
            .await
        }
    };
    serve_connection_limited(io, version, handler, lifecycle.draining(), server_limits).await;
}

/// One HTTP request to a mesh service, through the service's resilience stack. In transparent
/// mode `dst` (the original destination) is the preferred endpoint: the first attempt goes to
/// the address the app connected to while that endpoint is usable; retries and ejections fall
/// back to balancing over the service's other endpoints.
async fn proxy_request(
    shared: &Shared,
    svc: &Arc<Service>,
    dst: Option<SocketAddr>,
    version: HttpVersion,
    req: http::Request<Incoming>,
) -> http::Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let stacks = shared.stacks.load_full();
    // `[[outbound.routes]]`: the backend service may differ from the addressed one.
    // (The guard is dropped at once: requests can run for minutes.)
    let choice = {
        let router = shared.router.load();
        router.choose(svc, &parts, |s| split::usable(&stacks, s), fastrand::f64)
    };
    let target = choice.as_ref().map_or(svc, |c| &c.backend);
    if let Err(e) = target.pick() {
        let resp = error_response(&e, Hop::Outbound, request_trace_id(&parts.extensions));
        if let Some(c) = &choice {
            shared.route_metrics.record(&svc.name, c, resp.status());
        }
        return resp;
    }
    let limits = shared.limits.load();
    let body_limit = match limits.check_request(&mut parts) {
        Ok(l) => l,
        Err(e) => return error_response(&e, Hop::Outbound, request_trace_id(&parts.extensions)),
    };
    // The local app is a client too: body idle timeout and route body limits apply.
    let (body, body_faults) = limits.guard_body(&mut parts, body, body_limit);
    let mut req = http::Request::from_parts(parts, body);
    crate::http::authority_from_host(&mut req);
    // The protocol of the mesh hop: HTTP/1.x requests ride HTTP/2 streams (see
    // `http::orig_proto`) unless they switch protocols (WebSocket) or that is turned off.
    let mesh_version = if version == HttpVersion::Http1
        && shared.hop_defaults.mesh_http2
        && !crate::http::is_upgrade_request(&req)
    {
        crate::http::orig_proto::mark(&mut req);
        HttpVersion::Http2
    } else {
        crate::http::orig_proto::strip(&mut req);
        version
    };
    req.extensions_mut().insert(mesh_version);
    // The address the app connected to belongs to the addressed service only, and a VIP is
    // no endpoint.
    if let Some(dst) = dst.filter(|d| Arc::ptr_eq(target, svc) && !svc.is_vip(*d)) {
        req.extensions_mut()
            .insert(crate::resilience::balance::PreferredEndpoint(dst));
    }
    let trace_id = request_trace_id(req.extensions());
    let resp = relay(version, req, Hop::Outbound, |req| stacks.call(target, req)).await;
    let resp = body_faults.settle(resp, Hop::Outbound, trace_id);
    if let Some(c) = &choice {
        shared.route_metrics.record(&svc.name, c, resp.status());
    }
    resp
}

async fn unknown_destination(shared: &Shared, mut stream: TcpStream, dst: SocketAddr) {
    match shared.unknown {
        UnknownDestinations::Deny => {
            shared.denied.inc();
            tracing::warn!(%dst, "connection to a destination outside the mesh denied (outbound.unknown_destinations = \"deny\"; add it to outbound.services if it is a mesh service)");
        }
        UnknownDestinations::Passthrough => {
            match crate::net::connect(
                dst,
                shared.timeouts.connect,
                "a destination outside the mesh",
            )
            .await
            {
                Ok(mut up) => {
                    if let Err(e) = crate::net::copy_bidirectional(&mut stream, &mut up).await {
                        tracing::debug!(%dst, error = %e, "passthrough connection ended with an error");
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = e.cause.as_str(), %dst, detail = %e.detail, "passthrough connect failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
