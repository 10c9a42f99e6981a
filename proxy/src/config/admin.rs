//! `[admin]`: the admin server and the shutdown drain.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the admin server (`/live`, `/ready`, `/metrics`, `/certs`, `POST /shutdown`)
/// and of the graceful drain that SIGTERM, SIGINT or `POST /shutdown` start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin server (default `127.0.0.1:15020`). Keep it on loopback: the
    /// admin server has no authentication, and `POST /shutdown` is only accepted from a
    /// loopback peer anyway.
    pub listen: SocketAddr,
    /// How long a drain waits for in-flight requests and connections to finish before the
    /// process exits anyway (default `20s`). Keep it below the orchestrator's kill timeout
    /// (Kubernetes `terminationGracePeriodSeconds`, 30 s by default).
    #[serde(with = "humantime_serde")]
    pub drain_grace_period: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15020)),
            drain_grace_period: Duration::from_secs(20),
        }
    }
}
