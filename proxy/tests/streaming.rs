//! A 100 MB body streams through two real `docmesh-proxy run` processes (mTLS between them)
//! without being held in memory: the peak RSS of each proxy process (VmHWM from
//! /proc/PID/status, which the proxy cannot influence) stays far below the body size.

mod support;

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BODY: u64 = 100 * 1024 * 1024;
/// Peak RSS allowed per proxy process: a buffered body alone would exceed it twice over.
const MAX_HWM_KB: u64 = 48 * 1024;

struct Proxy {
    child: Child,
    /// listener field path -> bound address, from the "listening" log lines.
    listening: std::collections::HashMap<String, String>,
}

/// Starts `docmesh-proxy run --config` and waits until `want` listeners are logged.
async fn start_proxy(dir: &Path, name: &str, config: &str, want: &[&str]) -> Proxy {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("DOCMESH_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listening = std::collections::HashMap::new();
    bounded(async {
        while want.iter().any(|w| !listening.contains_key(*w)) {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("proxy exited during startup");
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["message"] == "listening" {
                listening.insert(
                    v["listener"].as_str().unwrap().to_owned(),
                    v["addr"].as_str().unwrap().to_owned(),
                );
            }
        }
    })
    .await;
    // Keep draining stdout so the proxy never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proxy { child, listening }
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn write_identity(dir: &Path, name: &str, svid: &IssuedSvid, ca: &CertificateAuthority) -> String {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let bundle = dir.join("bundle.pem");
    std::fs::write(&cert, &svid.cert_chain_pem).unwrap();
    std::fs::write(&key, &svid.key_pem).unwrap();
    std::fs::write(&bundle, ca.root_cert_pem()).unwrap();
    format!(
        "[identity]\nsource = \"files\"\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        cert, key, bundle
    )
}

/// FNV-1a over a stream of chunks.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
const FNV0: u64 = 0xcbf29ce484222325;

async fn expected_hash(n: u64) -> u64 {
    let mut body = pattern_body(n);
    let mut h = FNV0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            h = fnv(h, &d);
        }
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_streams_through_two_proxy_processes_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca("example.org");
    let app = start_http_app().await;

    let server_cfg = format!(
        "{}[inbound]\ntransparent = false\n[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {}\n[outbound]\ntransparent = false\n",
        write_identity(dir.path(), "server", &svid(&ca, SERVER_ID), &ca),
        app.port()
    );
    let mut server = start_proxy(
        dir.path(),
        "server",
        &server_cfg,
        &["inbound.ports[0].listen"],
    )
    .await;
    let inbound = server.listening["inbound.ports[0].listen"].clone();

    let client_cfg = format!(
        "{}[inbound]\ntransparent = false\n[outbound]\ntransparent = false\n[[outbound.services]]\nname = \"documentserver\"\naddresses = [\"{inbound}\"]\nspiffe_id = \"{SERVER_ID}\"\n[[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"documentserver\"\n",
        write_identity(dir.path(), "client", &svid(&ca, CLIENT_ID), &ca),
    );
    let mut client = start_proxy(
        dir.path(),
        "client",
        &client_cfg,
        &["outbound.listeners[0].listen"],
    )
    .await;
    let outbound: std::net::SocketAddr = client.listening["outbound.listeners[0].listen"]
        .parse()
        .unwrap();

    let want = expected_hash(BODY).await;
    let mut c = h1_client(outbound).await;

    // Upload and download at once: the app echoes the body as it arrives.
    let req = http::Request::post("/echo")
        .header("host", "documentserver")
        .header("content-length", BODY.to_string())
        .body(pattern_body(BODY))
        .unwrap();
    let resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (n, h) = bounded(drain(resp.into_body())).await;
    assert_eq!((n, h), (BODY, want), "echoed body differs");

    // A 100 MB download.
    let resp = bounded(c.send_request(get(&format!("/download?n={BODY}"), "documentserver")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (n, h) = bounded(drain(resp.into_body())).await;
    assert_eq!((n, h), (BODY, want), "downloaded body differs");

    for (name, p) in [("client", &client), ("server", &server)] {
        let hwm = vm_hwm_kb(p.child.id().unwrap());
        eprintln!("{name} proxy VmHWM: {hwm} kB");
        assert!(
            hwm < MAX_HWM_KB,
            "{name} proxy peaked at {hwm} kB RSS for a {BODY}-byte body"
        );
    }

    // SIGTERM drains and exits 0.
    for p in [&mut client, &mut server] {
        let pid = nix::unistd::Pid::from_raw(p.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = bounded(p.child.wait()).await.unwrap();
        assert!(status.success(), "{status}");
    }
}

async fn drain(mut body: hyper::body::Incoming) -> (u64, u64) {
    let mut n = 0u64;
    let mut h = FNV0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            let d: Bytes = d;
            n += d.len() as u64;
            h = fnv(h, &d);
        }
    }
    (n, h)
}
