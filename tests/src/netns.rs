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
//! Without root (CAP_NET_ADMIN and CAP_SYS_ADMIN) or the tools, [`Topology::new`] returns an
//! error that says what is missing; tests turn it into a failure, never a silent skip.

pub mod capture;
pub mod probe;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};
use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

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

/// One pod: a network namespace with an address on the topology's bridge.
#[derive(Debug)]
pub struct Pod {
    /// Short name given by the test ("a", "client", ...).
    pub name: String,
    /// The namespace name (`ip netns` name).
    pub netns: String,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address, when the kernel allows IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// The hub-side end of the pod's veth pair (capture there to see the pod's wire traffic).
    pub hub_port: String,
    children: Mutex<Vec<Child>>,
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

/// Joins the named network namespace on the current thread.
fn join_netns(netns: &str) -> Result<(), NetnsError> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).map_err(io(format!("cannot open {path}")))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| io(format!("setns({path})"))(std::io::Error::from(e)))
}

impl Pod {
    /// The pod's address of the given family (`false` = IPv4).
    pub fn ip(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.ipv6.map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(self.ipv4))
        }
    }

    fn ns_cmd(&self, ids: Option<(u32, u32)>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]);
        if let Some((uid, gid)) = ids {
            cmd.args([
                "setpriv",
                "--reuid",
                &uid.to_string(),
                "--regid",
                &gid.to_string(),
                "--clear-groups",
                "--",
            ]);
        }
        cmd.args(args);
        cmd
    }

    /// Runs a command inside the pod (as root) and waits for it; fails on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> Result<Output, NetnsError> {
        self.exec_inner(None, args)
    }

    /// Runs a command inside the pod as `uid`/`gid` (no supplementary groups).
    pub fn exec_as(&self, uid: u32, gid: u32, args: &[&str]) -> Result<Output, NetnsError> {
        self.exec_inner(Some((uid, gid)), args)
    }

    fn exec_inner(&self, ids: Option<(u32, u32)>, args: &[&str]) -> Result<Output, NetnsError> {
        let out = self
            .ns_cmd(ids, args)
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("cannot run {args:?} in {}", self.netns)))?;
        if !out.status.success() {
            return Err(NetnsError::Command {
                command: format!("[{}] {}", self.name, args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Runs a command inside the pod and returns its stdout as text.
    pub fn stdout(&self, args: &[&str]) -> Result<String, NetnsError> {
        Ok(String::from_utf8_lossy(&self.exec(args)?.stdout).into_owned())
    }

    /// Starts a long-running command in the pod, optionally as `(uid, gid)`; it is killed
    /// when the topology is dropped (or earlier with [`Pod::kill_children`]). Returns its pid.
    pub fn spawn(&self, ids: Option<(u32, u32)>, args: &[&str]) -> Result<u32, NetnsError> {
        let child = self
            .ns_cmd(ids, args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(io(format!("cannot start {args:?} in {}", self.netns)))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Like [`Pod::spawn`], with stdout and stderr appended to `log`.
    pub fn spawn_logged(
        &self,
        ids: Option<(u32, u32)>,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<u32, NetnsError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(io(format!("cannot open {}", log.display())))
        };
        let child = self
            .ns_cmd(ids, args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .spawn()
            .map_err(io(format!("cannot start {args:?} in {}", self.netns)))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Kills and reaps every process started with [`Pod::spawn`].
    pub fn kill_children(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for mut c in children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `f` on a new thread that has joined the pod's network namespace.
    pub fn enter<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NetnsError> {
        self.enter_inner(None, f)
    }

    /// Like [`Pod::enter`], with the thread's filesystem UID/GID set to `uid`/`gid`: sockets it
    /// creates match iptables' `--uid-owner uid` / `--gid-owner gid` exactly as a process
    /// running as that user would.
    pub fn enter_as<R: Send + 'static>(
        &self,
        uid: u32,
        gid: u32,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NetnsError> {
        self.enter_inner(Some((uid, gid)), f)
    }

    fn enter_inner<R: Send + 'static>(
        &self,
        ids: Option<(u32, u32)>,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NetnsError> {
        let netns = self.netns.clone();
        std::thread::spawn(move || -> Result<R, NetnsError> {
            join_netns(&netns)?;
            if let Some((uid, gid)) = ids {
                // Per-thread credentials (raw syscalls, not broadcast to other threads).
                setfsgid(Gid::from_raw(gid));
                setfsuid(Uid::from_raw(uid));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Builds a multi-thread tokio runtime whose worker and blocking threads all live in the
    /// pod's namespace (optionally with filesystem UID/GID `ids`). Spawn tasks on it with
    /// `rt.spawn(...)`: `block_on` runs its future on the calling thread, outside the pod.
    pub fn runtime(&self, ids: Option<(u32, u32)>) -> Result<tokio::runtime::Runtime, NetnsError> {
        // Check the namespace can be joined before handing the path to the runtime threads.
        File::open(format!("/run/netns/{}", self.netns))
            .map_err(io(format!("cannot open /run/netns/{}", self.netns)))?;
        let netns = self.netns.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = join_netns(&netns) {
                    panic!("runtime thread could not join {netns}: {e}");
                }
                if let Some((uid, gid)) = ids {
                    setfsgid(Gid::from_raw(gid));
                    setfsuid(Uid::from_raw(uid));
                }
            })
            .build()
            .map_err(io("cannot build a tokio runtime"))
    }

    /// `SAVE_BIN [-t TABLE]` inside the pod (e.g. `iptables-save`, `ip6tables-legacy-save`),
    /// without comments and counters, so two dumps compare equal when the rules are equal.
    pub fn rules(&self, save_bin: &str, table: Option<&str>) -> Result<String, NetnsError> {
        let mut args = vec![save_bin];
        if let Some(t) = table {
            args.extend(["-t", t]);
        }
        Ok(normalize_save(&self.stdout(&args)?))
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
