//! docmesh-proxy: the sidecar data path (inbound and outbound mTLS with SPIFFE identities),
//! its admin server and its lifecycle. See `docs/architecture.md` for the module map.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod app;
pub mod authz;
pub mod body;
pub mod check;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diagnose;
pub mod errors;
pub mod fuzz;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod outbound;
pub mod protocol;
pub mod reload;
pub mod resilience;
