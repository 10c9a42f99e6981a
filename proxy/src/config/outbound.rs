//! `[outbound]`: traffic the local app sends to other services.

use std::net::SocketAddr;

use serde::Deserialize;

/// Settings of the outbound side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Transparent outbound listener (default `127.0.0.1:15001`).
    pub listen: SocketAddr,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15001)),
        }
    }
}
