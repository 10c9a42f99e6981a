//! Token buckets per route and per verified tenant (`[[inbound.rate_limits]]`): a request
//! that finds its bucket empty gets `429 rate-limited` with `Retry-After`, counted per tenant.
//! Each tenant has its own bucket, so a noisy tenant only empties its own.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use crate::config::ratelimit::RateLimitConfig;
use crate::metrics::Metrics;

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `requests` per `per`, bursts of up to `burst` (default `requests`).
    pub fn new(requests: u32, per: Duration, burst: Option<u32>) -> Rate {
        // Validation refuses zeros; clamp anyway so a bucket never divides by zero.
        let per = per.as_secs_f64().max(1e-9);
        Rate {
            per_second: f64::from(requests.max(1)) / per,
            burst: f64::from(burst.unwrap_or(requests).max(1)),
        }
    }
}

/// A token bucket: starts full, refills continuously at the rate, holds at most the burst.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }

    /// Takes one token at `now`; when there is none, how long until there is.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        }
    }

    /// Whether the bucket has refilled completely by `now` (it can be forgotten).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

struct Rule {
    index: usize,
    port: Option<u16>,
    path_prefix: String,
    per_tenant: bool,
    rate: Rate,
    tenants: HashMap<String, Rate>,
    describe: String,
}

/// Buckets beyond this many are swept (full ones forgotten) before a new one is added.
const SWEEP_AT: usize = 10_000;
/// Distinct tenant label values in the metrics; later tenants are counted as `overflow`.
const MAX_TENANT_LABELS: usize = 1_000;

/// Counts of refused requests per tenant (`docmesh_rate_limited_total{tenant, port}`).
#[derive(Clone, Debug, Default)]
pub struct RateLimitMetrics {
    limited: Family<Vec<(&'static str, String)>, Counter>,
    tenants: std::sync::Arc<Mutex<HashSet<String>>>,
}

impl RateLimitMetrics {
    /// Registers the family in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let m = RateLimitMetrics::default();
        metrics.register(
            "rate_limited",
            "Inbound requests refused with 429 rate-limited, by verified tenant (`none`: no tenant) and app port",
            m.limited.clone(),
        );
        m
    }

    fn record(&self, tenant: Option<&str>, port: u16) {
        let tenant = match tenant {
            None => "none".to_owned(),
            Some(t) => {
                let mut seen = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(t) || seen.len() < MAX_TENANT_LABELS {
                    seen.insert(t.to_owned());
                    t.to_owned()
                } else {
                    "overflow".to_owned()
                }
            }
        };
        self.limited
            .get_or_create(&vec![("tenant", tenant), ("port", port.to_string())])
            .inc();
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone)]
pub struct Limited {
    /// When a token is back (the `Retry-After`, rounded up to whole seconds there).
    pub retry_after: Duration,
    /// Which limit and tenant, for the error body.
    pub detail: String,
}

/// The inbound rate limits; built from validated configuration, swapped whole on reload.
pub struct RateLimiter {
    rules: Vec<Rule>,
    buckets: Mutex<HashMap<(usize, Option<String>), Bucket>>,
    metrics: RateLimitMetrics,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limits of `cfg`, counting refusals in `metrics`.
    pub fn new(cfg: &[RateLimitConfig], metrics: RateLimitMetrics) -> RateLimiter {
        let mut rules: Vec<Rule> = cfg
            .iter()
            .enumerate()
            .map(|(index, c)| Rule {
                index,
                port: c.port,
                path_prefix: c.path_prefix.clone(),
                per_tenant: c.per_tenant,
                rate: Rate::new(c.requests, c.per, c.burst),
                tenants: c
                    .tenants
                    .iter()
                    .map(|(name, t)| (name.clone(), Rate::new(t.requests, c.per, t.burst)))
                    .collect(),
                describe: format!(
                    "inbound.rate_limits[{index}] ({} requests per {})",
                    c.requests,
                    humantime::format_duration(c.per)
                ),
            })
            .collect();
        // A port-specific rule before a general one, then the longest prefix.
        rules.sort_by_key(|r| (r.port.is_none(), std::cmp::Reverse(r.path_prefix.len())));
        RateLimiter {
            rules,
            buckets: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// No limits configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Takes a token for a request to app `port` at `path` from `tenant` (verified by
    /// `[authz]`), at `now`.
    pub fn check_at(
        &self,
        port: u16,
        path: &str,
        tenant: Option<&str>,
        now: Instant,
    ) -> Result<(), Limited> {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.port.is_none_or(|p| p == port) && path.starts_with(&r.path_prefix))
        else {
            return Ok(());
        };
        let key_tenant = tenant.filter(|_| rule.per_tenant);
        let rate = key_tenant
            .and_then(|t| rule.tenants.get(t))
            .copied()
            .unwrap_or(rule.rate);
        let key = (rule.index, key_tenant.map(str::to_owned));
        let result = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            if !buckets.contains_key(&key) && buckets.len() >= SWEEP_AT {
                let rules = &self.rules;
                buckets.retain(|(i, t), b| {
                    let rate = rules
                        .iter()
                        .find(|r| r.index == *i)
                        .map(|r| t.as_ref().and_then(|t| r.tenants.get(t)).unwrap_or(&r.rate))
                        .copied()
                        .unwrap_or(rate);
                    !b.is_full(rate, now)
                });
            }
            buckets
                .entry(key)
                .or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now)
        };
        result.map_err(|wait| {
            self.metrics.record(tenant, port);
            let who = match (rule.per_tenant, tenant) {
                (true, Some(t)) => format!("tenant `{t}`"),
                (true, None) => "requests without a verified tenant".to_owned(),
                (false, _) => "all callers of this route together".to_owned(),
            };
            Limited {
                retry_after: wait,
                detail: format!(
                    "{who} exceeded {} on app port {port} (path prefix `{}`); retry after {} ms",
                    rule.describe,
                    rule.path_prefix,
                    wait.as_millis().max(1)
                ),
            }
        })
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, port: u16, path: &str, tenant: Option<&str>) -> Result<(), Limited> {
        self.check_at(port, path, tenant, Instant::now())
    }
}

/// The `429 rate-limited` answer with `Retry-After` (whole seconds, at least 1).
pub fn limited_response(
    limited: &Limited,
    trace_id: Option<&str>,
) -> http::Response<crate::http::ProxyBody> {
    let mut resp = crate::errors::error_response(
        crate::errors::Cause::RateLimited,
        &limited.detail,
        crate::errors::Hop::Inbound,
        trace_id,
    )
    .map(http_body_util::Either::Right);
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    resp
}

#[cfg(test)]
mod tests;
