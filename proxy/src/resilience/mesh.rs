//! The resilience stacks of the outbound data path: one [`ServiceStack`] per configured
//! service, over the datapath's pooled mesh connections (a [`SendFn`]), with endpoints kept in
//! step with the service's (re-resolved) addresses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;

use super::endpoint::{EndpointFn, NewFnEndpoint};
use super::policy::ServicePolicy;
use super::ServiceStack;
use crate::errors::ProxyError;
use crate::outbound::services::{Service, Services};

/// Sends one request to one endpoint over the mesh (pooled connection, mTLS hop). The route's
/// connect and TLS-handshake timeouts are in the request extensions (`Arc<RoutePolicy>`).
pub type SendFn = EndpointFn<Incoming>;

/// The stack type of one mesh service.
pub type MeshStack = ServiceStack<NewFnEndpoint<Incoming>, Incoming>;

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
    /// One stack per service of `services`, with the policy `policy(name)`.
    pub fn new(services: &Services, policy: impl Fn(&str) -> ServicePolicy, send: SendFn) -> Self {
        let entries = services
            .all()
            .iter()
            .map(|svc| {
                let eps = svc.endpoints();
                Entry {
                    stack: ServiceStack::new(policy(&svc.name), NewFnEndpoint(send.clone()), &eps),
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
    pub async fn call(
        &self,
        svc: &Service,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let Some(stack) = self.stack(svc) else {
            return Err(ProxyError::new(
                crate::errors::Cause::NoHealthyEndpoint,
                format!("service `{}` has no resilience stack (internal)", svc.name),
            ));
        };
        let rsp = stack.call(req).await?;
        Ok(rsp.map(super::Guarded::into_inner))
    }
}
