//! A CA change under sustained traffic, with the files identity source on both sidecars
//! (outbound → mTLS → inbound → app, real sockets): bundles gain the new root, both SVIDs
//! rotate to the new CA, the old root is removed. Requests run the whole time: none fails.
//! Afterwards an old SVID is refused (`tls-untrusted-peer` where we verify a server,
//! `tls-rejected-by-peer` where the server refuses us).

mod harden_support;
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use docmesh_certs::ca::CertificateAuthority;
use docmesh_proxy::config::identity::{IdentityConfig, IdentitySource};
use docmesh_proxy::config::inbound::InboundMode;
use docmesh_proxy::identity::Identity;
use docmesh_proxy::inbound::MeshServer;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::outbound::connect::MeshClient;
use harden_support::{dev_ca, start_inbound, InboundOptions, RecordingApp, DEADLINE};
use support::{full, h1_client, PairOptions, CLIENT_ID, SERVER_ID};

fn files_cfg(dir: &Path) -> IdentityConfig {
    IdentityConfig {
        source: IdentitySource::Files,
        cert: dir.join("svid.pem"),
        key: dir.join("svid.key"),
        bundle: dir.join("bundle.pem"),
        reload_interval: Duration::from_millis(20),
        startup_timeout: Duration::from_secs(10),
        ..IdentityConfig::default()
    }
}

fn write_svid(dir: &Path, ca: &CertificateAuthority, id: &str) {
    let s = ca
        .issue_svid(&id.parse().unwrap(), Duration::from_secs(3600))
        .unwrap();
    // Key first, then the certificate: the watcher refuses a mismatched pair until both
    // files are there, so the old pair stays in use in between.
    std::fs::write(dir.join("svid.key"), &s.key_pem).unwrap();
    std::fs::write(dir.join("svid.pem"), &s.cert_chain_pem).unwrap();
}

fn write_bundle(dir: &Path, roots: &[&CertificateAuthority]) {
    let pem: String = roots.iter().map(|c| c.root_cert_pem()).collect();
    std::fs::write(dir.join("bundle.pem"), pem).unwrap();
}

/// Waits until `identity` has installed `n` changes (SVID or bundle).
async fn wait_rotations(identity: &Identity, n: u64) {
    let mut rx = identity.rotations();
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| *v >= n))
        .await
        .expect("the files watcher must pick up the change")
        .unwrap();
}

/// An outbound sidecar with `mesh` towards `inbound`; returns its listener.
async fn outbound_to(inbound: std::net::SocketAddr, mesh: MeshClient) -> std::net::SocketAddr {
    let opts = PairOptions {
        mode: InboundMode::Strict,
        outbound_mesh: mesh,
        spiffe_id: SERVER_ID.into(),
        ..PairOptions::default()
    };
    support::start_outbound(
        vec![inbound.to_string()],
        &opts,
        &Lifecycle::new(),
        &Metrics::new(),
    )
    .await
}

/// One GET through `outbound` on a new connection: (status, docmesh-error).
async fn one_request(outbound: std::net::SocketAddr) -> (u16, String) {
    let mut c = h1_client(outbound).await;
    let req = http::Request::get("/doc")
        .header("host", "documentserver")
        .body(full(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, c.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let cause = resp
        .headers()
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), cause)
}

#[tokio::test]
async fn ca_rotation_under_sustained_traffic_fails_no_request_and_then_refuses_old_svids() {
    let old = dev_ca("example.org");
    let new = dev_ca("example.org");
    let (cdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, id) in [(cdir.path(), CLIENT_ID), (sdir.path(), SERVER_ID)] {
        write_svid(dir, &old, id);
        write_bundle(dir, &[&old]);
    }
    let lifecycle = Lifecycle::new();
    let client = Identity::start(&files_cfg(cdir.path()), &lifecycle)
        .await
        .unwrap();
    let server = Identity::start(&files_cfg(sdir.path()), &lifecycle)
        .await
        .unwrap();
    let app = RecordingApp::start().await;
    let inbound = start_inbound(
        app.addr,
        InboundOptions {
            mode: InboundMode::Strict,
            mesh: MeshServer::Mtls(Arc::new(server.clone())),
            ..InboundOptions::default()
        },
    )
    .await;
    let outbound = outbound_to(inbound.addr, MeshClient::Mtls(Arc::new(client.clone()))).await;
    assert_eq!(one_request(outbound).await, (200, String::new()));

    // Sustained traffic: two connections sending requests back to back (pooled mesh
    // connections and fresh handshakes both happen during the rotation).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut c = h1_client(outbound).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if worker == 1 && n.is_multiple_of(10) {
                    // A new downstream connection now and then.
                    c = h1_client(outbound).await;
                }
                let req = http::Request::get(format!("/load/{worker}/{n}"))
                    .header("host", "documentserver")
                    .body(full(bytes::Bytes::new()))
                    .unwrap();
                match tokio::time::timeout(DEADLINE, c.send_request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("request failed during rotation: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // 1. Both bundles gain the new root.
    write_bundle(cdir.path(), &[&old, &new]);
    write_bundle(sdir.path(), &[&old, &new]);
    wait_rotations(&client, 1).await;
    wait_rotations(&server, 1).await;
    // 2. Both SVIDs move to the new CA (one side at a time, as in a real rollout).
    write_svid(cdir.path(), &new, CLIENT_ID);
    wait_rotations(&client, 2).await;
    write_svid(sdir.path(), &new, SERVER_ID);
    wait_rotations(&server, 2).await;
    // 3. The old root goes away.
    write_bundle(cdir.path(), &[&new]);
    write_bundle(sdir.path(), &[&new]);
    wait_rotations(&client, 3).await;
    wait_rotations(&server, 3).await;
    // Some more traffic on the final state.
    let target = ok.load(Ordering::Relaxed) + 20;
    tokio::time::timeout(DEADLINE, async {
        while ok.load(Ordering::Relaxed) < target && failed.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during the rotation"
    );
    eprintln!(
        "{} requests passed during the rotation",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) >= 20);
    assert_eq!(one_request(outbound).await, (200, String::new()));

    // An old SVID is refused now, in both directions.
    let stale_server = harden_support::identity_for(&old, SERVER_ID, &[&old, &new]);
    let stale_inbound = start_inbound(
        app.addr,
        InboundOptions {
            mode: InboundMode::Strict,
            mesh: MeshServer::Mtls(stale_server),
            ..InboundOptions::default()
        },
    )
    .await;
    let to_stale = outbound_to(
        stale_inbound.addr,
        MeshClient::Mtls(Arc::new(client.clone())),
    )
    .await;
    assert_eq!(
        one_request(to_stale).await,
        (502, "tls-untrusted-peer".into()),
        "our bundle no longer holds the old root"
    );
    let stale_client = harden_support::identity_for(&old, CLIENT_ID, &[&old, &new]);
    let from_stale = outbound_to(inbound.addr, MeshClient::Mtls(stale_client)).await;
    assert_eq!(
        one_request(from_stale).await,
        (502, "tls-rejected-by-peer".into()),
        "the rotated server no longer trusts the old root"
    );
}
