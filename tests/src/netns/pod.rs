//! A pod of a [`Topology`](super::Topology): running commands and code inside its network
//! namespace, optionally as another user.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};
use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

use super::{io, normalize_save, NetnsError};

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
    pub(super) children: Mutex<Vec<Child>>,
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
        let mut cmd = self.ns_cmd(ids, args);
        self.start(cmd.stdin(Stdio::null()), args)
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
        let mut cmd = self.ns_cmd(ids, args);
        cmd.stdin(Stdio::null()).stdout(open()?).stderr(open()?);
        self.start(&mut cmd, args)
    }

    /// Starts `cmd` (built from `args`) and keeps the child for [`Pod::kill_children`].
    fn start(&self, cmd: &mut Command, args: &[&str]) -> Result<u32, NetnsError> {
        let child = cmd
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
