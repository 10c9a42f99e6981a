//! `[[inbound.rate_limits]]`: token buckets per route and per verified OnlyOffice tenant on
//! the inbound side.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// A tenant's own rate, replacing the entry's `requests`/`burst` for that tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantRate {
    /// Requests per `per` for this tenant.
    pub requests: u32,
    /// Bucket size for this tenant (default: `requests`).
    pub burst: Option<u32>,
}

/// One rate limit: the requests to `port` under `path_prefix`, one token bucket per verified
/// tenant (or one for the route when `per_tenant = false`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// App port it applies to; absent: every port.
    pub port: Option<u16>,
    /// Requests whose path starts with this (default `/`); the longest matching prefix wins.
    pub path_prefix: String,
    /// A bucket per verified tenant (`[authz]` JWT tenant); requests without one share a
    /// bucket. `false`: one bucket for every caller of the route.
    pub per_tenant: bool,
    /// Tokens added per `per` (the sustained rate).
    pub requests: u32,
    /// The period of `requests` (default `1s`).
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Bucket size, the largest burst (default: `requests`).
    pub burst: Option<u32>,
    /// Per-tenant rates by tenant name.
    pub tenants: BTreeMap<String, TenantRate>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            port: None,
            path_prefix: "/".into(),
            per_tenant: true,
            requests: 0,
            per: Duration::from_secs(1),
            burst: None,
            tenants: BTreeMap::new(),
        }
    }
}

fn check_rate(at: &str, requests: u32, burst: Option<u32>, p: &mut Problems) {
    if requests == 0 {
        p.push(
            format!("{at}.requests"),
            "a limit of zero requests refuses everything: set at least 1 (or remove the entry)",
        );
    }
    if burst == Some(0) {
        p.push(
            format!("{at}.burst"),
            "a burst of zero refuses everything: set at least 1 (or leave it out to use `requests`)",
        );
    }
}

/// Checks `limits`, reporting problems at `inbound.rate_limits[i]...`.
pub(super) fn validate(limits: &[RateLimitConfig], p: &mut Problems) {
    for (i, l) in limits.iter().enumerate() {
        let at = format!("inbound.rate_limits[{i}]");
        check_rate(&at, l.requests, l.burst, p);
        if l.per.is_zero() {
            p.push(format!("{at}.per"), "must be greater than zero");
        }
        if l.port == Some(0) {
            p.push(
                format!("{at}.port"),
                "port 0 is not a port (leave it out for every port)",
            );
        }
        if !l.path_prefix.starts_with('/') {
            p.push(
                format!("{at}.path_prefix"),
                format!("`{}` must start with `/`", l.path_prefix),
            );
        }
        if let Some(j) = limits[..i]
            .iter()
            .position(|o| o.port == l.port && o.path_prefix == l.path_prefix)
        {
            p.push(
                format!("{at}.path_prefix"),
                format!("inbound.rate_limits[{j}] already limits this port and prefix"),
            );
        }
        if !l.per_tenant && !l.tenants.is_empty() {
            p.push(
                format!("{at}.tenants"),
                "per-tenant rates need per_tenant = true",
            );
        }
        for (name, t) in &l.tenants {
            check_rate(&format!("{at}.tenants.{name}"), t.requests, t.burst, p);
        }
    }
}
