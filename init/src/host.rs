//! The outside world docmesh-init touches: finding and running the iptables binaries and
//! reading the process's capabilities and the namespace's IPv6 state. Behind a trait so the
//! install flow can be tested without root.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A failed command, classified so the operator learns what to fix.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The binary is not installed.
    #[error("{binary} not found (searched PATH, /usr/sbin, /sbin); install the iptables package, which provides iptables-restore, ip6tables-restore and their -nft/-legacy variants")]
    Missing {
        /// The binary name.
        binary: String,
    },
    /// The kernel refused: no CAP_NET_ADMIN (or CAP_NET_RAW for legacy) in this namespace.
    #[error("{binary} was refused by the kernel ({stderr}); docmesh-init needs CAP_NET_ADMIN (and CAP_NET_RAW for the legacy backend) in the pod's network namespace: add them to the init container's securityContext.capabilities.add (Kubernetes) or cap_add (compose)")]
    PermissionDenied {
        /// The binary name.
        binary: String,
        /// What it printed.
        stderr: String,
    },
    /// The kernel has no nat table for this family.
    #[error("the kernel offers no nat table to {binary} ({stderr}); load iptable_nat/ip6table_nat (legacy) or nft_chain_nat (nft), or choose the other backend with --backend")]
    NoNat {
        /// The binary name.
        binary: String,
        /// What it printed.
        stderr: String,
    },
    /// The kernel or iptables lacks a match or target the rules use.
    #[error("{binary} lacks an extension the rules use ({stderr}); docmesh's rules need the tcp, owner and comment matches and the REDIRECT target (kernel modules xt_tcpudp, xt_owner, xt_comment, xt_REDIRECT)")]
    MissingExtension {
        /// The binary name.
        binary: String,
        /// What it printed.
        stderr: String,
    },
    /// The command failed for another reason.
    #[error("{binary} {args} failed ({status}): {stderr}")]
    Failed {
        /// The binary name.
        binary: String,
        /// Its arguments.
        args: String,
        /// Exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// The command could not be started.
    #[error("could not run {binary}: {source}")]
    Spawn {
        /// The binary name.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the install flow needs from the machine.
pub trait Host {
    /// Full path of an installed binary, if any.
    fn find(&self, binary: &str) -> Option<PathBuf>;
    /// Runs `binary args`, feeding `stdin`; returns stdout, or a classified error.
    fn run(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HostError>;
    /// True when this process holds CAP_NET_ADMIN.
    fn has_net_admin(&self) -> bool;
    /// True when this process holds CAP_NET_RAW.
    fn has_net_raw(&self) -> bool;
    /// True when the kernel and namespace have IPv6 enabled.
    fn ipv6_enabled(&self) -> bool;
}

/// The real machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemHost;

const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

impl Host for SystemHost {
    fn find(&self, binary: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SBIN_DIRS.iter().map(PathBuf::from))
            .map(|d| d.join(binary))
            .find(|p| is_executable(p))
    }

    fn run(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HostError> {
        let path = self.find(binary).ok_or_else(|| HostError::Missing {
            binary: binary.to_string(),
        })?;
        let spawn_err = |source| HostError::Spawn {
            binary: binary.to_string(),
            source,
        };
        let mut child = Command::new(&path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // A child that exits early closes its stdin; its exit status and stderr then say why,
        // so a failed write is only reported when the child claims success.
        let written = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
            _ => Ok(()),
        };
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            written.map_err(spawn_err)?;
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(classify(
            binary,
            args,
            &out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }

    fn has_net_admin(&self) -> bool {
        effective_caps().is_some_and(|c| c & (1 << CAP_NET_ADMIN) != 0)
    }

    fn has_net_raw(&self) -> bool {
        effective_caps().is_some_and(|c| c & (1 << CAP_NET_RAW) != 0)
    }

    fn ipv6_enabled(&self) -> bool {
        Path::new("/proc/net/if_inet6").exists()
            && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
                .map(|s| s.trim() != "1")
                .unwrap_or(false)
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

/// The `CapEff:` bit mask from `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Turns a failed iptables command's stderr into the error that names the cause.
pub fn classify(binary: &str, args: &[&str], status: &str, stderr: &str) -> HostError {
    let lower = stderr.to_ascii_lowercase();
    let binary = binary.to_string();
    let stderr = stderr.to_string();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        HostError::PermissionDenied { binary, stderr }
    } else if lower.contains("table does not exist")
        || (lower.contains("initialize") && lower.contains("nat"))
        || (lower.contains("chain_add failed (no such file or directory)"))
    {
        HostError::NoNat { binary, stderr }
    } else if lower.contains("couldn't load match")
        || lower.contains("couldn't load target")
        || lower.contains("extension") && lower.contains("not found")
    {
        HostError::MissingExtension { binary, stderr }
    } else {
        HostError::Failed {
            binary,
            args: args.join(" "),
            status: status.to_string(),
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n";
        assert_eq!(parse_cap_eff(status), Some(0x3000));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn classifies_typical_failures() {
        let e = classify(
            "iptables-legacy-save",
            &["-t", "nat"],
            "exit status: 1",
            "iptables-legacy-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)",
        );
        assert!(matches!(e, HostError::PermissionDenied { .. }), "{e}");
        let e = classify(
            "ip6tables-legacy-save",
            &["-t", "nat"],
            "exit status: 1",
            "ip6tables-legacy-save: Table does not exist (do you need to insmod?)",
        );
        assert!(matches!(e, HostError::NoNat { .. }), "{e}");
        let e = classify(
            "iptables-legacy-restore",
            &["--noflush"],
            "exit status: 1",
            "iptables-legacy-restore v1.8.9 (legacy): unable to initialize table 'nat'",
        );
        assert!(matches!(e, HostError::NoNat { .. }), "{e}");
        let e = classify(
            "iptables-restore",
            &["--noflush"],
            "exit status: 2",
            "iptables-restore v1.8.9 (nf_tables): Couldn't load match `owner':No such file or directory",
        );
        assert!(matches!(e, HostError::MissingExtension { .. }), "{e}");
        assert!(e.to_string().contains("xt_owner"));
        let e = classify("x", &["--noflush"], "exit status: 2", "line 3 failed");
        assert!(e.to_string().contains("line 3 failed"));
    }

    #[test]
    fn missing_binary_is_reported_by_name() {
        let e = SystemHost
            .run("docmesh-no-such-iptables", &[], None)
            .unwrap_err();
        assert!(matches!(e, HostError::Missing { .. }));
        assert!(e.to_string().contains("docmesh-no-such-iptables"));
    }
}
