//! `[resilience]`: timeouts, retries, circuit breaking, limits, balancing and health checks.
//!
//! ```toml
//! [resilience.defaults.timeouts]        # every service
//! response_headers = "60s"
//! [resilience.services.documentserver.retry]
//! max_attempts = 2
//! [[resilience.services.documentserver.routes]]
//! methods = ["POST"]
//! path_prefix = "/ConvertService.ashx"
//! timeouts = { response_headers = "30m", request = "31m" }
//! ```
//!
//! A request's policy is: built-in defaults, then `defaults`, then the service's section, then
//! the most specific matching route (longest `path_prefix`, then one naming methods; the
//! service's routes before the defaults' routes, before the built-in OnlyOffice routes). Only
//! `timeouts`, `retry` and `hash_key` can be set per route; breaker, limits, balance and health
//! check are per service (they concern endpoints). A duration of `0s` disables that timeout.
//!
//! `hash_key = [{ query = "shardkey" }, { header = "x-doc" }, { cookie = "sid" }]` on a route
//! sends requests carrying the first present key to one endpoint by consistent hashing; a
//! route without `hash_key` inherits the built-in OnlyOffice key (`shardkey`, then `WOPISrc`)
//! while `onlyoffice_routes` is on, and `hash_key = []` turns hashing off for the route.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use crate::resilience::hash::{HashKey, HashSource};
use crate::resilience::policy::{
    BalanceStrategy, HealthCheckPolicy, RouteMatch, RoutePolicy, ServicePolicy,
};

/// Errors in the `[resilience]` section.
#[derive(Debug, thiserror::Error)]
pub enum ResilienceConfigError {
    /// A route names a method that is not a valid HTTP method.
    #[error("resilience.{at}.methods: `{method}` is not an HTTP method")]
    BadMethod {
        /// Where (`defaults.routes[0]`, `services.x.routes[1]`).
        at: String,
        /// The offending value.
        method: String,
    },
    /// A route's path prefix does not start with `/`.
    #[error("resilience.{at}.path_prefix: `{prefix}` must start with `/`")]
    BadPrefix {
        /// Where.
        at: String,
        /// The offending value.
        prefix: String,
    },
    /// A hash key source is malformed.
    #[error("resilience.{at}: {what}")]
    BadHashKey {
        /// Where (`services.x.routes[0].hash_key[1]`).
        at: String,
        /// What is wrong.
        what: String,
    },
    /// A value is out of its range.
    #[error("resilience.{at}: {what}")]
    OutOfRange {
        /// Where.
        at: String,
        /// What is wrong and the allowed range.
        what: String,
    },
}

impl ResilienceConfigError {
    /// The field path and the message, for the config checker's problem list.
    pub fn split(&self) -> (String, String) {
        match self {
            Self::BadMethod { at, method } => (
                format!("resilience.{at}.methods"),
                format!("`{method}` is not an HTTP method"),
            ),
            Self::BadPrefix { at, prefix } => (
                format!("resilience.{at}.path_prefix"),
                format!("`{prefix}` must start with `/`"),
            ),
            Self::OutOfRange { at, what } | Self::BadHashKey { at, what } => {
                (format!("resilience.{at}"), what.clone())
            }
        }
    }
}

/// The `[resilience]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Settings for every service.
    pub defaults: ServiceResilience,
    /// Per-service settings, keyed by the service name of `[outbound]`.
    pub services: BTreeMap<String, ServiceResilience>,
    /// Add the built-in OnlyOffice routes (long timeouts for synchronous ConvertService and
    /// docbuilder, long idle for socket.io under `/doc/`, 10 min for callbacks) and hash
    /// requests carrying `shardkey` or `WOPISrc` to one endpoint per document (routes without
    /// their own `hash_key`). Default true.
    pub onlyoffice_routes: bool,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            defaults: ServiceResilience::default(),
            services: BTreeMap::new(),
            onlyoffice_routes: true,
        }
    }
}

/// Resilience settings of a service (or of every service, in `defaults`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceResilience {
    /// Timeouts.
    pub timeouts: TimeoutsConfig,
    /// Retries and the retry budget.
    pub retry: RetryConfig,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Concurrent and pending request limits.
    pub limits: LimitsConfig,
    /// Endpoint selection.
    pub balance: BalanceConfig,
    /// Active health check (absent: none).
    pub health_check: Option<HealthCheckConfig>,
    /// Overrides of `timeouts` and `retry` by method and path prefix.
    pub routes: Vec<RouteConfig>,
}

/// Timeouts; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP connect (default 3s).
    #[serde(with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// TLS handshake on the mesh hop (default 5s).
    #[serde(with = "humantime_serde")]
    pub tls_handshake: Option<Duration>,
    /// Per attempt, from the end of the request body to the response headers (default 60s).
    #[serde(with = "humantime_serde")]
    pub response_headers: Option<Duration>,
    /// Per attempt, from dispatch to the response headers (default off).
    #[serde(with = "humantime_serde")]
    pub per_try: Option<Duration>,
    /// Whole request until response headers, retries included (default 10m).
    #[serde(with = "humantime_serde")]
    pub request: Option<Duration>,
    /// Idle time after which pooled connections close; keep it below the upstream's keep-alive
    /// (Node.js: 5 s) (default 4s).
    #[serde(with = "humantime_serde")]
    pub pool_idle: Option<Duration>,
    /// No byte either way on an upgraded (WebSocket) or streaming exchange for this long closes
    /// it; keep it above 45 s for socket.io (default 120s).
    #[serde(with = "humantime_serde")]
    pub stream_idle: Option<Duration>,
}

/// Retries; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts including the first; 1 disables retries (default 3).
    pub max_attempts: Option<u32>,
    /// First backoff ceiling, doubling per retry, full jitter (default 25ms).
    #[serde(with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// Largest backoff (default 1s).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// Statuses retried for idempotent requests (default [502, 503, 504]).
    pub on_status: Option<Vec<u16>>,
    /// Bodies up to this size are buffered for replay (default 65536).
    pub max_replay_bytes: Option<usize>,
    /// Retry budget: retries per request over `budget_ttl` (default 0.2; per service).
    pub budget_ratio: Option<f64>,
    /// Retry budget: retries always allowed per second (default 10; per service).
    pub budget_min_per_second: Option<u32>,
    /// Retry budget window (default 10s; per service).
    #[serde(with = "humantime_serde")]
    pub budget_ttl: Option<Duration>,
}

/// Circuit breaker; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open an endpoint's circuit; 0 disables (default 5).
    pub consecutive_failures: Option<u32>,
    /// First open period, doubling after each failed probe (default 1s).
    #[serde(with = "humantime_serde")]
    pub open_base: Option<Duration>,
    /// Longest open period (default 60s).
    #[serde(with = "humantime_serde")]
    pub open_max: Option<Duration>,
    /// Fraction by which an open period may be shortened at random, 0..=1 (default 0.5).
    pub jitter: Option<f64>,
    /// Statuses counted as endpoint failures (default [502, 503, 504]).
    pub failure_statuses: Option<Vec<u16>>,
}

/// Limits; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests in flight per service (default 1024).
    pub max_concurrent: Option<usize>,
    /// Requests waiting for a slot before `overloaded` (default 1024).
    pub max_pending: Option<usize>,
}

/// Balancing; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceConfig {
    /// `p2c-ewma` (latency, default) or `p2c-load` (requests in flight).
    pub strategy: Option<BalanceStrategyConfig>,
    /// Decay of the latency average (default 10s).
    #[serde(with = "humantime_serde")]
    pub ewma_decay: Option<Duration>,
}

/// Names of the balancing strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceStrategyConfig {
    /// Power of two choices on latency × load.
    P2cEwma,
    /// Power of two choices on requests in flight.
    P2cLoad,
}

/// Active health check of every endpoint of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path requested with GET (default `/healthcheck`).
    pub path: String,
    /// Time between checks (default 5s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one check (default 2s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Expected status (default 200).
    pub expect_status: u16,
    /// Expected body after trimming; for OnlyOffice's `/healthcheck` use `"true"`.
    pub expect_body: Option<String>,
    /// Failed checks in a row before an endpoint is taken out (default 2).
    pub unhealthy_threshold: u32,
    /// Passed checks in a row before it is taken back (default 1).
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        let d = HealthCheckPolicy::default();
        HealthCheckConfig {
            path: d.path,
            interval: d.interval,
            timeout: d.timeout,
            expect_status: d.expect_status,
            expect_body: d.expect_body,
            unhealthy_threshold: d.unhealthy_threshold,
            healthy_threshold: d.healthy_threshold,
        }
    }
}

/// A route override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Methods matched (empty: all).
    pub methods: Vec<String>,
    /// Path prefix matched (default `/`).
    pub path_prefix: String,
    /// Timeout overrides.
    pub timeouts: TimeoutsConfig,
    /// Retry overrides (the budget fields are per service and ignored here).
    pub retry: RetryConfig,
    /// Consistent-hashing key, first present source wins (unset: inherited; `[]`: none).
    pub hash_key: Option<Vec<HashSourceConfig>>,
}

/// One source of a route's hash key: exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashSourceConfig {
    /// A query parameter (case-sensitive, e.g. `shardkey`, `WOPISrc`).
    pub query: Option<String>,
    /// A request header (e.g. `x-document-key`).
    pub header: Option<String>,
    /// A cookie (e.g. `session`).
    pub cookie: Option<String>,
}

impl HashSourceConfig {
    fn resolve(&self) -> Result<HashSource, String> {
        let set = [&self.query, &self.header, &self.cookie]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if set != 1 {
            return Err("set exactly one of `query`, `header` or `cookie`".into());
        }
        let nonempty = |kind: &str, v: &str| {
            if v.trim().is_empty() {
                Err(format!("the {kind} name is empty"))
            } else {
                Ok(v.to_owned())
            }
        };
        if let Some(q) = &self.query {
            return nonempty("query parameter", q).map(HashSource::Query);
        }
        if let Some(c) = &self.cookie {
            return nonempty("cookie", c).map(HashSource::Cookie);
        }
        let h = nonempty("header", self.header.as_deref().unwrap_or_default())?;
        http::header::HeaderName::from_bytes(h.as_bytes())
            .map(HashSource::Header)
            .map_err(|_| format!("`{h}` is not a valid header name"))
    }
}

fn resolve_hash_key(sources: &[HashSourceConfig]) -> Option<Arc<HashKey>> {
    let sources: Vec<_> = sources.iter().filter_map(|s| s.resolve().ok()).collect();
    (!sources.is_empty()).then(|| Arc::new(HashKey { sources }))
}

/// The built-in OnlyOffice routes (see `onlyoffice_routes`).
pub fn onlyoffice_routes() -> Vec<RouteConfig> {
    let long = |prefix: &str, d: u64| RouteConfig {
        methods: vec!["POST".into()],
        path_prefix: prefix.into(),
        timeouts: TimeoutsConfig {
            response_headers: Some(Duration::from_secs(d)),
            request: Some(Duration::from_secs(d + 60)),
            ..Default::default()
        },
        retry: RetryConfig::default(),
        hash_key: None,
    };
    vec![
        // Synchronous conversions take up to 30 minutes.
        long("/ConvertService.ashx", 30 * 60),
        long("/converter", 30 * 60),
        long("/docbuilder", 30 * 60),
        // socket.io: pings every 25 s, 20 s ping timeout; long-polling holds requests ~25 s.
        RouteConfig {
            path_prefix: "/doc/".into(),
            timeouts: TimeoutsConfig {
                stream_idle: Some(Duration::from_secs(120)),
                ..Default::default()
            },
            ..Default::default()
        },
    ]
}

fn pick<T: Clone>(layers: &[Option<&T>]) -> Option<T> {
    layers.iter().rev().find_map(|x| x.cloned())
}

fn opt_dur(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn apply_timeouts(p: &mut RoutePolicy, t: &TimeoutsConfig) {
    let to = &mut p.timeouts;
    if let Some(d) = t.connect {
        to.connect = d;
    }
    if let Some(d) = t.tls_handshake {
        to.tls_handshake = d;
    }
    if t.response_headers.is_some() {
        to.response_headers = opt_dur(t.response_headers);
    }
    if t.per_try.is_some() {
        to.per_try = opt_dur(t.per_try);
    }
    if t.request.is_some() {
        to.request = opt_dur(t.request);
    }
    if let Some(d) = t.pool_idle {
        to.pool_idle = d;
    }
    if t.stream_idle.is_some() {
        to.stream_idle = opt_dur(t.stream_idle);
    }
}

fn apply_retry(p: &mut RoutePolicy, r: &RetryConfig) {
    let rp = &mut p.retry;
    if let Some(v) = r.max_attempts {
        rp.max_attempts = v.max(1);
    }
    if let Some(v) = r.backoff_base {
        rp.backoff_base = v;
    }
    if let Some(v) = r.backoff_max {
        rp.backoff_max = v;
    }
    if let Some(v) = &r.on_status {
        rp.on_status = v.clone();
    }
    if let Some(v) = r.max_replay_bytes {
        rp.max_replay_bytes = v;
    }
}

fn parse_methods(methods: &[String]) -> Vec<Method> {
    methods
        .iter()
        .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
        .collect()
}

impl ResilienceConfig {
    /// Checks ranges, methods and prefixes; every error names its field path.
    pub fn validate(&self) -> Result<(), ResilienceConfigError> {
        let mut sections = vec![("defaults".to_owned(), &self.defaults)];
        for (name, s) in &self.services {
            sections.push((format!("services.{name}"), s));
        }
        for (at, s) in sections {
            for (i, r) in s.routes.iter().enumerate() {
                let at = format!("{at}.routes[{i}]");
                for m in &r.methods {
                    if Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                        return Err(ResilienceConfigError::BadMethod {
                            at,
                            method: m.clone(),
                        });
                    }
                }
                if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
                    return Err(ResilienceConfigError::BadPrefix {
                        at,
                        prefix: r.path_prefix.clone(),
                    });
                }
                for (j, src) in r.hash_key.iter().flatten().enumerate() {
                    if let Err(what) = src.resolve() {
                        return Err(ResilienceConfigError::BadHashKey {
                            at: format!("{at}.hash_key[{j}]"),
                            what,
                        });
                    }
                }
            }
            let range = |ok: bool, field: &str, what: &str| {
                if ok {
                    Ok(())
                } else {
                    Err(ResilienceConfigError::OutOfRange {
                        at: format!("{at}.{field}"),
                        what: what.to_owned(),
                    })
                }
            };
            range(
                s.breaker.jitter.is_none_or(|j| (0.0..=1.0).contains(&j)),
                "breaker.jitter",
                "must be between 0 and 1",
            )?;
            range(
                s.retry
                    .budget_ratio
                    .is_none_or(|r| (0.0..=10.0).contains(&r)),
                "retry.budget_ratio",
                "must be between 0 and 10 (0.2 = retries add at most 20 % load)",
            )?;
            range(
                s.limits.max_concurrent != Some(0),
                "limits.max_concurrent",
                "must be at least 1",
            )?;
            range(
                s.timeouts.pool_idle != Some(Duration::ZERO),
                "timeouts.pool_idle",
                "must be above 0 (and below the upstream's keep-alive timeout)",
            )?;
        }
        Ok(())
    }

    /// [`Self::validate`] for `docmesh-proxy check`: also reports service sections that name no
    /// service of `[outbound]`.
    pub fn validate_into(
        &self,
        outbound: &super::outbound::OutboundConfig,
        p: &mut super::Problems,
    ) {
        if let Err(e) = self.validate() {
            let (path, message) = e.split();
            p.push(path, message);
        }
        for name in self.services.keys() {
            if !outbound.services.iter().any(|s| &s.name == name) {
                p.push(
                    format!("resilience.services.{name}"),
                    format!(
                        "no service named `{name}` in outbound.services; the section would never \
                         apply (check the spelling)"
                    ),
                );
            }
        }
    }

    /// The resolved policy of the service `name` (defaults apply to unknown names).
    pub fn service_policy(&self, name: &str) -> ServicePolicy {
        self.service_policy_over(name, RoutePolicy::default())
    }

    /// Like [`Self::service_policy`], with the hop timeouts of `[outbound]` (`connect_timeout`,
    /// `handshake_timeout`, `pool_idle_timeout`) as the defaults that `[resilience]` overrides.
    pub fn service_policy_for(
        &self,
        name: &str,
        outbound: &super::outbound::OutboundConfig,
    ) -> ServicePolicy {
        let mut base = RoutePolicy::default();
        base.timeouts.connect = outbound.connect_timeout;
        base.timeouts.tls_handshake = outbound.handshake_timeout;
        base.timeouts.pool_idle = outbound.pool_idle_timeout;
        self.service_policy_over(name, base)
    }

    fn service_policy_over(&self, name: &str, mut base: RoutePolicy) -> ServicePolicy {
        if self.onlyoffice_routes {
            base.hash_key = Some(Arc::new(HashKey::onlyoffice()));
        }
        let svc = self.services.get(name);
        let layers = [Some(&self.defaults), svc];
        for l in layers.iter().flatten() {
            apply_timeouts(&mut base, &l.timeouts);
            apply_retry(&mut base, &l.retry);
        }
        let mut p = ServicePolicy::new(name);
        let b = |f: &dyn Fn(&ServiceResilience) -> Option<f64>| {
            layers.iter().rev().flatten().find_map(|l| f(l))
        };
        if let Some(v) = b(&|l| l.retry.budget_ratio) {
            p.budget.ratio = v;
        }
        if let Some(v) = b(&|l| l.retry.budget_min_per_second.map(f64::from)) {
            p.budget.min_per_second = v as u32;
        }
        if let Some(v) = b(&|l| l.retry.budget_ttl.map(|d| d.as_secs_f64())) {
            p.budget.ttl = Duration::from_secs_f64(v);
        }
        for l in layers.iter().flatten() {
            let br = &l.breaker;
            let pb = &mut p.breaker;
            if let Some(v) = br.consecutive_failures {
                pb.consecutive_failures = v;
            }
            if let Some(v) = br.open_base {
                pb.open_base = v;
            }
            if let Some(v) = br.open_max {
                pb.open_max = v;
            }
            if let Some(v) = br.jitter {
                pb.jitter = v;
            }
            if let Some(v) = &br.failure_statuses {
                pb.failure_statuses = v.clone();
            }
            if let Some(v) = l.limits.max_concurrent {
                p.limits.max_concurrent = v.max(1);
            }
            if let Some(v) = l.limits.max_pending {
                p.limits.max_pending = v;
            }
            if let Some(v) = l.balance.strategy {
                p.balance.strategy = match v {
                    BalanceStrategyConfig::P2cEwma => BalanceStrategy::P2cEwma,
                    BalanceStrategyConfig::P2cLoad => BalanceStrategy::P2cLoad,
                };
            }
            if let Some(v) = l.balance.ewma_decay {
                p.balance.ewma_decay = v;
            }
        }
        p.health_check = pick(&layers.map(|l| l.and_then(|l| l.health_check.as_ref()))).map(|h| {
            HealthCheckPolicy {
                path: h.path,
                interval: h.interval,
                timeout: h.timeout,
                expect_status: h.expect_status,
                expect_body: h.expect_body,
                unhealthy_threshold: h.unhealthy_threshold,
                healthy_threshold: h.healthy_threshold,
            }
        });
        let builtin = if self.onlyoffice_routes {
            onlyoffice_routes()
        } else {
            Vec::new()
        };
        let routes = svc
            .map(|s| s.routes.iter())
            .into_iter()
            .flatten()
            .chain(self.defaults.routes.iter())
            .chain(builtin.iter());
        for r in routes {
            let mut rp = base.clone();
            apply_timeouts(&mut rp, &r.timeouts);
            apply_retry(&mut rp, &r.retry);
            if let Some(k) = &r.hash_key {
                rp.hash_key = resolve_hash_key(k);
            }
            let prefix = if r.path_prefix.is_empty() {
                "/".to_owned()
            } else {
                r.path_prefix.clone()
            };
            p.routes.push((
                RouteMatch {
                    methods: parse_methods(&r.methods),
                    path_prefix: prefix,
                },
                Arc::new(rp),
            ));
        }
        p.default_route = Arc::new(base);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ResilienceConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn layers_merge_defaults_service_route() {
        let c = parse(
            r#"
            [defaults.timeouts]
            response_headers = "30s"
            [defaults.retry]
            max_attempts = 4
            [services.ds.timeouts]
            per_try = "5s"
            [services.ds.breaker]
            consecutive_failures = 2
            [[services.ds.routes]]
            methods = ["post"]
            path_prefix = "/coauthoring/"
            retry = { max_attempts = 1 }
            "#,
        );
        c.validate().unwrap();
        let p = c.service_policy("ds");
        let d = &p.default_route;
        assert_eq!(d.timeouts.response_headers, Some(Duration::from_secs(30)));
        assert_eq!(d.timeouts.per_try, Some(Duration::from_secs(5)));
        assert_eq!(d.retry.max_attempts, 4);
        assert_eq!(p.breaker.consecutive_failures, 2);
        let r = p.route(&Method::POST, "/coauthoring/CommandService.ashx");
        assert_eq!(r.retry.max_attempts, 1);
        assert_eq!(r.timeouts.per_try, Some(Duration::from_secs(5)));
        let conv = p.route(&Method::POST, "/ConvertService.ashx");
        assert_eq!(
            conv.timeouts.response_headers,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            p.route(&Method::GET, "/ConvertService.ashx")
                .timeouts
                .response_headers,
            Some(Duration::from_secs(30))
        );
        let other = c.service_policy("other");
        assert_eq!(other.breaker.consecutive_failures, 5);
        assert_eq!(other.default_route.timeouts.per_try, None);
    }

    #[test]
    fn zero_disables_and_errors_name_the_field() {
        let c = parse("[defaults.timeouts]\nrequest = \"0s\"\n");
        assert_eq!(c.service_policy("x").default_route.timeouts.request, None);
        let e = toml::from_str::<ResilienceConfig>("[defaults.retry]\nattempts = 2\n").unwrap_err();
        assert!(e.to_string().contains("attempts"), "{e}");
        let c = parse("[[services.ds.routes]]\nmethods = [\"G ET\"]\npath_prefix = \"/x\"\n");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("services.ds.routes[0].methods"), "{e}");
        let c = parse("[services.ds.breaker]\njitter = 2.0\n");
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("breaker.jitter"));
    }

    #[test]
    fn health_check_and_onlyoffice_defaults() {
        let c = parse("[services.ds.health_check]\nexpect_body = \"true\"\n");
        let p = c.service_policy("ds");
        let h = p.health_check.clone().unwrap();
        assert_eq!(
            (h.path.as_str(), h.expect_body.as_deref()),
            ("/healthcheck", Some("true"))
        );
        let ws = p.route(&Method::GET, "/9.0.0/doc/abc/c/");
        assert!(ws.timeouts.stream_idle.unwrap() > Duration::from_secs(45));
        let c = parse("onlyoffice_routes = false\n");
        assert!(c.service_policy("ds").routes.is_empty());
    }

    #[test]
    fn hash_keys_inherit_the_onlyoffice_key_and_routes_override_it() {
        let c = parse(
            r#"
            [[services.ds.routes]]
            path_prefix = "/api/"
            hash_key = [{ header = "X-Doc" }, { cookie = "sid" }]
            [[services.ds.routes]]
            path_prefix = "/static/"
            hash_key = []
            "#,
        );
        c.validate().unwrap();
        let p = c.service_policy("ds");
        let oo = Some(Arc::new(HashKey::onlyoffice()));
        assert_eq!(p.default_route.hash_key, oo);
        assert_eq!(p.route(&Method::POST, "/ConvertService.ashx").hash_key, oo);
        let api = p.route(&Method::GET, "/api/x").hash_key.clone().unwrap();
        assert_eq!(
            api.sources,
            vec![
                HashSource::Header(http::HeaderName::from_static("x-doc")),
                HashSource::Cookie("sid".into())
            ]
        );
        assert_eq!(p.route(&Method::GET, "/static/a.js").hash_key, None);
        let off = parse("onlyoffice_routes = false\n");
        assert_eq!(off.service_policy("ds").default_route.hash_key, None);
    }

    #[test]
    fn bad_hash_keys_are_refused_with_their_field_path() {
        for (src, want) in [
            ("{ query = \"\" }", "the query parameter name is empty"),
            ("{ query = \"a\", header = \"b\" }", "exactly one"),
            ("{}", "exactly one"),
            ("{ header = \"bad header\" }", "not a valid header name"),
        ] {
            let c = parse(&format!(
                "[[services.ds.routes]]\npath_prefix = \"/\"\nhash_key = [{{ cookie = \"ok\" }}, {src}]\n"
            ));
            let e = c.validate().unwrap_err();
            let (path, msg) = e.split();
            assert_eq!(
                path, "resilience.services.ds.routes[0].hash_key[1]",
                "{src}"
            );
            assert!(msg.contains(want), "{src}: {msg}");
        }
        // A hash key belongs to a route: at the service level it is an unknown field.
        let e = toml::from_str::<ResilienceConfig>("[services.ds]\nhash_key = []\n").unwrap_err();
        assert!(e.to_string().contains("hash_key"), "{e}");
        let e = toml::from_str::<ResilienceConfig>(
            "[[services.ds.routes]]\nhash_key = [{ param = \"x\" }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("param"), "{e}");
    }
}
