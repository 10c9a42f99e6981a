//! SPIFFE ID rules per inbound port and route.
//!
//! A rule allows client IDs matching one of its patterns — an exact ID, a whole trust domain
//! (`spiffe://td`), or a path prefix ending in `/` (`spiffe://td/ns/onlyoffice/`) — for the
//! requests on its port matching its methods and path prefix. A port with no rule is open to
//! every authenticated peer; once any rule names a port, that port denies whatever no rule
//! allows.

use std::collections::BTreeMap;

use http::Method;

use super::jwt::clip;
use super::{parse_methods, path_matches, AuthzConfigError, AuthzError};
use crate::config::authz::SpiffeRuleConfig;

/// One allowed-ID pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// Exactly this ID.
    Exact(String),
    /// Every ID of this trust domain (stored as `spiffe://td/`).
    TrustDomain(String),
    /// Every ID whose path starts with this prefix (stored with the trailing `/`).
    PathPrefix(String),
}

impl IdPattern {
    /// Parses a pattern from the config; the trust domain must be a valid, lowercase one.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{s:?} does not start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty()
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(format!(
                "{s:?}: the trust domain must be lowercase letters, digits, '.', '-' or '_'"
            ));
        }
        if path.is_empty() || path == "/" {
            return Ok(IdPattern::TrustDomain(format!("spiffe://{td}/")));
        }
        let segments: Vec<&str> = path[1..].split('/').collect();
        let (last, inner) = segments.split_last().unwrap_or((&"", &[]));
        let bad = |seg: &str| {
            seg.is_empty()
                || seg == "."
                || seg == ".."
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if inner.iter().any(|seg| bad(seg)) || (!last.is_empty() && bad(last)) {
            return Err(format!(
                "{s:?}: path segments must be non-empty letters, digits, '.', '-' or '_' (no . or ..)"
            ));
        }
        if last.is_empty() {
            Ok(IdPattern::PathPrefix(s.to_string()))
        } else {
            let id: super::SpiffeId = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
            Ok(IdPattern::Exact(id.as_str().to_string()))
        }
    }

    /// Whether the canonical ID string `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Exact(p) => id == p,
            IdPattern::TrustDomain(p) | IdPattern::PathPrefix(p) => id.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    methods: Vec<Method>,
    path_prefix: String,
    allow: Vec<IdPattern>,
}

impl Rule {
    fn route_free(&self) -> bool {
        self.methods.is_empty() && self.path_prefix == "/"
    }

    fn applies(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && path_matches(path, &self.path_prefix)
    }

    fn allows(&self, id: Option<&str>) -> bool {
        id.is_some_and(|id| self.allow.iter().any(|p| p.matches(id)))
    }
}

/// Every SPIFFE rule, grouped by inbound port.
#[derive(Debug, Clone, Default)]
pub struct SpiffeRules {
    by_port: BTreeMap<u16, Vec<Rule>>,
}

impl SpiffeRules {
    /// Builds the rules from `[[authz.spiffe]]`.
    pub fn from_config(rules: &[SpiffeRuleConfig]) -> Result<Self, AuthzConfigError> {
        let mut by_port: BTreeMap<u16, Vec<Rule>> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("authz.spiffe[{i}]");
            if r.port == 0 {
                return Err(AuthzConfigError::Invalid(format!("{at}.port is missing")));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(AuthzConfigError::Invalid(format!(
                    "{at}.path_prefix {:?} must start with /",
                    r.path_prefix
                )));
            }
            let methods = parse_methods(&r.methods, &at)?;
            let allow = r
                .allow
                .iter()
                .map(|p| IdPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AuthzConfigError::Invalid(format!("{at}.allow: {e}")))?;
            let name = r.name.clone().unwrap_or_else(|| {
                let m = if r.methods.is_empty() {
                    "*".to_string()
                } else {
                    r.methods.join(",")
                };
                format!("port {} {m} {}", r.port, r.path_prefix)
            });
            by_port.entry(r.port).or_default().push(Rule {
                name,
                methods,
                path_prefix: r.path_prefix.clone(),
                allow,
            });
        }
        Ok(SpiffeRules { by_port })
    }

    /// Whether any rule names `port` (then the port is default-deny).
    pub fn governs(&self, port: u16) -> bool {
        self.by_port.contains_key(&port)
    }

    /// Opaque TCP: only rules without a route restriction apply.
    pub fn check_tcp(&self, port: u16, id: Option<&str>) -> Result<(), AuthzError> {
        let Some(rules) = self.by_port.get(&port) else {
            return Ok(());
        };
        let applicable: Vec<&Rule> = rules.iter().filter(|r| r.route_free()).collect();
        if applicable.iter().any(|r| r.allows(id)) {
            return Ok(());
        }
        Err(AuthzError::SpiffeDenied {
            id: describe(id),
            target: format!("TCP port {port}"),
            rules: rule_names(
                &applicable,
                rules,
                "no rule without methods or path applies to opaque TCP",
            ),
        })
    }

    /// HTTP: the rules of `port` whose route matches `method path`.
    pub fn check_http(
        &self,
        port: u16,
        method: &Method,
        path: &str,
        id: Option<&str>,
    ) -> Result<(), AuthzError> {
        let Some(rules) = self.by_port.get(&port) else {
            return Ok(());
        };
        let applicable: Vec<&Rule> = rules.iter().filter(|r| r.applies(method, path)).collect();
        if applicable.iter().any(|r| r.allows(id)) {
            return Ok(());
        }
        Err(AuthzError::SpiffeDenied {
            id: describe(id),
            target: format!("{method} {} on port {port}", clip(path)),
            rules: rule_names(&applicable, rules, "no rule matches this route"),
        })
    }
}

fn describe(id: Option<&str>) -> String {
    id.map_or_else(|| "(no client SPIFFE ID)".to_string(), str::to_string)
}

fn rule_names(applicable: &[&Rule], all: &[Rule], none: &str) -> String {
    if applicable.is_empty() {
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        format!("{none} (rules on this port: {})", names.join("; "))
    } else {
        let names: Vec<&str> = applicable.iter().map(|r| r.name.as_str()).collect();
        names.join("; ")
    }
}
