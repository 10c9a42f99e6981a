//! `docmesh-proxy run` as a child process: a config file written from the test, the bound
//! addresses read from its JSON log lines, its access log on a channel, SIGTERM to stop it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{bounded, CertificateAuthority, IssuedSvid};

/// A running `docmesh-proxy run --config` process (killed when dropped).
pub struct ProxyProcess {
    pub child: Child,
    /// Listener field path (e.g. `inbound.ports[0].listen`) -> bound address, from the
    /// "listening" log lines.
    pub listening: HashMap<String, String>,
    /// The admin server's bound address.
    pub admin: String,
    /// The access log lines (`"log": "access"`) of stdout; other lines are dropped, and stdout
    /// is always drained so the proxy never blocks on a full pipe.
    access: mpsc::UnboundedReceiver<Json>,
}

impl ProxyProcess {
    /// Writes `config` to `dir/name.toml`, starts `docmesh-proxy run --config` on it and
    /// waits until the admin server and every listener in `want` are logged as listening.
    /// The config must have an `[admin]` listener (see [`identity_toml`]).
    pub async fn start(dir: &Path, name: &str, config: &str, want: &[&str]) -> ProxyProcess {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("DOCMESH_LOG", "info")
            // The one-core sidecar's single-threaded runtime (a Pod with a CPU limit of one,
            // and the benchmark); the netns tests run the binary on its multi-threaded one.
            .env("TOKIO_WORKER_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut listening = HashMap::new();
        let mut admin = None;
        bounded(async {
            while admin.is_none() || want.iter().any(|w| !listening.contains_key(*w)) {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("proxy exited during startup");
                let Ok(v) = serde_json::from_str::<Json>(&line) else {
                    continue;
                };
                if v["message"] == "listening" {
                    listening.insert(
                        v["listener"].as_str().unwrap().to_owned(),
                        v["addr"].as_str().unwrap().to_owned(),
                    );
                }
                if v["message"] == "admin server listening" {
                    admin = Some(v["local_addr"].as_str().unwrap().to_owned());
                }
            }
        })
        .await;
        let (tx, access) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Json>(&line) {
                    if v["log"] == "access" {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        ProxyProcess {
            child,
            listening,
            admin: admin.unwrap(),
            access,
        }
    }

    /// The bound address of the listener at `field` (one of `want` at start).
    pub fn addr(&self, field: &str) -> SocketAddr {
        self.listening[field].parse().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Next access log line matching `pred` (lines before it are dropped).
    pub async fn access_line(&mut self, pred: impl Fn(&Json) -> bool) -> Json {
        bounded(async {
            loop {
                let v = self.access.recv().await.expect("proxy stdout closed");
                if pred(&v) {
                    return v;
                }
            }
        })
        .await
    }

    /// Sends SIGTERM and asserts that the proxy drains and exits 0.
    pub async fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = bounded(self.child.wait()).await.unwrap();
        assert!(status.success(), "{status}");
    }
}

/// Writes `svid` (as `dir/name.pem` and `.key`) and `ca`'s root (`dir/bundle.pem`), and
/// returns the `[identity]` (files source) and `[admin]` (127.0.0.1 port 0) config sections.
pub fn identity_toml(
    dir: &Path,
    name: &str,
    svid: &IssuedSvid,
    ca: &CertificateAuthority,
) -> String {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let bundle = dir.join("bundle.pem");
    std::fs::write(&cert, &svid.cert_chain_pem).unwrap();
    std::fs::write(&key, &svid.key_pem).unwrap();
    std::fs::write(&bundle, ca.root_cert_pem()).unwrap();
    format!(
        "[identity]\nsource = \"files\"\ncert = {cert:?}\nkey = {key:?}\nbundle = {bundle:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Config of the server sidecar of an explicit-mode pair: `identity` (from `identity_toml`)
/// plus one inbound port on 127.0.0.1 (port 0, read back as `inbound.ports[0].listen`) in
/// front of the app at `app_port`.
pub fn explicit_server_toml(identity: &str, app_port: u16) -> String {
    format!(
        "{identity}[inbound]\ntransparent = false\n[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {app_port}\n[outbound]\ntransparent = false\n"
    )
}

/// Config of the client sidecar of an explicit-mode pair: `identity` plus one outbound
/// listener on 127.0.0.1 (port 0) for the service `documentserver` at `inbound`, expected to
/// be SERVER_ID.
pub fn explicit_client_toml(identity: &str, inbound: &str) -> String {
    format!(
        "{identity}[inbound]\ntransparent = false\n[outbound]\ntransparent = false\n[[outbound.services]]\nname = \"documentserver\"\naddresses = [\"{inbound}\"]\nspiffe_id = \"{}\"\n[[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"documentserver\"\n",
        super::SERVER_ID
    )
}
