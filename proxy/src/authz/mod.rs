//! Authorization of inbound calls: SPIFFE ID rules per port and route, OnlyOffice-compatible
//! JWT verification, the tenant check and the tenant permission table.
//!
//! The inbound data path calls [`Authorizer::authorize_tcp`] once per opaque TCP connection and
//! [`Authorizer::authorize_http`] once per HTTP request. The answer is a typed [`Decision`]; on
//! `Allow` the request carries `docmesh-client-id` and `docmesh-tenant` set from verified values
//! only (copies sent by the client are always removed first).

pub mod body;
pub mod decision;
pub mod jwt;
pub mod keys;
pub mod spiffe;
pub mod tenant;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::Method;
use http_body::Body;
use jsonwebtoken::Algorithm;

use crate::config::authz::AuthzConfig;

pub use body::AuthzBody;
pub use decision::{AuthzConfigError, AuthzError, Decision};
pub use docmesh_certs::spiffe_id::SpiffeId;

/// Header carrying the verified client SPIFFE ID to the app.
pub const CLIENT_ID_HEADER: &str = "docmesh-client-id";
/// Header carrying the verified tenant to the app.
pub const TENANT_HEADER: &str = "docmesh-tenant";

struct JwtPolicy {
    ports: Vec<u16>,
    path_prefixes: Vec<String>,
    exempt: Vec<String>,
    header: HeaderName,
    /// The header name as configured (for details).
    header_display: String,
    prefix: String,
    in_body: bool,
    body_field: String,
    max_body_bytes: usize,
    rules: jwt::ClaimRules,
    keys: Arc<keys::KeyStore>,
    reload_interval: Duration,
}

impl JwtPolicy {
    fn required(&self, port: u16, path: &str) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && self.path_prefixes.iter().any(|p| path_matches(path, p))
            && !self.exempt.iter().any(|p| path_matches(path, p))
    }
}

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The authorizer built from `[authz]`; shared by every inbound connection.
pub struct Authorizer {
    spiffe: spiffe::SpiffeRules,
    jwt: Option<JwtPolicy>,
    tenant_claim: Option<String>,
    base_domain: Option<String>,
    default_tenant: String,
    require_host_match: bool,
    table: tenant::TenantTable,
    services_by_port: BTreeMap<u16, String>,
    clock: Clock,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("spiffe", &self.spiffe)
            .field("jwt_enabled", &self.jwt.is_some())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authorizer {
    /// Builds the authorizer and loads the keys; any invalid setting or key file is an error.
    pub fn from_config(cfg: &AuthzConfig) -> Result<Self, AuthzConfigError> {
        let spiffe = spiffe::SpiffeRules::from_config(&cfg.spiffe)?;
        let table = tenant::TenantTable::from_config(&cfg.tenants, &cfg.services)?;
        let jwt = if cfg.jwt.enabled {
            Some(build_jwt(cfg)?)
        } else {
            None
        };
        if !cfg.tenants.permissions.is_empty() && !cfg.jwt.enabled {
            return Err(AuthzConfigError::Invalid(
                "authz.tenants.permissions needs authz.jwt.enabled: the tenant comes from a \
                 verified token"
                    .into(),
            ));
        }
        if let Some(claim) = &cfg.tenants.claim {
            if claim.is_empty() {
                return Err(AuthzConfigError::Invalid(
                    "authz.tenants.claim is empty; remove it to use the host's tenant".into(),
                ));
            }
        }
        Ok(Authorizer {
            spiffe,
            jwt,
            tenant_claim: cfg.tenants.claim.clone(),
            base_domain: cfg.tenants.base_domain.clone(),
            default_tenant: cfg.tenants.default_tenant.clone(),
            require_host_match: cfg.tenants.require_host_match,
            table,
            services_by_port: cfg.services.iter().map(|(n, p)| (*p, n.clone())).collect(),
            clock: Arc::new(unix_now),
        })
    }

    /// An authorizer with no rule and no JWT: every mTLS peer passes, and the identity header
    /// hygiene still applies. What the inbound side uses until a configured one is installed.
    pub fn allow_all() -> Self {
        Authorizer {
            spiffe: spiffe::SpiffeRules::default(),
            jwt: None,
            tenant_claim: None,
            base_domain: None,
            default_tenant: "localhost".to_string(),
            require_host_match: true,
            table: tenant::TenantTable::default(),
            services_by_port: BTreeMap::new(),
            clock: Arc::new(unix_now),
        }
    }

    /// Replaces the clock (unix seconds); for tests of `exp`/`nbf` boundaries.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Re-reads the key files now; returns whether the keys changed.
    pub fn reload_keys(&self) -> Result<bool, AuthzConfigError> {
        match &self.jwt {
            Some(j) => j.keys.reload_if_changed(),
            None => Ok(false),
        }
    }

    /// Starts a task that reloads the key files when they change (every `reload_interval`).
    /// It ends when the authorizer is dropped.
    pub fn spawn_key_reloader(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.jwt.as_ref()?.reload_interval;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let result = tokio::task::spawn_blocking(move || this.reload_keys()).await;
                match result {
                    Ok(Ok(true)) => tracing::info!("authz: JWT keys reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "authz: key reload failed; keeping the previous keys")
                    }
                    Err(e) => tracing::warn!(error = %e, "authz: key reload task failed"),
                }
            }
        }))
    }

    /// True when JWT checks apply on `port` (`authz.jwt.ports` empty means every HTTP port).
    /// The inbound uses it to refuse plaintext that is not recognisably HTTP on such a port.
    pub fn jwt_applies_to_port(&self, port: u16) -> bool {
        self.jwt
            .as_ref()
            .is_some_and(|j| j.ports.is_empty() || j.ports.contains(&port))
    }

    /// Logs the refusal of a connection to `port` that could not carry
    /// what the port requires (`expected`, e.g. "a JWT: ...").
    pub fn refuse_tcp(&self, port: u16, expected: &str) -> Decision {
        let decision = Decision::deny(AuthzError::Missing {
            expected: expected.to_owned(),
        });
        self.record(&decision, port, "tcp", "");
        decision
    }

    /// Authorizes an opaque TCP connection to the app `port`: SPIFFE rules without a route,
    /// and never a port that `authz.jwt.ports` lists explicitly (opaque bytes carry no
    /// verifiable token).
    pub fn authorize_tcp(&self, port: u16, client: Option<&SpiffeId>) -> Decision {
        let jwt_port = self.jwt.as_ref().is_some_and(|j| j.ports.contains(&port));
        let checked = self
            .spiffe
            .check_tcp(port, client.map(SpiffeId::as_str))
            .and_then(|()| {
                if jwt_port {
                    Err(AuthzError::Missing {
                        expected: format!(
                            "a JWT: port {port} is in authz.jwt.ports and opaque TCP cannot carry a verified token"
                        ),
                    })
                } else {
                    Ok(())
                }
            });
        let decision = match checked {
            Ok(()) => Decision::Allow {
                client_id: client.cloned(),
                tenant: None,
            },
            Err(e) => Decision::deny(e),
        };
        self.record(&decision, port, "tcp", "");
        decision
    }

    /// Authorizes one HTTP request to the app `port`. Always strips client-sent
    /// `docmesh-client-id`/`docmesh-tenant`; on `Allow`, sets them from verified values. The
    /// body comes back untouched, or replayed from the bounded buffer if it was read for a
    /// token.
    pub async fn authorize_http<B>(
        &self,
        port: u16,
        client: Option<&SpiffeId>,
        parts: &mut Parts,
        body: B,
    ) -> (Decision, AuthzBody<B>)
    where
        B: Body,
        B::Error: std::fmt::Display,
    {
        parts.headers.remove(CLIENT_ID_HEADER);
        parts.headers.remove(TENANT_HEADER);
        let id = client.map(SpiffeId::as_str);
        let (result, body) = self.check_http(port, id, parts, body).await;
        let decision = match result {
            Ok(tenant) => {
                if let Some(v) = id.and_then(|s| HeaderValue::from_str(s).ok()) {
                    parts.headers.insert(CLIENT_ID_HEADER, v);
                }
                if let Some(v) = tenant
                    .as_deref()
                    .and_then(|t| HeaderValue::from_str(t).ok())
                {
                    parts.headers.insert(TENANT_HEADER, v);
                }
                Decision::Allow {
                    client_id: client.cloned(),
                    tenant,
                }
            }
            Err(e) => Decision::deny(e),
        };
        self.record(&decision, port, parts.method.as_str(), parts.uri.path());
        (decision, body)
    }

    async fn check_http<B>(
        &self,
        port: u16,
        id: Option<&str>,
        parts: &Parts,
        body: B,
    ) -> (Result<Option<String>, AuthzError>, AuthzBody<B>)
    where
        B: Body,
        B::Error: std::fmt::Display,
    {
        let path = parts.uri.path();
        let jwt = self.jwt.as_ref().filter(|j| j.required(port, path));
        if (self.spiffe.governs(port) || jwt.is_some()) && !path_is_safe(path) {
            let e = AuthzError::UnsafePath {
                path: jwt::clip(path),
            };
            return (Err(e), AuthzBody::original(body));
        }
        if let Err(e) = self.spiffe.check_http(port, &parts.method, path, id) {
            return (Err(e), AuthzBody::original(body));
        }
        let Some(jwt) = jwt else {
            return (Ok(None), AuthzBody::original(body));
        };
        let (found, body) = token::find_token(jwt, parts, body).await;
        let result = found.and_then(|token| self.verify_tenant(jwt, parts, port, &token));
        (result.map(Some), body)
    }

    fn verify_tenant(
        &self,
        jwt: &JwtPolicy,
        parts: &Parts,
        port: u16,
        token: &str,
    ) -> Result<String, AuthzError> {
        let host_tenant = tenant::host_tenant(
            &parts.headers,
            &parts.uri,
            self.base_domain.as_deref(),
            &self.default_tenant,
        );
        let keys = jwt.keys.current();
        let claims = jwt::verify(token, &keys, &jwt.rules, &host_tenant, (self.clock)())?;
        let tenant = match &self.tenant_claim {
            Some(claim) => {
                let t = tenant::claim_tenant(&claims, claim)?;
                if self.require_host_match && t != host_tenant {
                    return Err(AuthzError::TenantOfAnotherHost {
                        token_tenant: t,
                        host_tenant: jwt::clip(&host_tenant),
                    });
                }
                t
            }
            None => host_tenant,
        };
        let service = self.services_by_port.get(&port).map(String::as_str);
        self.table
            .check(&tenant, port, service, &parts.method, parts.uri.path())?;
        Ok(tenant)
    }

    /// Logs a refusal. Decisions are counted by the data path in the per-pair
    /// `docmesh_authz_decisions_total` family (HTTP and opaque TCP), not here.
    fn record(&self, decision: &Decision, port: u16, method: &str, path: &str) {
        if let Decision::Deny {
            cause,
            detail,
            reason,
        } = decision
        {
            tracing::info!(port, method, path = %jwt::clip(path), cause = cause.as_str(),
                reason, detail = %detail, "authz: denied");
        }
    }
}

fn build_jwt(cfg: &AuthzConfig) -> Result<JwtPolicy, AuthzConfigError> {
    let j = &cfg.jwt;
    let invalid = |m: String| AuthzConfigError::Invalid(m);
    let header = HeaderName::from_bytes(j.header.as_bytes()).map_err(|_| {
        invalid(format!(
            "authz.jwt.header {:?} is not a header name",
            j.header
        ))
    })?;
    if j.max_token_bytes == 0 {
        return Err(invalid("authz.jwt.max_token_bytes must be above 0".into()));
    }
    let mut hmac_algorithms = Vec::new();
    for a in &j.algorithms {
        match a.parse::<Algorithm>() {
            Ok(alg @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) => {
                hmac_algorithms.push(alg)
            }
            _ => {
                return Err(invalid(format!(
                    "authz.jwt.algorithms: {a:?} is not HS256, HS384 or HS512 (public-key algorithms are pinned by each JWKS key)"
                )))
            }
        }
    }
    let sources = keys::KeySources {
        secret: j.secret.clone(),
        secret_file: j.secret_file.clone(),
        tenant_secrets_dir: j.tenant_secrets_dir.clone(),
        jwks_file: j.jwks_file.clone(),
    };
    if sources.secret.is_some() && sources.secret_file.is_some() {
        return Err(invalid(
            "authz.jwt.secret and authz.jwt.secret_file are both set; keep one".into(),
        ));
    }
    if sources.secret.is_none()
        && sources.secret_file.is_none()
        && sources.tenant_secrets_dir.is_none()
        && sources.jwks_file.is_none()
    {
        return Err(invalid(
            "authz.jwt.enabled needs a key: secret_file, secret, tenant_secrets_dir or jwks_file"
                .into(),
        ));
    }
    for p in j.path_prefixes.iter().chain(&j.exempt_path_prefixes) {
        if !p.starts_with('/') {
            return Err(invalid(format!(
                "authz.jwt path prefix {p:?} must start with /"
            )));
        }
    }
    Ok(JwtPolicy {
        ports: j.ports.clone(),
        path_prefixes: j.path_prefixes.clone(),
        exempt: j.exempt_path_prefixes.clone(),
        header,
        header_display: j.header.clone(),
        prefix: j.prefix.clone(),
        in_body: j.in_body,
        body_field: j.body_field.clone(),
        max_body_bytes: j.max_body_bytes,
        rules: jwt::ClaimRules {
            max_token_bytes: j.max_token_bytes,
            hmac_algorithms,
            tolerance_secs: j.clock_tolerance.as_secs(),
            require_exp: j.require_exp,
            issuers: j.issuers.clone(),
            audiences: j.audiences.clone(),
            default_tenant: cfg.tenants.default_tenant.clone(),
        },
        keys: Arc::new(keys::KeyStore::load(sources)?),
        reload_interval: j.reload_interval,
    })
}

/// Parses configured method names.
pub(crate) fn parse_methods(methods: &[String], at: &str) -> Result<Vec<Method>, AuthzConfigError> {
    methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                AuthzConfigError::Invalid(format!("{at}.methods: {m:?} is not an HTTP method"))
            })
        })
        .collect()
}

/// Path prefix match on the raw request path.
pub(crate) fn path_matches(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
}

/// Refuses dot segments and encoded dots/slashes/backslashes, which the app might resolve
/// into a path no prefix rule was written for.
fn path_is_safe(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\\')
    {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
}
