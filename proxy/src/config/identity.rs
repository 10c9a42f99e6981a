//! `[identity]`: where the proxy's X.509-SVID and trust bundles come from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The SVID source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// PEM files on disk, reloaded when they change.
    #[default]
    Files,
    /// The SPIFFE Workload API (e.g. a SPIRE agent) at `workload_api_socket`.
    WorkloadApi,
}

/// Settings of the identity source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// `files` or `workload-api`.
    pub source: IdentitySource,
    /// PEM certificate chain of the SVID, leaf first (files source).
    pub cert: PathBuf,
    /// PEM private key of the SVID (files source).
    pub key: PathBuf,
    /// PEM trust bundle(s) (files source); one file may hold several roots.
    pub bundle: PathBuf,
    /// How often the files source checks the files for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Workload API endpoint, e.g. `unix:///run/spire/sockets/agent.sock`; when empty,
    /// `SPIFFE_ENDPOINT_SOCKET` is used.
    pub workload_api_socket: Option<String>,
    /// How long startup waits for the first valid SVID (files present and valid, or the first
    /// Workload API response) before giving up with an error (default `30s`).
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            source: IdentitySource::Files,
            cert: PathBuf::from("/etc/docmesh/svid.pem"),
            key: PathBuf::from("/etc/docmesh/svid.key"),
            bundle: PathBuf::from("/etc/docmesh/bundle.pem"),
            reload_interval: Duration::from_secs(5),
            workload_api_socket: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}
