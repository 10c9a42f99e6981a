//! Feeds the resilience layers' events (retries, exhausted retry budgets, circuit transitions)
//! into the mesh metrics, labelled with the outbound service pair.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::breaker::CircuitState;
use super::observer::{EndpointCounter, Observer};
use crate::config::outbound::ServiceConfig;
use crate::observe::{metrics, Observability};

/// The resilience [`Observer`] of `docmesh-proxy run`.
#[derive(Debug, Clone)]
pub struct MeshObserver {
    obs: Observability,
    /// Configured SPIFFE ID of each service (the destination of its pair).
    destinations: HashMap<String, String>,
}

impl MeshObserver {
    /// An observer for the configured outbound `services`.
    pub fn new(obs: Observability, services: &[ServiceConfig]) -> Self {
        MeshObserver {
            obs,
            destinations: services
                .iter()
                .map(|s| (s.name.clone(), s.spiffe_id.clone()))
                .collect(),
        }
    }

    fn pair(&self, service: &str) -> crate::observe::ServicePair {
        let dest = self
            .destinations
            .get(service)
            .map_or(metrics::UNKNOWN, String::as_str);
        self.obs.outbound_pair(service, &dest)
    }
}

impl Observer for MeshObserver {
    fn retry(&self, service: &str) {
        self.obs.metrics.retry(&self.pair(service));
    }

    fn budget_exhausted(&self, service: &str) {
        self.obs.metrics.retry_budget_exhausted(&self.pair(service));
    }

    fn endpoint_counter(
        &self,
        service: &str,
        endpoint: SocketAddr,
    ) -> Option<Arc<dyn EndpointCounter>> {
        let c = self
            .obs
            .metrics
            .endpoint_requests(service, &endpoint.to_string());
        Some(Arc::new(move || {
            c.inc();
        }))
    }

    fn circuit(&self, service: &str, endpoint: SocketAddr, to: CircuitState) {
        let to = match to {
            CircuitState::Closed => metrics::CircuitState::Closed,
            CircuitState::Open => metrics::CircuitState::Open,
            CircuitState::HalfOpen => metrics::CircuitState::HalfOpen,
        };
        self.obs
            .metrics
            .circuit_transition(service, &endpoint.to_string(), to);
    }
}
