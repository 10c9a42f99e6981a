//! The proxy's configuration: one TOML file, every field defaulted, every field overridable
//! from the environment, unknown fields rejected with the exact field path.
//!
//! Each section lives in its own module; this module owns loading, environment overrides and
//! validation (`docmesh-proxy check`).

pub mod admin;
pub mod authz;
pub mod identity;
pub mod inbound;
pub mod observability;
pub mod outbound;

use serde::Deserialize;

/// The whole proxy configuration (the root of the TOML file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the proxy's SVID and trust bundles come from.
    pub identity: identity::IdentityConfig,
    /// The admin server (`/live`, `/ready`, `/metrics`, `/certs`, `/shutdown`).
    pub admin: admin::AdminConfig,
    /// Traffic arriving for the local app.
    pub inbound: inbound::InboundConfig,
    /// Traffic the local app sends to other services.
    pub outbound: outbound::OutboundConfig,
    /// Trace headers, the access log and metrics.
    pub observability: observability::ObservabilityConfig,
    /// Who may call the local app: SPIFFE ID rules, JWT and tenant permissions.
    pub authz: authz::AuthzConfig,
}
