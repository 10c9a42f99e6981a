//! The integration tests of docmesh-proxy, one test binary (one link instead of one per file).
//! Each module is one concern, named after the module it tests; see tests/README.md for the
//! tiers and how to run one module (`cargo test -p docmesh-proxy --test it <module>::`).

// Shared setup.
mod authz_support;
mod limits_support;
mod otlp_support;
mod resilience_support;
mod support;

mod authz_e2e;
mod authz_hostile;
mod authz_pyjwt;
mod authz_spiffe;
mod await_cli;
mod cause_agreement;
mod cli_check;
mod demo_cli;
mod diagnose_cli;
mod diagnose_net;
mod diagnose_tls;
mod drain_e2e;
mod fuzz_corpus;
mod grpc_errors;
mod identity_renewal;
mod identity_rotation;
mod limits_hostile;
mod limits_http;
mod mtls_path;
mod observe_access_log;
mod observe_metrics;
mod observe_otlp;
mod observe_pair;
mod observe_truth;
mod plaintext_path;
mod process_limits;
mod rate_limit_tenants;
mod reload_process;
mod resilience_breaker;
mod resilience_causes;
mod resilience_config;
mod resilience_hash;
mod resilience_mesh;
mod resilience_preferred;
mod resilience_retry;
mod resilience_timers;
mod routes_check;
mod routes_split;
mod socketio_sticky;
mod streaming;
mod upgrade_idle;
