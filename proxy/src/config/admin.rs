//! `[admin]`: the admin server.

use std::net::SocketAddr;

use serde::Deserialize;

/// Settings of the admin server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin server (default `127.0.0.1:15020`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15020)),
        }
    }
}
