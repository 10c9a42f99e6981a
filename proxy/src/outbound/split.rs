//! Traffic split, header/query routes and failover (`[[outbound.routes]]`): which configured
//! service an HTTP request to an addressed service actually goes to, and the per-backend
//! request and error counts an operator watches during a canary rollout.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::services::{Service, Services};
use crate::config::routing::{MatchKind, RouteMatch, TrafficRoute};
use crate::metrics::Metrics;

/// Why a backend was chosen (the `reason` label of the backend metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A header or query match picked it.
    Match,
    /// The weights picked it.
    Weight,
    /// The route has no weights: the addressed service itself.
    Default,
    /// The chosen backend had no usable endpoint; this is the first backup that has one.
    Failover,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Match => "match",
            Reason::Weight => "weight",
            Reason::Default => "default",
            Reason::Failover => "failover",
        }
    }
}

/// The backend chosen for one request.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The service the request goes to.
    pub backend: Arc<Service>,
    /// Why.
    pub reason: Reason,
}

struct Compiled {
    addressed: Arc<Service>,
    path_prefix: String,
    matches: Vec<(RouteMatch, Arc<Service>)>,
    /// Backends with their cumulative weight (ascending); the last one holds the total.
    weighted: Vec<(u64, Arc<Service>)>,
    failover: Vec<Arc<Service>>,
}

/// The routes of every service, by service index; built from validated configuration.
#[derive(Default)]
pub struct Router {
    by_service: Vec<Vec<Compiled>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self.by_service.iter().map(Vec::len).sum();
        f.debug_struct("Router").field("routes", &n).finish()
    }
}

impl Router {
    /// Compiles `routes` over `services`; a service name that is not configured is an error
    /// naming the route (config validation reports it first, with its field path).
    pub fn new(routes: &[TrafficRoute], services: &Services) -> Result<Router, String> {
        let find = |name: &str, at: &str| {
            services
                .by_name(name)
                .cloned()
                .ok_or_else(|| format!("{at}: unknown service `{name}`"))
        };
        let mut by_service: Vec<Vec<Compiled>> = services.all().iter().map(|_| vec![]).collect();
        for (i, r) in routes.iter().enumerate() {
            let at = format!("outbound.routes[{i}]");
            let svc = find(&r.service, &at)?;
            let matches = r
                .matches
                .iter()
                .map(|m| Ok((m.clone(), find(&m.backend, &at)?)))
                .collect::<Result<_, String>>()?;
            let mut total = 0u64;
            let mut weighted = Vec::new();
            for b in &r.backends {
                let backend = find(&b.service, &at)?;
                if b.weight > 0 {
                    total += u64::from(b.weight);
                    weighted.push((total, backend));
                }
            }
            if !r.backends.is_empty() && total == 0 {
                return Err(format!("{at}.backends: the weights sum to zero"));
            }
            let failover = r
                .failover
                .iter()
                .map(|f| find(f, &at))
                .collect::<Result<_, String>>()?;
            if let Some(list) = by_service.get_mut(svc.index) {
                list.push(Compiled {
                    addressed: svc.clone(),
                    path_prefix: r.path_prefix.clone(),
                    matches,
                    weighted,
                    failover,
                });
                // Longest prefix first.
                list.sort_by_key(|c| std::cmp::Reverse(c.path_prefix.len()));
            }
        }
        Ok(Router { by_service })
    }

    /// The backend for a request to `svc` with this head, or `None` when no route applies
    /// (the request goes to `svc` itself). `usable` says whether a service has an endpoint
    /// that can take a request now; `roll` draws uniformly from `0..1` (called only when the
    /// weights decide).
    pub fn choose(
        &self,
        svc: &Service,
        head: &http::request::Parts,
        usable: impl Fn(&Service) -> bool,
        roll: impl FnOnce() -> f64,
    ) -> Option<Choice> {
        let routes = self.by_service.get(svc.index)?;
        let path = head.uri.path();
        let route = routes.iter().find(|c| path.starts_with(&c.path_prefix))?;
        let (backend, reason) =
            if let Some((_, b)) = route.matches.iter().find(|(m, _)| matches(m, head)) {
                (b.clone(), Reason::Match)
            } else if let Some((total, _)) = route.weighted.last() {
                // `roll * total` is below `total`; the first cumulative weight above it wins.
                let point = (roll() * *total as f64) as u64;
                let b = route
                    .weighted
                    .iter()
                    .find(|(upto, _)| point < *upto)
                    .or(route.weighted.last())
                    .map(|(_, b)| b.clone())?;
                (b, Reason::Weight)
            } else {
                // No weights: the addressed service itself (matches and failover only).
                (route.addressed.clone(), Reason::Default)
            };
        if usable(&backend) {
            return Some(Choice { backend, reason });
        }
        match route.failover.iter().find(|f| usable(f)) {
            Some(f) => Some(Choice {
                backend: f.clone(),
                reason: Reason::Failover,
            }),
            // Nothing better: the chosen backend answers with its own cause.
            None => Some(Choice { backend, reason }),
        }
    }
}

fn matches(m: &RouteMatch, head: &http::request::Parts) -> bool {
    match m.kind {
        MatchKind::Header => {
            let mut values = head.headers.get_all(m.name.as_str()).iter();
            match &m.value {
                None => values.next().is_some(),
                Some(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
            }
        }
        MatchKind::Query => {
            let Some(q) = head.uri.query() else {
                return false;
            };
            q.split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == m.name && m.value.as_deref().is_none_or(|want| v == want)
            })
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Requests and errors per chosen backend (`docmesh_route_backend_requests_total`,
/// `docmesh_route_backend_errors_total`, labels `service`, `backend`, `reason`).
#[derive(Clone, Debug, Default)]
pub struct RouteMetrics {
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
}

impl RouteMetrics {
    /// Registers the families in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let m = RouteMetrics::default();
        metrics.register(
            "route_backend_requests",
            "HTTP requests per addressed service and the backend service a route chose (reason: match, weight, failover, default)",
            m.requests.clone(),
        );
        metrics.register(
            "route_backend_errors",
            "HTTP requests per chosen backend that failed (5xx from the backend or a proxy-synthesized error)",
            m.errors.clone(),
        );
        m
    }

    /// Counts one routed request and whether it failed (`status` 5xx).
    pub fn record(&self, service: &str, choice: &Choice, status: http::StatusCode) {
        let labels = vec![
            ("service", service.to_owned()),
            ("backend", choice.backend.name.clone()),
            ("reason", choice.reason.as_str().to_owned()),
        ];
        if status.is_server_error() {
            self.errors.get_or_create(&labels).inc();
        }
        self.requests.get_or_create(&labels).inc();
    }
}

/// Whether `svc` has an endpoint that can take a request now: resolved, not ejected by its
/// circuit breaker and not failing its health check.
pub(super) fn usable(stacks: &super::mesh::MeshStacks, svc: &Service) -> bool {
    if svc.endpoints().is_empty() {
        return false;
    }
    stacks.stack(svc).is_some_and(|stack| {
        stack
            .balancer()
            .slots()
            .iter()
            .any(|s| s.health.is_healthy() && s.breaker.is_available())
    })
}

#[cfg(test)]
mod tests;
