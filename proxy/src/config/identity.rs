//! `[identity]`: where the proxy's X.509-SVID and trust bundles come from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

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

impl IdentityConfig {
    /// Semantic checks that serde cannot express (`docmesh-proxy check` reports them).
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.reload_interval.is_zero() {
            p.push("identity.reload_interval", "must be greater than zero");
        }
        if self.startup_timeout.is_zero() {
            p.push(
                "identity.startup_timeout",
                "must be greater than zero (how long startup waits for the first SVID)",
            );
        }
        match self.source {
            IdentitySource::Files => {
                for (field, path) in [
                    ("identity.cert", &self.cert),
                    ("identity.key", &self.key),
                    ("identity.bundle", &self.bundle),
                ] {
                    if path.as_os_str().is_empty() {
                        p.push(field, "must name a PEM file (the files source reads it)");
                    }
                }
            }
            IdentitySource::WorkloadApi => {
                if let Some(e) = self
                    .workload_api_socket
                    .as_deref()
                    .filter(|e| !e.is_empty())
                {
                    if !(e.starts_with("unix:") || e.starts_with("tcp:")) {
                        p.push(
                            "identity.workload_api_socket",
                            format!(
                                "`{e}` is not a Workload API endpoint; use \
                                 unix:///path/to/agent.sock or tcp://host:port"
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn problems(toml: &str) -> Vec<String> {
        match Config::from_parts(Some(toml), Path::new("t.toml"), std::iter::empty()) {
            Err(ConfigError::Invalid(ps)) => ps.iter().map(|p| p.to_string()).collect(),
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn identity_problems_name_their_field() {
        let ps = problems(
            "[identity]\nsource = \"workload-api\"\nworkload_api_socket = \"/run/agent.sock\"\n\
             reload_interval = \"0s\"\nstartup_timeout = \"0s\"\n",
        );
        assert!(
            ps.iter()
                .any(|p| p.contains("identity.workload_api_socket")),
            "{ps:?}"
        );
        assert!(
            ps.iter().any(|p| p.contains("identity.reload_interval")),
            "{ps:?}"
        );
        assert!(
            ps.iter().any(|p| p.contains("identity.startup_timeout")),
            "{ps:?}"
        );
        let ps = problems("[identity]\ncert = \"\"\n");
        assert!(ps.iter().any(|p| p.contains("identity.cert")), "{ps:?}");
        assert!(problems(
            "[identity]\nsource = \"workload-api\"\nworkload_api_socket = \"unix:///run/a.sock\"\n"
        )
        .is_empty());
        assert!(problems("[admin]\ndrain_grace_period = \"5s\"\n").is_empty());
        let ps = problems("[admin]\ndrain_grace = \"5s\"\n");
        assert!(
            ps.iter().any(|p| p.contains("drain_grace")),
            "unknown fields are errors: {ps:?}"
        );
    }
}
