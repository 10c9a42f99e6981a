//! The six set-ups: direct (no proxy), and the docmesh (its defaults: HTTP/1.1 mesh hop),
//! docmesh-h2 (HTTP/2 mesh hop), nginx, HAProxy and HAProxy-with-h2 pairs, each pair
//! as two real processes (client side and server side) on 127.0.0.1, started from the
//! configs in [`super::configs`], stopped (SIGTERM, then SIGKILL) when dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::configs::{self, MeshAlpn, PairPorts};
use super::pki::Pki;
use super::tools::Tools;

/// Which set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Load generator straight to the backend.
    Direct,
    /// docmesh sidecar pair, with its defaults (HTTP/1.1 on the mesh hop).
    Docmesh,
    /// The same docmesh pair with HTTP/2 on the mesh hop (`outbound.mesh_http2 = true`): the
    /// A/B of the hop's protocol, measured in the same rounds.
    DocmeshH2,
    /// nginx pair.
    Nginx,
    /// HAProxy pair, HTTP/1.1 on the mesh hop.
    Haproxy,
    /// HAProxy pair, HTTP/2 on the mesh hop (`alpn h2` on both sides).
    HaproxyH2,
}

impl Kind {
    /// All set-ups in the order of a round.
    pub const ALL: [Kind; 6] = [
        Kind::Direct,
        Kind::Docmesh,
        Kind::DocmeshH2,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::HaproxyH2,
    ];

    /// The peers docmesh is compared with ("best peer" is the best of these per figure).
    pub const PEERS: [Kind; 3] = [Kind::Nginx, Kind::Haproxy, Kind::HaproxyH2];

    /// Short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Docmesh => "docmesh",
            Kind::DocmeshH2 => "docmesh-h2",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::HaproxyH2 => "haproxy-h2",
        }
    }
}

/// One proxy process of a pair.
pub struct Proc {
    /// `outbound` (client side) or `inbound` (server side).
    pub role: &'static str,
    /// The process.
    pub child: Child,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// A running set-up.
pub struct Setup {
    /// Which one.
    pub kind: Kind,
    /// Where the load generator sends plaintext HTTP/1.1.
    pub entry: SocketAddr,
    /// The server side's mTLS port (pairs only), for the connection-churn test.
    pub mtls: Option<SocketAddr>,
    /// Proxy processes (empty for direct), client side first.
    pub procs: Vec<Proc>,
}

/// A port that was free a moment ago on 127.0.0.1 (nginx and HAProxy need fixed ports).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(role: &'static str, dir: &Path, tag: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{tag}-{role}.log"));
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    Ok(Proc { role, child, log })
}

fn write(path: PathBuf, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n    ")
}

impl Setup {
    /// Starts `kind` in front of the backend at `backend` and waits until its ports accept
    /// connections (at most 20 s), naming the process and its log on failure. `idle_conns`:
    /// the idle client connections of the connection-scale test (nginx's
    /// `worker_connections` and HAProxy's `maxconn` are sized for them plus 1000; docmesh's
    /// limits are above any count the test uses).
    pub fn start(
        kind: Kind,
        tools: &Tools,
        pki: &Pki,
        dir: &Path,
        backend: SocketAddr,
        idle_conns: usize,
    ) -> anyhow::Result<Setup> {
        Self::start_with_env(kind, tools, pki, dir, backend, idle_conns, &[])
    }

    /// [`Setup::start`] with more environment variables for the docmesh sidecars (e.g. the
    /// `OTEL_*` ones of the OTLP exporter).
    pub fn start_with_env(
        kind: Kind,
        tools: &Tools,
        pki: &Pki,
        dir: &Path,
        backend: SocketAddr,
        idle_conns: usize,
        docmesh_env: &[(String, String)],
    ) -> anyhow::Result<Setup> {
        if kind == Kind::Direct {
            return Ok(Setup {
                kind,
                entry: backend,
                mtls: None,
                procs: Vec::new(),
            });
        }
        let ports = PairPorts {
            outbound: free_port()?,
            inbound: free_port()?,
            backend: backend.port(),
        };
        let tag = kind.name();
        // Room for the load generators' connections beside the idle ones.
        let max_conns = idle_conns + 1000;
        let mut procs = Vec::new();
        match kind {
            Kind::Direct => {}
            Kind::Docmesh | Kind::DocmeshH2 => {
                // Set for both, so that each column measures what its name says whatever
                // the default.
                let mesh_http2 = if kind == Kind::DocmeshH2 {
                    "true"
                } else {
                    "false"
                };
                for (role, text) in [
                    ("inbound", configs::docmesh_inbound(pki, ports)),
                    ("outbound", configs::docmesh_outbound(pki, ports)),
                ] {
                    let cfg = write(dir.join(format!("{tag}-{role}.toml")), &text)?;
                    let mut cmd = Command::new(&tools.docmesh);
                    cmd.arg("run")
                        .arg("--config")
                        .arg(cfg)
                        // One thread, like nginx and HAProxy: with this set to 1 the proxy
                        // runs tokio's single-threaded runtime.
                        .env("TOKIO_WORKER_THREADS", "1")
                        .env("DOCMESH_OUTBOUND__MESH_HTTP2", mesh_http2)
                        .envs(docmesh_env.iter().map(|(k, v)| (k, v)));
                    procs.push(spawn(role, dir, tag, &mut cmd)?);
                }
            }
            Kind::Nginx => {
                for (role, text) in [
                    (
                        "inbound",
                        configs::nginx_inbound(dir, pki, ports, max_conns),
                    ),
                    (
                        "outbound",
                        configs::nginx_outbound(dir, pki, ports, max_conns),
                    ),
                ] {
                    let cfg = write(dir.join(format!("nginx-{role}.conf")), &text)?;
                    let mut cmd = Command::new(&tools.nginx);
                    cmd.arg("-p")
                        .arg(dir)
                        .arg("-e")
                        .arg(dir.join(format!("nginx-{role}.startup.log")))
                        .arg("-c")
                        .arg(cfg);
                    procs.push(spawn(role, dir, tag, &mut cmd)?);
                }
            }
            Kind::Haproxy | Kind::HaproxyH2 => {
                let alpn = if kind == Kind::HaproxyH2 {
                    MeshAlpn::H2
                } else {
                    MeshAlpn::Http1
                };
                for (role, text) in [
                    (
                        "inbound",
                        configs::haproxy_inbound(pki, ports, alpn, max_conns),
                    ),
                    (
                        "outbound",
                        configs::haproxy_outbound(pki, ports, alpn, max_conns),
                    ),
                ] {
                    let cfg = write(dir.join(format!("{tag}-{role}.cfg")), &text)?;
                    let mut cmd = Command::new(&tools.haproxy);
                    cmd.arg("-db").arg("-f").arg(cfg);
                    procs.push(spawn(role, dir, tag, &mut cmd)?);
                }
            }
        }
        procs.reverse(); // client side first
        let mut s = Setup {
            kind,
            entry: SocketAddr::from(([127, 0, 0, 1], ports.outbound)),
            mtls: Some(SocketAddr::from(([127, 0, 0, 1], ports.inbound))),
            procs,
        };
        s.wait_ready(&[ports.outbound, ports.inbound])?;
        Ok(s)
    }

    fn wait_ready(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            loop {
                for p in &mut self.procs {
                    if let Ok(Some(st)) = p.child.try_wait() {
                        bail!(
                            "{} {} exited at start ({st}); its log {}:\n    {}",
                            self.kind.name(),
                            p.role,
                            p.log.display(),
                            tail(&p.log)
                        );
                    }
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not listen on {addr} within 20 s; logs in {}",
                        self.kind.name(),
                        self.procs
                            .first()
                            .map(|p| p.log.display().to_string())
                            .unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Checks that every proxy process still runs; names the one that died and its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!(
                    "{} {} died ({st}); its log {}:\n    {}",
                    self.kind.name(),
                    p.role,
                    p.log.display(),
                    tail(&p.log)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for p in &self.procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.procs {
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
