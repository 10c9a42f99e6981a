//! OnlyOffice stickiness with a real socket.io stack: three python-socketio replicas behind one
//! server sidecar (three inbound ports), a client sidecar balancing over them, and a
//! python-socketio client per document using long-polling and a WebSocket upgrade with
//! `?shardkey=<doc>`. With the built-in hash key every request of a document reaches one replica
//! and no session is unknown; with hashing off (`hash_key = []`) the same client fails, which
//! shows that the test can fail.
//!
//! Needs python-socketio and aiohttp (`tests/scripts/install-deps.sh`).

use std::path::Path;
use std::process::Stdio;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/socketio_support/sio.py"
);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn replica(name: &str) -> (Child, u16) {
    let port = free_port();
    let mut child = Command::new("python3")
        .args([SCRIPT, "server", &port.to_string(), name])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = bounded(lines.next_line()).await.unwrap();
    assert_eq!(
        first.as_deref(),
        Some("ready"),
        "the python-socketio replica did not start; install python-socketio and aiohttp \
         (tests/scripts/install-deps.sh)"
    );
    (child, port)
}

async fn run_client(url: &str, docs: usize) -> Json {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        Command::new("python3")
            .args([SCRIPT, "client", url, &docs.to_string()])
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .expect("the socket.io client finished within 300 s")
    .unwrap();
    assert!(out.status.success(), "socket.io client: {}", out.status);
    serde_json::from_slice(&out.stdout).expect("the client printed JSON")
}

async fn client_sidecar(dir: &Path, name: &str, inbounds: &[String], routes: &str) -> ProxyProcess {
    let ca_identity = std::fs::read_to_string(dir.join("client-identity.toml")).unwrap();
    let addrs: Vec<String> = inbounds.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = format!(
        "{ca_identity}[inbound]\ntransparent = false\n[outbound]\ntransparent = false\n\
         [[outbound.services]]\nname = \"documentserver\"\naddresses = [{}]\nspiffe_id = \"{SERVER_ID}\"\n\
         [[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"documentserver\"\n\
         [resilience.services.documentserver.balance]\nstrategy = \"p2c-load\"\n{routes}",
        addrs.join(", ")
    );
    ProxyProcess::start(dir, name, &cfg, &["outbound.listeners[0].listen"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_document_reaches_one_replica_through_a_sidecar_pair() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca("example.org");
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        replicas.push(replica(name).await);
    }
    let mut server_cfg = identity_toml(dir.path(), "server", &svid(&ca, SERVER_ID), &ca);
    server_cfg.push_str("[inbound]\ntransparent = false\n");
    for (_, port) in &replicas {
        server_cfg.push_str(&format!(
            "[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {port}\n"
        ));
    }
    server_cfg.push_str("[outbound]\ntransparent = false\n");
    let fields = [
        "inbound.ports[0].listen",
        "inbound.ports[1].listen",
        "inbound.ports[2].listen",
    ];
    let server = ProxyProcess::start(dir.path(), "server", &server_cfg, &fields).await;
    let inbounds: Vec<String> = fields
        .iter()
        .map(|f| server.listening[*f].clone())
        .collect();
    std::fs::write(
        dir.path().join("client-identity.toml"),
        identity_toml(dir.path(), "client", &svid(&ca, CLIENT_ID), &ca),
    )
    .unwrap();

    // Sticky: the built-in OnlyOffice key (shardkey), no config needed.
    let client = client_sidecar(dir.path(), "client", &inbounds, "").await;
    let url = format!("http://{}", client.addr("outbound.listeners[0].listen"));
    let r = run_client(&url, 12).await;
    eprintln!("sticky: {r}");
    assert_eq!(r["errors"], Json::Array(vec![]), "no session was unknown");
    let docs = r["docs"].as_object().unwrap();
    assert_eq!(docs.len(), 12);
    let mut used = std::collections::BTreeSet::new();
    for (doc, seen) in docs {
        let seen = seen.as_array().unwrap();
        assert_eq!(seen.len(), 1, "{doc} reached {seen:?}");
        used.insert(seen[0].as_str().unwrap().to_owned());
    }
    assert!(
        used.len() >= 2,
        "documents spread over the replicas: {used:?}"
    );
    let transports = r["transports"].as_array().unwrap();
    assert_eq!(transports.iter().filter(|t| *t == "websocket").count(), 12);
    assert_eq!(transports.iter().filter(|t| *t == "polling").count(), 12);
    drop(client);

    // Hashing off: the same client meets sessions its replica does not know.
    let routes =
        "[[resilience.services.documentserver.routes]]\npath_prefix = \"/\"\nhash_key = []\n";
    let client = client_sidecar(dir.path(), "client-unsticky", &inbounds, routes).await;
    let url = format!("http://{}", client.addr("outbound.listeners[0].listen"));
    let r = run_client(&url, 2).await;
    eprintln!("hashing off: {r}");
    let spread = r["docs"]
        .as_object()
        .unwrap()
        .values()
        .any(|s| s.as_array().unwrap().len() > 1);
    let errors = r["errors"].as_array().unwrap().len();
    assert!(
        errors > 0 || spread,
        "without hashing the socket.io sessions should break: {r}"
    );
    eprintln!("hashing off: {errors} of 4 socket.io sessions failed");
}
