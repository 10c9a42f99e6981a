//! Hooks through which the resilience layers report what they do (retries, exhausted budgets,
//! circuit transitions), so that metrics can count them without the layers knowing about
//! metrics. The default observer does nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use super::breaker::CircuitState;

/// Receives resilience events; every method defaults to doing nothing.
pub trait Observer: Send + Sync + 'static {
    /// A request of `service` is being retried (called once per retry attempt).
    fn retry(&self, service: &str) {
        let _ = service;
    }

    /// A retry of `service` was wanted but its retry budget was exhausted.
    fn budget_exhausted(&self, service: &str) {
        let _ = service;
    }

    /// The circuit of `endpoint` of `service` moved to `to`.
    fn circuit(&self, service: &str, endpoint: SocketAddr, to: CircuitState) {
        let _ = (service, endpoint, to);
    }

    /// A counter of the requests sent to `endpoint` of `service`, asked for once when the
    /// endpoint joins the balancer (per-endpoint request metrics); `None`: not counted.
    fn endpoint_counter(
        &self,
        service: &str,
        endpoint: SocketAddr,
    ) -> Option<Arc<dyn EndpointCounter>> {
        let _ = (service, endpoint);
        None
    }
}

/// Counts one request to an endpoint.
pub trait EndpointCounter: Send + Sync {
    /// One more request.
    fn inc(&self);
}

impl<F: Fn() + Send + Sync> EndpointCounter for F {
    fn inc(&self) {
        self()
    }
}

/// The observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
