//! `[inbound]`: traffic arriving for the local app.

use std::net::SocketAddr;

use serde::Deserialize;

/// Settings of the inbound side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// Transparent inbound listener (default `0.0.0.0:15006`).
    pub listen: SocketAddr,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 15006)),
        }
    }
}
