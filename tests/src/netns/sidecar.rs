//! Real sidecars in pods: `docmesh-init` rules, an SVID, a configuration and the proxy process
//! running as UID 1337, plus the clients the end-to-end tests use (curl as the app user, the
//! admin server's metrics). Tests start them through [`super::Mesh`].

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use docmesh_certs::ca::CertificateAuthority;
use docmesh_certs::spiffe_id::SpiffeId;
use docmesh_init::host::SystemHost;

use super::Pod;

/// UID/GID the proxy runs as (the one `docmesh-init` exempts from redirection).
pub const PROXY: (u32, u32) = (1337, 1337);
/// UID/GID of the apps and their clients (redirected).
pub const APP: (u32, u32) = (1000, 1000);

/// Runs `docmesh-init ARGS` (the real CLI code and iptables binaries) inside the pod; panics
/// with its error.
pub fn init(pod: &Pod, args: &[&str]) -> String {
    try_init(pod, args).unwrap_or_else(|e| panic!("docmesh-init failed: {e}"))
}

/// Runs `docmesh-init ARGS` inside the pod and returns its output or its error message (for
/// tests of refusals); panics only when the pod cannot be entered.
pub fn try_init(pod: &Pod, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["docmesh-init".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    pod.enter(move || {
        let mut out = Vec::new();
        docmesh_init::cli::run(argv, &SystemHost, &mut out)
            .map(|()| String::from_utf8_lossy(&out).into_owned())
            .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("[{}] cannot enter the pod: {e}", pod.name))
}

/// Prints the proxies' logs when the test fails, so the failure explains itself.
#[derive(Debug, Default)]
pub struct Logs(pub Vec<PathBuf>);

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last 40 lines)", p.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Writes a file the proxy (UID 1337) must read.
pub fn write_owned(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::os::unix::fs::chown(path, Some(PROXY.0), Some(PROXY.1))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// A pod's sidecar: where its files are, and the binary it runs.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Directory with `svid.pem`, `svid.key`, `bundle.pem`, `proxy.toml`, `proxy.log`.
    pub dir: PathBuf,
    /// The proxy binary (`env!("CARGO_BIN_EXE_docmesh-netns-proxy")` in a test).
    pub bin: PathBuf,
}

impl Sidecar {
    /// Starts a pod's sidecar: `docmesh-init` rules, an SVID for `spiffe_id` from `ca` (files
    /// source, the bundle holds `ca`'s root), `proxy.toml` = the `[identity]` section followed
    /// by `config`, the proxy process as UID 1337; waits until it is ready. Its files live in
    /// `root/POD`; its log is printed by `logs` if the test fails.
    pub fn start(
        pod: &Pod,
        bin: &Path,
        ca: &CertificateAuthority,
        spiffe_id: &str,
        root: &Path,
        config: &str,
        logs: &mut Logs,
    ) -> Sidecar {
        let dir = root.join(&pod.name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        let id: SpiffeId = spiffe_id
            .parse()
            .unwrap_or_else(|e| panic!("bad SPIFFE ID {spiffe_id}: {e}"));
        let svid = ca
            .issue_svid(&id, Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("cannot issue an SVID for {spiffe_id}: {e}"));
        write_owned(&dir.join("svid.pem"), &svid.cert_chain_pem);
        write_owned(&dir.join("svid.key"), &svid.key_pem);
        write_owned(&dir.join("bundle.pem"), ca.root_cert_pem());
        let d = dir.display();
        let text = format!(
            "[identity]\nsource = \"files\"\ncert = \"{d}/svid.pem\"\nkey = \"{d}/svid.key\"\n\
             bundle = \"{d}/bundle.pem\"\n\n{config}\n"
        );
        write_owned(&dir.join("proxy.toml"), &text);
        logs.0.push(dir.join("proxy.log"));
        init(pod, &[]);
        let sidecar = Sidecar {
            dir,
            bin: bin.to_owned(),
        };
        sidecar.spawn(pod);
        sidecar
    }

    /// Starts (or, after `pod.kill_children()`, restarts) the proxy process as UID 1337 and
    /// waits (up to 20 s) until its admin `/ready` answers: SVID loaded, every listener bound.
    pub fn spawn(&self, pod: &Pod) {
        let (config, log) = (self.dir.join("proxy.toml"), self.dir.join("proxy.log"));
        let bin = self.bin.display().to_string();
        pod.spawn_logged(Some(PROXY), &[&bin, &config.display().to_string()], &log)
            .unwrap_or_else(|e| panic!("[{}] cannot start the proxy: {e}", pod.name));
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = [
            "curl",
            "-sf",
            "--max-time",
            "1",
            "http://127.0.0.1:15020/ready",
        ];
        while let Err(e) = pod.exec(&ready) {
            assert!(
                Instant::now() < deadline,
                "[{}] proxy not ready after 20s ({e}); log: {}",
                pod.name,
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `curl -sS -g -i --max-time 10 ARGS` inside the pod as the app user: (status, headers and
/// body, elapsed). Panics when curl fails or no status line came back.
pub fn curl(pod: &Pod, args: &[&str]) -> (u16, String, Duration) {
    let start = Instant::now();
    let mut argv = vec!["curl", "-sS", "-g", "-i", "--max-time", "10"];
    argv.extend_from_slice(args);
    let out = pod
        .exec_as(APP.0, APP.1, &argv)
        .unwrap_or_else(|e| panic!("curl {args:?}: {e}"));
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from curl {args:?}: {text:?}"));
    (status, text, elapsed)
}

/// `http://IP:PORT/PATH` with IPv6 addresses in brackets.
pub fn url(ip: IpAddr, port: u16, path: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}{path}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}{path}"),
    }
}

/// The sum of the samples whose line starts with `prefix` on the pod's admin `/metrics`
/// (0 when there is none).
pub fn metric(pod: &Pod, prefix: &str) -> f64 {
    let text = pod
        .stdout(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])
        .unwrap_or_else(|e| panic!("[{}] admin /metrics: {e}", pod.name));
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
