//! iptables backend selection: nft or legacy. Rules written with one backend are invisible to
//! (and do nothing alongside) the other's view, so a wrong guess leaves rules that do nothing;
//! we prefer the backend that already holds rules in this namespace.

use crate::host::{Host, HostError};
use crate::rules::Family;

/// What the operator asked for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// The backend that already holds rules here, else the system's `iptables` default.
    #[default]
    Auto,
    /// iptables-nft (nf_tables kernel API).
    Nft,
    /// iptables-legacy (x_tables kernel API).
    Legacy,
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-*`.
    Nft,
    /// `iptables-legacy-*`.
    Legacy,
    /// Plain `iptables-*` (neither variant is installed under its own name).
    Plain,
}

/// Which of a backend's tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `*-save`.
    Save,
    /// `*-restore`.
    Restore,
}

/// Why no backend could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The requested backend's binaries are missing.
    #[error("--backend {requested}: {binary} is not installed; install the iptables package or choose another backend")]
    NotInstalled {
        /// "nft" or "legacy".
        requested: &'static str,
        /// The missing binary.
        binary: String,
    },
    /// No iptables at all.
    #[error("no iptables-restore found (looked for iptables-nft-restore, iptables-legacy-restore and iptables-restore in PATH, /usr/sbin and /sbin); install the iptables package")]
    NoIptables,
    /// Reading the rule sets failed.
    #[error(transparent)]
    Host(#[from] HostError),
}

impl Backend {
    /// The binary name of `tool` for `family`.
    pub fn binary(self, family: Family, tool: Tool) -> String {
        let fam = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Plain => "",
        };
        let tool = match tool {
            Tool::Save => "save",
            Tool::Restore => "restore",
        };
        format!("{fam}{variant}-{tool}")
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Plain => "iptables (default)",
        }
    }
}

/// Number of rules a backend's `*-save` shows over both families; errors count as none.
fn rules_in(host: &dyn Host, backend: Backend) -> usize {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| host.run(&backend.binary(f, Tool::Save), &[], None).ok())
        .map(|s| crate::state::count_rules(&s))
        .sum()
}

/// Picks the backend: the requested one (checking it is installed), or under `Auto` the one
/// that already has rules in this namespace, else what plain `iptables -V` reports.
pub fn select(host: &dyn Host, choice: BackendChoice) -> Result<Backend, BackendError> {
    let installed = |b: Backend| host.find(&b.binary(Family::V4, Tool::Restore)).is_some();
    match choice {
        BackendChoice::Nft | BackendChoice::Legacy => {
            let (b, requested) = if choice == BackendChoice::Nft {
                (Backend::Nft, "nft")
            } else {
                (Backend::Legacy, "legacy")
            };
            if installed(b) {
                Ok(b)
            } else {
                Err(BackendError::NotInstalled {
                    requested,
                    binary: b.binary(Family::V4, Tool::Restore),
                })
            }
        }
        BackendChoice::Auto => {
            let nft = installed(Backend::Nft);
            let legacy = installed(Backend::Legacy);
            match (nft, legacy) {
                (false, false) if installed(Backend::Plain) => Ok(Backend::Plain),
                (false, false) => Err(BackendError::NoIptables),
                (true, false) => Ok(Backend::Nft),
                (false, true) => Ok(Backend::Legacy),
                (true, true) => {
                    let n = rules_in(host, Backend::Nft);
                    let l = rules_in(host, Backend::Legacy);
                    if l > n {
                        Ok(Backend::Legacy)
                    } else if n > l {
                        Ok(Backend::Nft)
                    } else {
                        // No rules anywhere: follow the system's `iptables` alternative.
                        let version = host.run("iptables", &["-V"], None).unwrap_or_default();
                        if version.contains("legacy") {
                            Ok(Backend::Legacy)
                        } else {
                            Ok(Backend::Nft)
                        }
                    }
                }
            }
        }
    }
}
