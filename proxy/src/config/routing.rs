//! `[[outbound.routes]]`: traffic split, header and query routes, and failover across services.
//!
//! A route applies to the HTTP requests the local app sends to one configured service (on
//! its explicit listener or, in transparent mode, to one of its addresses) under a path
//! prefix. The first matching `matches` entry picks a backend service; otherwise the
//! `backends` weights do. When the chosen backend has no usable endpoint, the `failover`
//! services are tried in order.

use serde::Deserialize;

use super::outbound::ServiceConfig;
use super::Problems;

/// What part of the request a [`RouteMatch`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    /// A request header (name case-insensitive).
    #[default]
    Header,
    /// A query parameter of the request target.
    Query,
}

/// A header or query match that sends the request to one backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// `header` or `query`.
    pub kind: MatchKind,
    /// Header or query parameter name (e.g. `x-canary`).
    pub name: String,
    /// The value it must have; when absent, presence is enough.
    pub value: Option<String>,
    /// The service (in `outbound.services`) the request goes to.
    pub backend: String,
}

/// One weighted backend of a traffic split.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedBackend {
    /// A service in `outbound.services`.
    pub service: String,
    /// Relative weight (e.g. 90 and 10); 0 takes no traffic by weight.
    pub weight: u32,
}

/// A traffic route of one addressed service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficRoute {
    /// The service the app addresses (in `outbound.services`).
    pub service: String,
    /// Requests whose path starts with this (default `/`); the longest matching prefix wins.
    pub path_prefix: String,
    /// Matches, first match wins; they take precedence over the weights.
    pub matches: Vec<RouteMatch>,
    /// Weighted backends; empty means the addressed service itself.
    pub backends: Vec<WeightedBackend>,
    /// Backup services, tried in order when the chosen backend has no usable endpoint (none
    /// resolved, all ejected or failing their health check).
    pub failover: Vec<String>,
}

impl Default for TrafficRoute {
    fn default() -> Self {
        TrafficRoute {
            service: String::new(),
            path_prefix: "/".into(),
            matches: Vec::new(),
            backends: Vec::new(),
            failover: Vec::new(),
        }
    }
}

/// Checks `routes` against the configured `services`, reporting problems at
/// `outbound.routes[i]...`.
pub(super) fn validate(routes: &[TrafficRoute], services: &[ServiceConfig], p: &mut Problems) {
    let known = |name: &str| services.iter().any(|s| s.name == name);
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let unknown = |name: &str| {
        format!(
            "unknown service `{name}` (configured services: [{}])",
            names.join(", ")
        )
    };
    for (i, r) in routes.iter().enumerate() {
        let at = format!("outbound.routes[{i}]");
        if r.service.is_empty() {
            p.push(
                format!("{at}.service"),
                "name the service whose traffic this route splits",
            );
        } else if !known(&r.service) {
            p.push(format!("{at}.service"), unknown(&r.service));
        }
        if !r.path_prefix.starts_with('/') {
            p.push(
                format!("{at}.path_prefix"),
                format!("`{}` must start with `/`", r.path_prefix),
            );
        }
        if let Some(j) = routes[..i]
            .iter()
            .position(|o| o.service == r.service && o.path_prefix == r.path_prefix)
        {
            p.push(
                format!("{at}.path_prefix"),
                format!(
                    "outbound.routes[{j}] already routes `{}` under `{}`",
                    r.service, r.path_prefix
                ),
            );
        }
        for (k, m) in r.matches.iter().enumerate() {
            let at = format!("{at}.matches[{k}]");
            if m.name.is_empty() {
                p.push(
                    format!("{at}.name"),
                    "the header or query parameter name is required",
                );
            } else if m.kind == MatchKind::Header
                && http::HeaderName::from_bytes(m.name.as_bytes()).is_err()
            {
                p.push(
                    format!("{at}.name"),
                    format!("`{}` is not a valid header name", m.name),
                );
            }
            if !known(&m.backend) {
                p.push(format!("{at}.backend"), unknown(&m.backend));
            }
        }
        for (k, b) in r.backends.iter().enumerate() {
            if !known(&b.service) {
                p.push(format!("{at}.backends[{k}].service"), unknown(&b.service));
            }
            if let Some(j) = r.backends[..k].iter().position(|o| o.service == b.service) {
                p.push(
                    format!("{at}.backends[{k}].service"),
                    format!("`{}` is already {at}.backends[{j}]", b.service),
                );
            }
        }
        let total: u64 = r.backends.iter().map(|b| u64::from(b.weight)).sum();
        if !r.backends.is_empty() && total == 0 {
            p.push(
                format!("{at}.backends"),
                "the weights sum to zero: give at least one backend a weight above 0",
            );
        }
        for (k, f) in r.failover.iter().enumerate() {
            if !known(f) {
                p.push(format!("{at}.failover[{k}]"), unknown(f));
            }
        }
        if r.matches.is_empty() && r.backends.is_empty() && r.failover.is_empty() {
            p.push(
                at.clone(),
                "the route does nothing: give it backends, matches or failover",
            );
        }
    }
}
