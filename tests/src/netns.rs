//! Network-namespace harness for end-to-end tests with real iptables.
//!
//! A [`Topology`] is a private "hub" namespace holding a bridge plus one namespace per pod,
//! each wired to the bridge by a veth pair and given its own IPv4 (and, where the kernel
//! allows, IPv6) address. Every topology lives in its own namespaces, so tests can run in
//! parallel with the same addresses; names carry the process id and a counter. Dropping the
//! topology (also while a test panics) kills the processes spawned through it and deletes the
//! namespaces; namespaces left by killed test processes are removed by the next run.
//!
//! Code can run inside a pod three ways: [`Pod::exec`] / [`Pod::spawn`] (`ip netns exec`,
//! optionally as another UID/GID via `setpriv`), or [`Pod::enter`] / [`Pod::enter_as`], which
//! run a closure on a fresh thread that has joined the pod's namespace (and, for `enter_as`,
//! taken the given filesystem UID/GID, which is what iptables' owner match checks). Sockets
//! created there belong to the pod and can be used from any thread afterwards.
//!
//! A [`Mesh`] is a topology whose pods run real sidecars ([`sidecar::Sidecar`]) with SVIDs
//! from one CA: the setup of the end-to-end tests.
//!
//! Without root (CAP_NET_ADMIN and CAP_SYS_ADMIN) or the tools, [`Topology::new`] returns an
//! error that says what is missing; tests turn it into a failure, never a silent skip.

pub mod capture;
pub mod mesh;
mod pod;
pub mod probe;
pub mod sidecar;

pub use mesh::Mesh;
pub use pod::Pod;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "dmt-";
/// The hub's address on the pods' IPv4 network (the pods' default gateway).
pub const HUB_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The hub's address on the pods' IPv6 network.
pub const HUB_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Why a topology could not be built or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process lacks the privileges network-namespace tests need.
    #[error("network-namespace tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create namespaces, veth pairs and iptables rules; missing: {missing}. Run the tests as root (CI does), e.g. `sudo -E cargo test -p docmesh-tests`")]
    NotPrivileged {
        /// What is missing.
        missing: String,
    },
    /// A required tool is not installed.
    #[error("network-namespace tests need `{tool}` (package {package}); run tests/scripts/install-deps.sh")]
    MissingTool {
        /// The binary.
        tool: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// An OS-level failure.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// Runs a command and returns its output, failing on a non-zero exit.
pub fn run(args: &[&str]) -> Result<Output, NetnsError> {
    let (prog, rest) = args.split_first().ok_or_else(|| NetnsError::Command {
        command: String::new(),
        status: "empty command".into(),
        stderr: String::new(),
    })?;
    let out = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("cannot run {prog}")))?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn have(tool: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(tool).exists())
}

/// Checks privileges and tools; the error names everything that is missing.
pub fn preflight() -> Result<(), NetnsError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let mut missing = Vec::new();
    if caps & (1 << 12) == 0 {
        missing.push("CAP_NET_ADMIN");
    }
    if caps & (1 << 21) == 0 {
        missing.push("CAP_SYS_ADMIN (for `ip netns` and setns)");
    }
    if !missing.is_empty() {
        return Err(NetnsError::NotPrivileged {
            missing: format!(
                "{} (running as uid {})",
                missing.join(", "),
                nix::unistd::geteuid()
            ),
        });
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("setpriv", "util-linux"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
    ] {
        if !have(tool) {
            return Err(NetnsError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// Deletes namespaces left behind by test processes that no longer exist.
fn remove_stale() {
    let Ok(out) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A bridge in a hub namespace plus pods; everything is removed on drop.
#[derive(Debug)]
pub struct Topology {
    /// The hub namespace (holds the bridge `br0`).
    pub hub: String,
    /// The pods, in the order given.
    pub pods: Vec<Pod>,
}

impl Topology {
    /// Builds a hub and one pod per name. Fails, saying why, without privileges or tools.
    pub fn new(names: &[&str]) -> Result<Topology, NetnsError> {
        preflight()?;
        remove_stale();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}-{seq}", std::process::id());
        let hub = format!("{base}-hub");
        run(&["ip", "netns", "add", &hub])?;
        // From here on, Drop cleans up whatever was created.
        let mut topo = Topology {
            hub: hub.clone(),
            pods: Vec::new(),
        };
        let ipv6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
        let h = |args: &[&str]| {
            let mut v = vec!["ip", "-n", hub.as_str()];
            v.extend_from_slice(args);
            run(&v)
        };
        h(&["link", "set", "lo", "up"])?;
        // The hub is a bridge, not a router: what a pod sends to an address outside the pods'
        // network is dropped silently, as on an unrouted network. A new namespace copies the
        // host's forwarding setting, and a host running Docker forwards; the hub would then
        // answer such packets with ICMP "network unreachable".
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if std::path::Path::new(&path).exists() {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &hub,
                    "sysctl",
                    "-qw",
                    &format!("{key}=0"),
                ])?;
            }
        }
        h(&["link", "add", "br0", "type", "bridge"])?;
        h(&["addr", "add", &format!("{HUB_V4}/24"), "dev", "br0"])?;
        let ipv6 = ipv6
            && h(&[
                "addr",
                "add",
                &format!("{HUB_V6}/64"),
                "dev",
                "br0",
                "nodad",
            ])
            .is_ok();
        h(&["link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{base}-{name}");
            run(&["ip", "netns", "add", &netns])?;
            let last = u8::try_from(11 + i).map_err(|_| NetnsError::Command {
                command: "Topology::new".into(),
                status: "too many pods".into(),
                stderr: String::new(),
            })?;
            let pod = Pod {
                name: name.to_string(),
                netns: netns.clone(),
                ipv4: Ipv4Addr::new(10, 77, 0, last),
                ipv6: ipv6.then(|| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(last))),
                hub_port: format!("p{i}"),
                children: Mutex::new(Vec::new()),
            };
            topo.pods.push(pod);
            let port = format!("p{i}");
            h(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            h(&["link", "set", &port, "master", "br0", "up"])?;
            let p = |args: &[&str]| {
                let mut v = vec!["ip", "-n", netns.as_str()];
                v.extend_from_slice(args);
                run(&v)
            };
            p(&["link", "set", "lo", "up"])?;
            p(&["addr", "add", &format!("10.77.0.{last}/24"), "dev", "eth0"])?;
            if ipv6 {
                p(&[
                    "addr",
                    "add",
                    &format!("fd77::{last:x}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
            }
            p(&["link", "set", "eth0", "up"])?;
            p(&["route", "add", "default", "via", &HUB_V4.to_string()])?;
            if ipv6 {
                p(&["-6", "route", "add", "default", "via", &HUB_V6.to_string()])?;
            }
        }
        Ok(topo)
    }

    /// The pod with this short name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod named {name:?} in this topology"))
    }

    /// True when the pods have IPv6 addresses.
    pub fn has_ipv6(&self) -> bool {
        self.pods.iter().all(|p| p.ipv6.is_some())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for pod in &self.pods {
            pod.kill_children();
            let _ = run(&["ip", "netns", "del", &pod.netns]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub]);
    }
}

/// Drops `#` comment lines and zeroes `[packets:bytes]` counters in `iptables-save` output.
pub fn normalize_save(save: &str) -> String {
    let mut out = String::new();
    for line in save.lines().filter(|l| !l.starts_with('#')) {
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &line[..i]),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Drops tables that hold nothing but built-in chains with ACCEPT policy and no rules: such a
/// table is the same rule set as no table (legacy iptables creates it on first use).
pub fn without_empty_tables(save: &str) -> String {
    let mut out = String::new();
    let mut table: Vec<&str> = Vec::new();
    for line in save.lines() {
        table.push(line);
        if line == "COMMIT" {
            let empty = table.iter().all(|l| {
                l.starts_with('*')
                    || *l == "COMMIT"
                    || (l.starts_with(':') && l.contains(" ACCEPT "))
            });
            if !empty {
                for l in &table {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            table.clear();
        }
    }
    for l in table {
        out.push_str(l);
        out.push('\n');
    }
    out
}
