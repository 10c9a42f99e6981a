//! Resolved resilience policy: concrete values the layers use, built from
//! `config::resilience` (defaults ⊕ service ⊕ route) by `resolve.rs`; a request's route is
//! picked by [`ServicePolicy::route`].

use std::sync::Arc;
use std::time::Duration;

use http::Method;

/// Timeouts of one route. `None` disables a timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeoutPolicy {
    /// TCP connect (applied by the datapath's connector).
    pub connect: Duration,
    /// TLS handshake on the mesh hop (applied by the datapath's connector).
    pub tls_handshake: Duration,
    /// Per attempt: from the end of the request body to the response headers.
    pub response_headers: Option<Duration>,
    /// Per attempt: from dispatch to the response headers (covers connect, upload and wait).
    pub per_try: Option<Duration>,
    /// Whole request until response headers, all attempts and backoffs included.
    pub request: Option<Duration>,
    /// Pooled connections idle longer than this are closed (must stay below upstream keep-alives).
    pub pool_idle: Duration,
    /// An upgraded (WebSocket) or streaming exchange with no byte either way for this long is closed.
    pub stream_idle: Option<Duration>,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy {
            connect: Duration::from_secs(3),
            tls_handshake: Duration::from_secs(5),
            response_headers: Some(Duration::from_secs(60)),
            per_try: None,
            request: Some(Duration::from_secs(600)),
            // Node.js (OnlyOffice docservice) closes idle keep-alive connections after 5 s.
            pool_idle: Duration::from_secs(4),
            // socket.io pings every 25 s and waits 20 s for the pong: stay well above 45 s.
            stream_idle: Some(Duration::from_secs(120)),
        }
    }
}

/// Retry rules of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before retry n is uniform in `[0, min(backoff_max, backoff_base * 2^(n-1))]`.
    pub backoff_base: Duration,
    /// Upper bound of a single backoff.
    pub backoff_max: Duration,
    /// Response statuses retried (idempotent requests only: the upstream saw the request).
    pub on_status: Vec<u16>,
    /// Request bodies up to this many bytes are buffered for replay; larger ones are not retried
    /// once any of their bytes was sent.
    pub max_replay_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            on_status: vec![502, 503, 504],
            max_replay_bytes: 64 * 1024,
        }
    }
}

/// The retry budget of a service (finagle/linkerd style).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPolicy {
    /// Retries allowed per original request, averaged over `ttl` (0.2 = 20 % extra load).
    pub ratio: f64,
    /// Retries always allowed per second, even without traffic.
    pub min_per_second: u32,
    /// Window over which requests and retries are counted.
    pub ttl: Duration,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Per-endpoint circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit (0 disables the breaker).
    pub consecutive_failures: u32,
    /// First open period; doubles each time the probe fails.
    pub open_base: Duration,
    /// Longest open period.
    pub open_max: Duration,
    /// Jitter ratio in `[0, 1]`: an open period `d` lasts uniformly in `[d * (1 - jitter), d]`.
    pub jitter: f64,
    /// Response statuses that count as endpoint failures (transport failures always count).
    pub failure_statuses: Vec<u16>,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(60),
            jitter: 0.5,
            failure_statuses: vec![502, 503, 504],
        }
    }
}

/// Limits on concurrent and pending requests of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsPolicy {
    /// Requests in flight to the service at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; beyond that a request fails at once with `overloaded`.
    pub max_pending: usize,
}

impl Default for LimitsPolicy {
    fn default() -> Self {
        LimitsPolicy {
            max_concurrent: 1024,
            max_pending: 1024,
        }
    }
}

/// How a request picks one of a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceStrategy {
    /// Power of two choices on requests in flight.
    P2cLoad,
    /// Power of two choices on latency (EWMA of response-header latency) times load.
    P2cEwma,
}

/// Balancing settings of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancePolicy {
    /// Load metric used by power of two choices.
    pub strategy: BalanceStrategy,
    /// Decay time of the latency EWMA.
    pub ewma_decay: Duration,
}

impl Default for BalancePolicy {
    fn default() -> Self {
        BalancePolicy {
            strategy: BalanceStrategy::P2cEwma,
            ewma_decay: Duration::from_secs(10),
        }
    }
}

/// Optional active health check of every endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckPolicy {
    /// Path requested with GET (OnlyOffice: `/healthcheck`).
    pub path: String,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Expected status.
    pub expect_status: u16,
    /// Expected body (compared after trimming whitespace); OnlyOffice answers `true` or `false`.
    pub expect_body: Option<String>,
    /// Consecutive failed checks before an endpoint is taken out.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks before it is taken back.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckPolicy {
    /// The defaults of `[resilience.services.<name>.health_check]`.
    fn default() -> Self {
        Self::from(&crate::config::resilience::HealthCheckConfig::default())
    }
}

/// The per-request part of a policy (what a route may override).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutePolicy {
    /// Timeouts of this route.
    pub timeouts: TimeoutPolicy,
    /// Retry rules of this route.
    pub retry: RetryPolicy,
    /// Consistent-hashing key: requests carrying it stick to one endpoint (see `hash.rs`).
    pub hash_key: Option<Arc<super::hash::HashKey>>,
}

/// Which requests a route override applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// Methods matched; empty matches every method.
    pub methods: Vec<Method>,
    /// Path prefix matched (`/` matches everything).
    pub path_prefix: String,
}

impl RouteMatch {
    /// Whether a request with this method and path falls under the route.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && path.starts_with(&self.path_prefix)
    }

    /// Specificity used to pick between matching routes: longer prefix first, then a route that
    /// names methods over one that does not.
    fn rank(&self) -> (usize, bool) {
        (self.path_prefix.len(), !self.methods.is_empty())
    }
}

/// The complete, resolved policy of one service.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    /// Service name, used in operator-facing details.
    pub service: Arc<str>,
    /// Policy of requests that match no route.
    pub default_route: Arc<RoutePolicy>,
    /// Route overrides, each already merged over the service defaults.
    pub routes: Vec<(RouteMatch, Arc<RoutePolicy>)>,
    /// Retry budget shared by all routes of the service.
    pub budget: BudgetPolicy,
    /// Breaker of every endpoint of the service.
    pub breaker: BreakerPolicy,
    /// Concurrency limits of the service.
    pub limits: LimitsPolicy,
    /// Endpoint selection.
    pub balance: BalancePolicy,
    /// Active health check, if any.
    pub health_check: Option<HealthCheckPolicy>,
}

impl ServicePolicy {
    /// A policy with every default, for a service named `service`.
    pub fn new(service: &str) -> Self {
        ServicePolicy {
            service: service.into(),
            default_route: Arc::new(RoutePolicy::default()),
            routes: Vec::new(),
            budget: BudgetPolicy::default(),
            breaker: BreakerPolicy::default(),
            limits: LimitsPolicy::default(),
            balance: BalancePolicy::default(),
            health_check: None,
        }
    }

    /// The policy of a request: the most specific matching route (earlier routes win ties),
    /// else the service default.
    pub fn route(&self, method: &Method, path: &str) -> Arc<RoutePolicy> {
        let mut best: Option<&(RouteMatch, Arc<RoutePolicy>)> = None;
        for r in &self.routes {
            if r.0.matches(method, path) && best.is_none_or(|b| r.0.rank() > b.0.rank()) {
                best = Some(r);
            }
        }
        best.map_or_else(|| self.default_route.clone(), |r| r.1.clone())
    }
}

/// Whether a method is idempotent (RFC 9110 §9.2.2): such requests may be retried after the
/// upstream saw them.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(methods: &[Method], prefix: &str, attempts: u32) -> (RouteMatch, Arc<RoutePolicy>) {
        let mut p = RoutePolicy::default();
        p.retry.max_attempts = attempts;
        (
            RouteMatch {
                methods: methods.to_vec(),
                path_prefix: prefix.into(),
            },
            Arc::new(p),
        )
    }

    #[test]
    fn most_specific_route_wins() {
        let mut sp = ServicePolicy::new("ds");
        sp.routes = vec![
            route(&[], "/", 2),
            route(&[], "/doc/", 4),
            route(&[Method::POST], "/doc/", 5),
        ];
        assert_eq!(sp.route(&Method::POST, "/doc/x/c/").retry.max_attempts, 5);
        assert_eq!(sp.route(&Method::GET, "/doc/x/c/").retry.max_attempts, 4);
        assert_eq!(sp.route(&Method::GET, "/other").retry.max_attempts, 2);
        sp.routes.remove(0);
        assert_eq!(sp.route(&Method::GET, "/other").retry.max_attempts, 3);
    }

    #[test]
    fn defaults_suit_onlyoffice() {
        let t = TimeoutPolicy::default();
        assert!(
            t.pool_idle < Duration::from_secs(5),
            "below Node.js keep-alive"
        );
        assert!(
            t.stream_idle.unwrap() > Duration::from_secs(45),
            "above socket.io ping"
        );
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
    }
}
