//! The resilience stacks of the outbound data path: one [`ServiceStack`] per configured
//! service, over the datapath's pooled mesh connections (a [`SendFn`]), with endpoints kept in
//! step with the service's (re-resolved) addresses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;

use super::connect::{Connectors, HopTimeouts};
use super::services::{Service, Services};
use crate::errors::{Cause, ProxyError};
use crate::http::pool::Pool;
use crate::protocol::HttpVersion;
use crate::resilience::endpoint::{EndpointFn, NewFnEndpoint};
use crate::resilience::observer::Observer;
use crate::resilience::policy::ServicePolicy;
use crate::resilience::ServiceStack;

/// Sends one request to one endpoint over the mesh (pooled connection, mTLS hop). The route's
/// connect and TLS-handshake timeouts are in the request extensions (`Arc<RoutePolicy>`).
pub type SendFn = EndpointFn<Incoming>;

/// The stack type of one mesh service.
pub type MeshStack = ServiceStack<NewFnEndpoint<Incoming>, Incoming>;

/// Key of a pooled mesh connection: endpoint, service (whose SPIFFE ID it verified),
/// protocol, and the identity generation it was verified under (connections of an older
/// generation are retired: see [`super::connect::ClientTls::generation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: std::net::SocketAddr,
    service: usize,
    version: HttpVersion,
    generation: u64,
}

/// The send function of the outbound data path: one request to one endpoint over a pooled
/// mesh connection (opened with `connectors`, i.e. mTLS in production). The HTTP version comes
/// from the request extensions (`HttpVersion`, default HTTP/1.1); the connect and TLS handshake
/// timeouts from the route policy there.
pub(crate) fn mesh_send(
    services: Arc<arc_swap::ArcSwap<Services>>,
    connectors: Arc<Connectors>,
    pool_idle: std::time::Duration,
    keep_alive: Option<(std::time::Duration, std::time::Duration)>,
) -> SendFn {
    let mut pool = Pool::<PoolKey, crate::resilience::ReplayBody>::new(pool_idle);
    if let Some((interval, timeout)) = keep_alive {
        pool = pool.with_h2_keep_alive(crate::http::pool::H2KeepAlive { interval, timeout });
    }
    let pool = Arc::new(pool);
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(connectors.generation()));
    Arc::new(
        move |ep: crate::resilience::Endpoint, req: Request<crate::resilience::ReplayBody>| {
            let (pool, connectors, services) = (pool.clone(), connectors.clone(), services.clone());
            let current = connectors.generation();
            if generation.swap(current, std::sync::atomic::Ordering::AcqRel) != current {
                tracing::info!(
                    "SVID or trust bundles changed: pooled mesh connections verified before \
                     are retired (they close once their requests in flight finish)"
                );
                pool.retain(|k| k.generation == current);
            }
            Box::pin(async move {
                let svc = services
                    .load()
                    .by_name(&ep.service)
                    .cloned()
                    .ok_or_else(|| {
                        ProxyError::new(
                            Cause::Internal,
                            format!(
                                "service `{}` has an endpoint but no configuration; this is a bug \
                             in docmesh, please report it with this message",
                                ep.service
                            ),
                        )
                    })?;
                let version = req
                    .extensions()
                    .get::<HttpVersion>()
                    .copied()
                    .unwrap_or(HttpVersion::Http1);
                let t = crate::resilience::timeout::route_of(&req).timeouts.clone();
                let timeouts = HopTimeouts {
                    connect: t.connect,
                    handshake: t.tls_handshake,
                    keep_alive,
                };
                let key = PoolKey {
                    addr: ep.addr,
                    service: svc.index,
                    version,
                    generation: current,
                };
                pool.send(&key, version, req, || {
                    connectors.connect(&svc, ep.addr, version.into(), timeouts)
                })
                .await
            })
        },
    )
}

struct Entry {
    stack: MeshStack,
    seen: Mutex<Arc<Vec<SocketAddr>>>,
}

/// The stacks of every outbound service, by service index.
pub struct MeshStacks {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for MeshStacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStacks")
            .field("services", &self.entries.len())
            .finish()
    }
}

impl MeshStacks {
    /// One stack per service of `services`, with the policy `policy(name)`; retries, budget
    /// refusals and circuit transitions are reported to `observer`.
    pub fn new(
        services: &Services,
        policy: impl Fn(&str) -> ServicePolicy,
        send: SendFn,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let entries = services
            .all()
            .iter()
            .map(|svc| {
                let eps = svc.endpoints();
                Entry {
                    stack: ServiceStack::observed(
                        policy(&svc.name),
                        NewFnEndpoint(send.clone()),
                        &eps,
                        observer.clone(),
                    ),
                    seen: Mutex::new(eps),
                }
            })
            .collect();
        MeshStacks { entries }
    }

    /// The stack of `svc`, its endpoints brought up to date.
    pub fn stack(&self, svc: &Service) -> Option<&MeshStack> {
        let entry = self.entries.get(svc.index)?;
        let eps = svc.endpoints();
        let mut seen = entry.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&seen, &eps) {
            entry.stack.update_endpoints(&eps);
            *seen = eps;
        }
        Some(&entry.stack)
    }

    /// Sends `req` to `svc` through its stack (route policy, limits, timeouts, retries,
    /// balancing, breakers). The response's concurrency slot and in-flight count are released
    /// when its headers are returned (the data path's body type is not boxed).
    pub async fn call<B>(
        &self,
        svc: &Service,
        req: Request<B>,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::resilience::BoxError>,
    {
        let Some(stack) = self.stack(svc) else {
            return Err(ProxyError::new(
                crate::errors::Cause::Internal,
                format!(
                    "service `{}` has no resilience stack; this is a bug in docmesh, please \
                     report it with this message",
                    svc.name
                ),
            ));
        };
        let rsp = stack.call(req).await?;
        Ok(rsp.map(crate::resilience::Guarded::into_inner))
    }
}
