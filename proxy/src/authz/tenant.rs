//! Tenants, the OnlyOffice way: the host's tenant (first `X-Forwarded-Host`, else `Host`, port
//! stripped; the subdomain of a base domain, else the whole host; default `localhost`), the
//! tenant a token names in a claim, and the tenant permission table.

use std::collections::BTreeMap;

use http::{HeaderMap, Method, Uri};
use serde_json::{Map, Value};

use super::jwt::clip;
use super::keys::valid_tenant_name;
use super::{parse_methods, path_matches, AuthzConfigError, AuthzError};
use crate::config::authz::TenantConfig;

/// The host's tenant for a request, as OnlyOffice's tenant manager computes it.
pub fn host_tenant(
    headers: &HeaderMap,
    uri: &Uri,
    base_domain: Option<&str>,
    default: &str,
) -> String {
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let host = forwarded
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        })
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return default.to_string();
    };
    let host = strip_port(host).to_ascii_lowercase();
    if host.is_empty() {
        return default.to_string();
    }
    if let Some(base) = base_domain {
        let base = base.trim_start_matches('.').to_ascii_lowercase();
        if let Some(sub) = host
            .strip_suffix(base.as_str())
            .and_then(|h| h.strip_suffix('.'))
        {
            if !sub.is_empty() {
                return sub.to_string();
            }
        }
    }
    host
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; any userinfo is dropped.
fn strip_port(host: &str) -> &str {
    let host = host.rsplit('@').next().unwrap_or(host);
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// The tenant a token names in `claim`: at the top level (body form), else under `payload`
/// (OnlyOffice's header form).
pub fn claim_tenant(claims: &Map<String, Value>, claim: &str) -> Result<String, AuthzError> {
    let value = claims.get(claim).or_else(|| {
        claims
            .get("payload")
            .and_then(Value::as_object)
            .and_then(|p| p.get(claim))
    });
    match value {
        Some(Value::String(t)) if valid_tenant_name(t) => Ok(t.to_ascii_lowercase()),
        Some(Value::String(t)) => Err(AuthzError::Malformed {
            reason: format!(
                "tenant claim \"{claim}\" is not a valid tenant name: {:?}",
                clip(t)
            ),
        }),
        Some(_) => Err(AuthzError::Malformed {
            reason: format!("tenant claim \"{claim}\" is not a string"),
        }),
        None => Err(AuthzError::MissingTenant {
            claim: claim.to_string(),
        }),
    }
}

#[derive(Debug, Clone)]
struct Row {
    tenant: String,
    /// (service name, port) when the row is limited to one service.
    service: Option<(String, u16)>,
    methods: Vec<Method>,
    path_prefix: String,
}

/// Which tenant may call which service, method and path prefix.
#[derive(Debug, Clone, Default)]
pub struct TenantTable {
    rows: Vec<Row>,
}

impl TenantTable {
    /// Builds the table; service names must be declared in `[authz.services]`.
    pub fn from_config(
        cfg: &TenantConfig,
        services: &BTreeMap<String, u16>,
    ) -> Result<Self, AuthzConfigError> {
        let mut rows = Vec::with_capacity(cfg.permissions.len());
        for (i, p) in cfg.permissions.iter().enumerate() {
            let at = format!("authz.tenants.permissions[{i}]");
            if p.tenant != "*" && !valid_tenant_name(&p.tenant) {
                return Err(AuthzConfigError::Invalid(format!(
                    "{at}.tenant {:?} is not a tenant name (letters, digits, . - _) or \"*\"",
                    p.tenant
                )));
            }
            let service = match &p.service {
                Some(name) => {
                    let port = services.get(name).ok_or_else(|| {
                        AuthzConfigError::Invalid(format!(
                            "{at}.service {name:?} is not declared in [authz.services]"
                        ))
                    })?;
                    Some((name.clone(), *port))
                }
                None => None,
            };
            if !p.path_prefix.starts_with('/') {
                return Err(AuthzConfigError::Invalid(format!(
                    "{at}.path_prefix {:?} must start with /",
                    p.path_prefix
                )));
            }
            rows.push(Row {
                tenant: p.tenant.to_ascii_lowercase(),
                service,
                methods: parse_methods(&p.methods, &at)?,
                path_prefix: p.path_prefix.clone(),
            });
        }
        Ok(TenantTable { rows })
    }

    /// Whether the table restricts anything (an empty table permits every verified tenant).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Checks that `tenant` may call `method path` on `port`.
    pub fn check(
        &self,
        tenant: &str,
        port: u16,
        service: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Result<(), AuthzError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let permitted = self.rows.iter().any(|r| {
            (r.tenant == "*" || r.tenant == tenant)
                && r.service.as_ref().is_none_or(|(_, p)| *p == port)
                && (r.methods.is_empty() || r.methods.contains(method))
                && path_matches(path, &r.path_prefix)
        });
        if permitted {
            Ok(())
        } else {
            let svc =
                service.map_or_else(|| format!("port {port}"), |s| format!("{s} (port {port})"));
            Err(AuthzError::TenantNotPermitted {
                tenant: tenant.to_string(),
                call: format!("{method} {} on {svc}", clip(path)),
            })
        }
    }
}
