//! Resilience: timeouts, retries, circuit breaking, concurrency limits and balancing for the
//! outbound HTTP path, and the mapping of every upstream failure to a [`crate::errors::Cause`].
//!
//! The stack of one service, outermost first (each layer in its own file):
//!
//! ```text
//! route selection (policy.rs)  → Arc<RoutePolicy> in the request extensions, body → ReplayBody
//! ConcurrencyLimit (limit.rs)  → overloaded
//! RequestTimeout (timeout.rs)  → response-timeout (whole request, retries included)
//! Retry (retry.rs)             → backoff with full jitter, budget (budget.rs), replay (body.rs)
//! Balancer (balance.rs)        → p2c over usable endpoints, health (health.rs), no-healthy-endpoint;
//!                                a route's hash key picks by consistent hashing (hash.rs)
//! BreakerService (breaker.rs)  → circuit-open, per endpoint
//! AttemptTimeout (timeout.rs)  → response-timeout (per try, response headers)
//! endpoint (endpoint.rs)       → the datapath's connection to one address; errors via classify.rs
//! ```

pub mod backoff;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod budget;
pub mod endpoint;
pub mod guard;
pub mod hash;
pub mod health;
pub mod limit;
pub mod mesh_observer;
pub mod observer;
pub mod policy;
pub mod resolve;
pub mod retry;
pub mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

pub use crate::classify::AttemptError;
pub use body::{BoxError, ReplayBody};
pub use endpoint::{Endpoint, NewService};
pub use guard::Guarded;
pub use policy::{RoutePolicy, ServicePolicy};
pub use retry::Attempts;

use crate::errors::ProxyError;

/// The assembled resilience stack of one service.
pub struct ServiceStack<N: NewService<Endpoint>, RB> {
    policy: Arc<ServicePolicy>,
    balancer: balance::Balancer<N>,
    svc: BoxCloneSyncService<Request<ReplayBody>, Response<Guarded<RB>>, AttemptError>,
}

impl<N: NewService<Endpoint>, RB> Clone for ServiceStack<N, RB> {
    fn clone(&self) -> Self {
        ServiceStack {
            policy: self.policy.clone(),
            balancer: self.balancer.clone(),
            svc: self.svc.clone(),
        }
    }
}

impl<N, RB> ServiceStack<N, RB>
where
    N: NewService<Endpoint> + Send + Sync + 'static,
    N::Service: tower::Service<Request<ReplayBody>, Response = Response<RB>, Error = AttemptError>
        + Clone
        + Send
        + Sync
        + 'static,
    <N::Service as tower::Service<Request<ReplayBody>>>::Future: Send,
    RB: Body<Data = Bytes> + Send + Sync + 'static,
    RB::Error: Into<BoxError>,
{
    /// Builds the stack of a service over its endpoint addresses; `new` makes the service that
    /// sends a request to one address (the datapath's pooled mTLS client, or a plain one).
    pub fn new(policy: ServicePolicy, new: N, addrs: &[SocketAddr]) -> Self {
        Self::observed(policy, new, addrs, Arc::new(observer::NoopObserver))
    }

    /// Like [`ServiceStack::new`], reporting retries, exhausted budgets and circuit
    /// transitions to `observer` (metrics).
    pub fn observed(
        policy: ServicePolicy,
        new: N,
        addrs: &[SocketAddr],
        observer: Arc<dyn observer::Observer>,
    ) -> Self {
        let service = policy.service.clone();
        let budget = Arc::new(budget::RetryBudget::new(&policy.budget));
        let limits = policy.limits.clone();
        let balancer = balance::Balancer::new(policy.clone(), new, addrs, observer.clone());
        let retry = retry::Retry::new(balancer.clone(), budget, service.clone(), observer);
        let svc = limit::ConcurrencyLimit::new(
            timeout::RequestTimeout::new(retry, service.clone()),
            limits,
            service,
        );
        ServiceStack {
            policy: Arc::new(policy),
            balancer,
            svc: BoxCloneSyncService::new(svc),
        }
    }

    /// The balancer (endpoint states, health checks, endpoint updates).
    pub fn balancer(&self) -> &balance::Balancer<N> {
        &self.balancer
    }

    /// Replaces the endpoint addresses (after DNS re-resolution).
    pub fn update_endpoints(&self, addrs: &[SocketAddr]) {
        self.balancer.update(addrs);
    }

    /// The policy of this service.
    pub fn policy(&self) -> &ServicePolicy {
        &self.policy
    }

    /// Sends one request through the stack: picks the route policy by method and path, makes
    /// the body replayable, and returns the upstream's response or the failure to synthesize.
    pub async fn call<B>(&self, req: Request<B>) -> Result<Response<Guarded<RB>>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let route = self.policy.route(req.method(), req.uri().path());
        let stream_idle = route.timeouts.stream_idle;
        let (mut parts, body) = req.into_parts();
        let body = ReplayBody::new(body, route.retry.max_replay_bytes);
        parts.extensions.insert(route);
        let mut rsp = self
            .svc
            .clone()
            .oneshot(Request::from_parts(parts, body))
            .await
            .map_err(|e| e.error)?;
        // An upgrade (WebSocket) is spliced after this; the splice enforces the idle limit.
        if let (http::StatusCode::SWITCHING_PROTOCOLS, Some(idle)) = (rsp.status(), stream_idle) {
            rsp.extensions_mut()
                .insert(crate::http::upgrade::StreamIdle(idle));
        }
        Ok(rsp)
    }
}
