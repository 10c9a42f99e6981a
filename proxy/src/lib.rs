//! docmesh-proxy: the sidecar data path (inbound and outbound mTLS with SPIFFE identities),
//! its admin server and its lifecycle. See `docs/architecture.md` for the module map.

pub mod authz;
pub mod config;
pub mod diagnose;
pub mod errors;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
