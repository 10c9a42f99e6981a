//! `[authz]`: who may call the local app. SPIFFE ID rules per inbound port and route, and
//! OnlyOffice-compatible JWT verification with tenant permissions.
//!
//! ```toml
//! [authz.services]
//! documentserver = 8000
//!
//! [[authz.spiffe]]
//! port = 8000
//! methods = ["POST"]
//! path_prefix = "/coauthoring/"
//! allow = ["spiffe://onlyoffice.local/ns/onlyoffice/", "spiffe://partner.example"]
//!
//! [authz.jwt]
//! enabled = true
//! header = "AuthorizationJwt"
//! secret_file = "/etc/docmesh/jwt-secret"
//!
//! [authz.tenants]
//! base_domain = "docs.example.com"
//! [[authz.tenants.permissions]]
//! tenant = "acme"
//! service = "documentserver"
//! methods = ["POST"]
//! path_prefix = "/coauthoring/CommandService.ashx"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole authorization section. Empty by default: no rule, no JWT, every mTLS peer passes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Names for inbound ports (`documentserver = 8000`), used by tenant permissions and in
    /// denial details.
    pub services: BTreeMap<String, u16>,
    /// SPIFFE ID rules. Once any rule names a port, that port denies every client no rule allows.
    pub spiffe: Vec<SpiffeRuleConfig>,
    /// JWT verification (OnlyOffice's tokens).
    pub jwt: JwtConfig,
    /// Where the tenant comes from and what each tenant may call.
    pub tenants: TenantConfig,
}

/// One SPIFFE rule: on `port`, requests matching `methods` and `path_prefix` are allowed for the
/// client IDs matching `allow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpiffeRuleConfig {
    /// Name shown in denial details; defaults to `port P METHODS PREFIX`.
    pub name: Option<String>,
    /// Inbound (app) port the rule applies to.
    pub port: u16,
    /// HTTP methods (upper case); empty means any method. A rule with methods or a path prefix
    /// other than `/` does not apply to opaque TCP.
    pub methods: Vec<String>,
    /// Path prefix the rule applies to (default `/`, everything).
    pub path_prefix: String,
    /// Allowed client IDs: an exact ID (`spiffe://td/ns/a/sa/b`), a whole trust domain
    /// (`spiffe://td`), or a path prefix ending in `/` (`spiffe://td/ns/onlyoffice/`).
    pub allow: Vec<String>,
}

impl Default for SpiffeRuleConfig {
    fn default() -> Self {
        SpiffeRuleConfig {
            name: None,
            port: 0,
            methods: Vec::new(),
            path_prefix: "/".to_string(),
            allow: Vec::new(),
        }
    }
}

/// JWT verification, compatible with OnlyOffice's `services.CoAuthoring.token` settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Require a valid token (default false).
    pub enabled: bool,
    /// Inbound ports that require a token; empty means every inbound HTTP port.
    pub ports: Vec<u16>,
    /// Path prefixes that require a token (default `["/"]`).
    pub path_prefixes: Vec<String>,
    /// Path prefixes exempt from the token (e.g. `/healthcheck`).
    pub exempt_path_prefixes: Vec<String>,
    /// Header carrying the token (OnlyOffice: `Authorization`, Workspace/DocSpace:
    /// `AuthorizationJwt`).
    pub header: String,
    /// Prefix before the token in the header (default `Bearer `).
    pub prefix: String,
    /// Also look for the token in the JSON body (OnlyOffice's `JWT_IN_BODY`); a body token wins
    /// over the header, as in OnlyOffice.
    pub in_body: bool,
    /// JSON body field carrying the token (default `token`).
    pub body_field: String,
    /// Most body bytes buffered to find a body token; larger bodies get 413 when `in_body` is
    /// set (default 1 MiB).
    pub max_body_bytes: usize,
    /// Longest accepted token in bytes (default 64 KiB); longer ones are refused before any
    /// decoding.
    pub max_token_bytes: usize,
    /// HMAC algorithms accepted with the shared secrets (default HS256, HS384, HS512).
    pub algorithms: Vec<String>,
    /// The shared secret inline (prefer `secret_file`). Never logged.
    pub secret: Option<String>,
    /// File holding the shared secret (trailing newline ignored); reloaded when it changes.
    pub secret_file: Option<PathBuf>,
    /// OnlyOffice multi-tenant layout: `<dir>/<tenant>/secret.key`, reloaded when it changes.
    pub tenant_secrets_dir: Option<PathBuf>,
    /// JWKS file with RS/PS/ES/EdDSA public keys; each key's `alg` pins its algorithm.
    pub jwks_file: Option<PathBuf>,
    /// Clock tolerance for `exp` and `nbf` (OnlyOffice: 60 s).
    #[serde(with = "humantime_serde")]
    pub clock_tolerance: Duration,
    /// Refuse tokens without `exp` (OnlyOffice makes `exp` optional; default false).
    pub require_exp: bool,
    /// Accepted `iss` values; empty means not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty means not checked.
    pub audiences: Vec<String>,
    /// How often key files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            enabled: false,
            ports: Vec::new(),
            path_prefixes: vec!["/".to_string()],
            exempt_path_prefixes: Vec::new(),
            header: "Authorization".to_string(),
            prefix: "Bearer ".to_string(),
            in_body: false,
            body_field: "token".to_string(),
            max_body_bytes: 1024 * 1024,
            max_token_bytes: 64 * 1024,
            algorithms: vec!["HS256".into(), "HS384".into(), "HS512".into()],
            secret: None,
            secret_file: None,
            tenant_secrets_dir: None,
            jwks_file: None,
            clock_tolerance: Duration::from_secs(60),
            require_exp: false,
            issuers: Vec::new(),
            audiences: Vec::new(),
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("enabled", &self.enabled)
            .field("ports", &self.ports)
            .field("path_prefixes", &self.path_prefixes)
            .field("exempt_path_prefixes", &self.exempt_path_prefixes)
            .field("header", &self.header)
            .field("prefix", &self.prefix)
            .field("in_body", &self.in_body)
            .field("body_field", &self.body_field)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("secret_file", &self.secret_file)
            .field("tenant_secrets_dir", &self.tenant_secrets_dir)
            .field("jwks_file", &self.jwks_file)
            .field("clock_tolerance", &self.clock_tolerance)
            .field("require_exp", &self.require_exp)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("reload_interval", &self.reload_interval)
            .finish()
    }
}

/// Where the tenant comes from, and the tenant permission table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Claim holding the tenant (looked up at the top level, then under `payload`). When unset,
    /// the tenant is the host's tenant, as OnlyOffice does it.
    pub claim: Option<String>,
    /// Base domain: a host `acme.<base_domain>` is tenant `acme`; any other host is its own
    /// tenant (port stripped).
    pub base_domain: Option<String>,
    /// Tenant when the request names no host (OnlyOffice: `localhost`).
    pub default_tenant: String,
    /// With `claim` set: refuse a token whose tenant differs from the host's tenant
    /// (default true).
    pub require_host_match: bool,
    /// What each tenant may call. Empty: every verified tenant may call everything; otherwise
    /// anything not listed is forbidden.
    pub permissions: Vec<TenantPermissionConfig>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            claim: None,
            base_domain: None,
            default_tenant: "localhost".to_string(),
            require_host_match: true,
            permissions: Vec::new(),
        }
    }
}

/// One row of the tenant permission table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPermissionConfig {
    /// The tenant (`*` for every tenant).
    pub tenant: String,
    /// Service name from `[authz.services]`; unset means any service.
    pub service: Option<String>,
    /// HTTP methods (upper case); empty means any method.
    pub methods: Vec<String>,
    /// Path prefix (default `/`).
    pub path_prefix: String,
}

impl Default for TenantPermissionConfig {
    fn default() -> Self {
        TenantPermissionConfig {
            tenant: String::new(),
            service: None,
            methods: Vec::new(),
            path_prefix: "/".to_string(),
        }
    }
}
