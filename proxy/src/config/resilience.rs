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
//!
//! This module holds the data and its validation only; `resilience::resolve` merges the layers
//! into the runtime policy.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

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
        HealthCheckConfig {
            path: "/healthcheck".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            expect_status: 200,
            expect_body: None,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
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
    /// Checks that exactly one source is set, that its name is not empty and that a header name
    /// is a valid one; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let (kind, name) = match (&self.query, &self.header, &self.cookie) {
            (Some(q), None, None) => ("query parameter", q),
            (None, Some(h), None) => ("header", h),
            (None, None, Some(c)) => ("cookie", c),
            _ => return Err("set exactly one of `query`, `header` or `cookie`".into()),
        };
        if name.trim().is_empty() {
            return Err(format!("the {kind} name is empty"));
        }
        if self.header.is_some() && http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("`{name}` is not a valid header name"));
        }
        Ok(())
    }
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
                    if let Err(what) = src.check() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ResilienceConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn errors_name_the_field() {
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
