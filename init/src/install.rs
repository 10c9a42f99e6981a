//! The install and cleanup flows: choose the backend and families, read the current nat table,
//! and apply one `*-restore --noflush` call per address family (or print it for `--dry-run`).

use std::io::Write;

use crate::backend::{self, Backend, BackendChoice, BackendError, Tool};
use crate::host::{Host, HostError};
use crate::options::Options;
use crate::rules::{self, Family};
use crate::state::NatState;

/// Whether to manage IPv6 rules (`--ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// IPv6 rules when the namespace has IPv6 and the kernel offers an IPv6 nat table.
    #[default]
    Auto,
    /// IPv6 rules always; an error when the kernel cannot hold them.
    On,
    /// IPv4 only.
    Off,
}

/// Install or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Install or refresh the rules.
    Install,
    /// Remove docmesh's rules.
    Cleanup,
}

/// How to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rule options.
    pub options: Options,
    /// `--backend`.
    pub backend: BackendChoice,
    /// `--ipv6`.
    pub ipv6: Ipv6Mode,
    /// Install or cleanup.
    pub action: Action,
    /// Print the restore input instead of applying it.
    pub dry_run: bool,
}

/// Why an install or cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No CAP_NET_ADMIN.
    #[error("docmesh-init lacks CAP_NET_ADMIN, which it needs to change this network namespace's iptables rules: run it as root or add NET_ADMIN (and NET_RAW) to the init container's securityContext.capabilities.add (Kubernetes) or cap_add (compose)")]
    NoNetAdmin,
    /// No CAP_NET_RAW with the legacy backend.
    #[error("the iptables legacy backend needs CAP_NET_RAW as well as CAP_NET_ADMIN; add NET_RAW to the capabilities, or use --backend nft")]
    NoNetRaw,
    /// Backend selection failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An iptables command failed.
    #[error("{family}: {source}")]
    Command {
        /// IPv4 or IPv6.
        family: &'static str,
        /// What failed.
        source: HostError,
    },
    /// After the restore, the kernel shows different rules than we installed.
    #[error("{family}: after {binary} the nat table does not hold the rules docmesh-init wrote (another program changed them, or the iptables backends disagree); missing: {missing:?}")]
    Verify {
        /// IPv4 or IPv6.
        family: &'static str,
        /// The restore binary.
        binary: String,
        /// Expected lines not found.
        missing: Vec<String>,
    },
    /// After a cleanup, docmesh chains are still there.
    #[error("{family}: after {binary} docmesh chains are still present: {left:?}; another program may reference them")]
    Leftover {
        /// IPv4 or IPv6.
        family: &'static str,
        /// The restore binary.
        binary: String,
        /// Chains still present.
        left: Vec<String>,
    },
    /// Writing the output failed.
    #[error("could not write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs the plan against `host`, writing the dry-run script or a summary to `out`.
pub fn run(host: &dyn Host, plan: &Plan, out: &mut dyn Write) -> Result<(), InstallError> {
    if !plan.dry_run && !host.has_net_admin() {
        return Err(InstallError::NoNetAdmin);
    }
    let backend = backend::select(host, plan.backend)?;
    if !plan.dry_run && backend == Backend::Legacy && !host.has_net_raw() {
        return Err(InstallError::NoNetRaw);
    }
    let mut families = vec![Family::V4];
    if plan.ipv6 == Ipv6Mode::On || (plan.ipv6 == Ipv6Mode::Auto && host.ipv6_enabled()) {
        families.push(Family::V6);
    }
    // Read every family first, so a failure (no IPv6 nat, no permission) changes nothing.
    let mut scripts = Vec::new();
    for family in families {
        let save_bin = backend.binary(family, Tool::Save);
        let state = match host.run(&save_bin, &["-t", "nat"], None) {
            Ok(save) => NatState::parse(&save),
            Err(HostError::NoNat { .. }) if family == Family::V6 && plan.ipv6 == Ipv6Mode::Auto => {
                writeln!(
                    out,
                    "# {}: the kernel has no IPv6 nat table; IPv6 left alone (use --ipv6 on to make this an error)",
                    family.name()
                )?;
                continue;
            }
            Err(e) if plan.dry_run && !matches!(e, HostError::NoNat { .. }) => {
                writeln!(out, "# could not read the current {} rules ({e}); showing the input for a namespace without docmesh rules", family.name())?;
                NatState::default()
            }
            Err(source) => {
                return Err(InstallError::Command {
                    family: family.name(),
                    source,
                })
            }
        };
        let script = match plan.action {
            Action::Install => Some(rules::install_script(&plan.options, family, &state)),
            Action::Cleanup => rules::cleanup_script(&state),
        };
        scripts.push((family, script));
    }
    for (family, script) in scripts {
        let err = |source| InstallError::Command {
            family: family.name(),
            source,
        };
        let save_bin = backend.binary(family, Tool::Save);
        let restore_bin = backend.binary(family, Tool::Restore);
        let Some(script) = script else {
            writeln!(
                out,
                "# {}: no docmesh rules present ({}); nothing to remove",
                family.name(),
                backend.name()
            )?;
            continue;
        };
        if plan.dry_run {
            writeln!(
                out,
                "# {}: input for {restore_bin} --noflush",
                family.name()
            )?;
            out.write_all(script.as_bytes())?;
            continue;
        }
        host.run(&restore_bin, &["--noflush"], Some(&script))
            .map_err(err)?;
        let after = NatState::parse(&host.run(&save_bin, &["-t", "nat"], None).map_err(err)?);
        match plan.action {
            Action::Install => {
                let present: Vec<&String> = after.jumps.iter().chain(&after.rules).collect();
                let expected = rules::expected_save_lines(&plan.options, family);
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|l| !present.contains(l))
                    .cloned()
                    .collect();
                if !missing.is_empty() || present.len() != expected.len() {
                    return Err(InstallError::Verify {
                        family: family.name(),
                        binary: restore_bin,
                        missing,
                    });
                }
                writeln!(
                    out,
                    "docmesh-init: {} rules installed with {restore_bin} ({} rules; inbound -> {}, outbound -> {})",
                    family.name(),
                    present.len(),
                    plan.options.inbound_port,
                    plan.options.outbound_port
                )?;
            }
            Action::Cleanup => {
                if !after.is_empty() {
                    return Err(InstallError::Leftover {
                        family: family.name(),
                        binary: restore_bin,
                        left: after.chains.clone(),
                    });
                }
                writeln!(
                    out,
                    "docmesh-init: {} rules removed with {restore_bin}",
                    family.name()
                )?;
            }
        }
    }
    Ok(())
}
