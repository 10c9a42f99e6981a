//! `docmesh-proxy await` as a process against a real admin server.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use docmesh_proxy::admin::{AdminServer, AdminState};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;

async fn admin(lifecycle: &Lifecycle) -> AdminServer {
    AdminServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        AdminState {
            lifecycle: lifecycle.clone(),
            metrics: Metrics::new(),
            identity: None,
        },
    )
    .await
    .unwrap()
}

fn await_cmd(addr: SocketAddr, timeout: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"));
    c.args(["await", "--admin", &addr.to_string(), "--timeout", timeout])
        .env_remove("DOCMESH_ADMIN_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn await_exits_0_once_the_proxy_is_ready() {
    let lifecycle = Lifecycle::new();
    lifecycle.register_gate("identity");
    let server = admin(&lifecycle).await;
    let child = await_cmd(server.local_addr(), "60s").spawn().unwrap();
    // The gate opens while `await` is polling.
    lifecycle.open_gate("identity");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("is ready"), "{stderr}");
}

#[tokio::test]
async fn await_times_out_naming_the_closed_gate() {
    let lifecycle = Lifecycle::new();
    lifecycle.register_gate("identity");
    let server = admin(&lifecycle).await;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        await_cmd(server.local_addr(), "1s").output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not ready after"), "{stderr}");
    assert!(stderr.contains("closed gates: identity"), "{stderr}");
}

#[tokio::test]
async fn await_rejects_a_bad_timeout() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
        .args(["await", "--timeout", "soon"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
}
