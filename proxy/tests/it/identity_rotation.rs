//! A CA change under sustained traffic, with the files identity source on both sidecars
//! (outbound → mTLS → inbound → app, real sockets): bundles gain the new root, both SVIDs
//! rotate to the new CA, the old root is removed. Requests run the whole time: none fails.
//! Afterwards an old SVID is refused (`tls-untrusted-peer` where we verify a server,
//! `tls-rejected-by-peer` where the server refuses us).

use crate::limits_support;
use crate::support;
#[allow(dead_code)]
#[path = "../../src/identity/tests/workload_server.rs"]
mod workload_server;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::limits_support::{
    dev_ca, start_inbound, InboundOptions, RecordingApp, Sidecar, DEADLINE,
};
use crate::support::{full, h1_client, PairOptions, CLIENT_ID, SERVER_ID};
use docmesh_certs::ca::{CertificateAuthority, IssuedSvid};
use docmesh_proxy::config::identity::{IdentityConfig, IdentitySource};
use docmesh_proxy::config::inbound::InboundMode;
use docmesh_proxy::identity::Identity;
use docmesh_proxy::inbound::MeshServer;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::outbound::connect::MeshClient;
use tokio::net::{TcpListener, TcpStream};
use workload_server::{WorkloadApiServer, X509Svid, X509SvidResponse};

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

/// A strict inbound sidecar with `server` in front of `app` and an outbound with `client`
/// towards it; one request through both must pass. Returns (inbound, outbound listener).
async fn mtls_hop(
    app: SocketAddr,
    server: Arc<Identity>,
    client: Arc<Identity>,
) -> (Sidecar, SocketAddr) {
    let inbound = start_inbound(
        app,
        InboundOptions {
            mode: InboundMode::Strict,
            mesh: MeshServer::Mtls(server),
            ..InboundOptions::default()
        },
    )
    .await;
    let outbound = outbound_to(inbound.addr, MeshClient::Mtls(client)).await;
    assert_eq!(one_request(outbound).await, (200, String::new()));
    (inbound, outbound)
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

/// Sustained traffic through an outbound listener: two downstream connections sending
/// requests back to back, the second reconnecting every 10 requests (pooled mesh connections
/// and fresh handshakes both happen during a rotation). Every request must get a 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(outbound: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for worker in 0..2 {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
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
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits (bounded) until `n` more requests passed, or one failed.
    async fn more(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        tokio::time::timeout(DEADLINE, async {
            while self.ok.load(Ordering::Relaxed) < target
                && self.failed.load(Ordering::Relaxed) == 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the load must keep passing requests");
    }

    /// Some more traffic on the final state, then stops; asserts that no request failed.
    async fn finish(self) {
        self.more(20).await;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
        }
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        assert_eq!(failed, 0, "no request may fail during the rotation");
        eprintln!("{ok} requests passed during the rotation");
        assert!(ok >= 20);
    }
}

/// A server and a client that still hold old-CA SVIDs (both trusting old and new roots).
/// Each completes a request with the sidecars under test while the old root is still trusted,
/// so TLS session tickets from that time exist on both sides.
struct StalePeers {
    server: Sidecar,
    client: Arc<Identity>,
    /// Our outbound (the rotating client identity) with a pooled connection to `server`
    /// from before the old root was removed.
    pooled_to_stale: SocketAddr,
    /// The stale client's outbound, with a pooled connection to our inbound from before the
    /// old root was removed.
    pooled_from_stale: SocketAddr,
}

impl StalePeers {
    async fn connect(
        app: SocketAddr,
        old: &CertificateAuthority,
        new: &CertificateAuthority,
        client: &Identity,
        inbound: SocketAddr,
    ) -> StalePeers {
        let stale_server = limits_support::identity_for(old, SERVER_ID, &[old, new]);
        let (server, to_stale) = mtls_hop(app, stale_server, Arc::new(client.clone())).await;
        let stale = limits_support::identity_for(old, CLIENT_ID, &[old, new]);
        let from_stale = outbound_to(inbound, MeshClient::Mtls(stale.clone())).await;
        assert_eq!(one_request(from_stale).await, (200, String::new()));
        StalePeers {
            server,
            client: stale,
            pooled_to_stale: to_stale,
            pooled_from_stale: from_stale,
        }
    }

    /// Once the old root is gone, new connections (fresh outbound sidecars, same identities,
    /// so earlier session tickets are offered) are refused in both directions.
    async fn assert_refused(&self, client: &Identity, inbound: SocketAddr) {
        assert_eq!(
            one_request(self.pooled_to_stale).await,
            (502, "tls-untrusted-peer".into()),
            "a mesh connection verified before the old root was removed is not reused"
        );
        assert_eq!(
            one_request(self.pooled_from_stale).await,
            (502, "tls-rejected-by-peer".into()),
            "our inbound closed the stale client's connection when the old root went away"
        );
        let to_stale =
            outbound_to(self.server.addr, MeshClient::Mtls(Arc::new(client.clone()))).await;
        assert_eq!(
            one_request(to_stale).await,
            (502, "tls-untrusted-peer".into()),
            "our bundle no longer holds the old root"
        );
        let from_stale = outbound_to(inbound, MeshClient::Mtls(self.client.clone())).await;
        assert_eq!(
            one_request(from_stale).await,
            (502, "tls-rejected-by-peer".into()),
            "the rotated server no longer trusts the old root"
        );
    }
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
    let (inbound, outbound) =
        mtls_hop(app.addr, Arc::new(server.clone()), Arc::new(client.clone())).await;
    let load = Load::start(outbound);

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
    // Peers still on the old CA connect while the old root is trusted.
    let stale = StalePeers::connect(app.addr, &old, &new, &client, inbound.addr).await;
    // 3. The old root goes away.
    write_bundle(cdir.path(), &[&new]);
    write_bundle(sdir.path(), &[&new]);
    wait_rotations(&client, 3).await;
    wait_rotations(&server, 3).await;
    load.finish().await;
    assert_eq!(one_request(outbound).await, (200, String::new()));

    stale.assert_refused(&client, inbound.addr).await;
}

// ---------------------------------------------------------------------------------------
// The Workload API source: the in-test Workload API server of the identity module's tests.

fn wl_cfg(server: &WorkloadApiServer) -> IdentityConfig {
    IdentityConfig {
        source: IdentitySource::WorkloadApi,
        workload_api_socket: Some(server.endpoint()),
        startup_timeout: Duration::from_secs(10),
        ..IdentityConfig::default()
    }
}

/// An `X509SVIDResponse` with `svid` and the trust domain's bundle made of `roots`.
fn wl_response(svid: &IssuedSvid, roots: &[&CertificateAuthority]) -> X509SvidResponse {
    X509SvidResponse {
        svids: vec![X509Svid {
            spiffe_id: svid.id.to_string(),
            x509_svid: svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.key_der.clone(),
            bundle: roots
                .iter()
                .flat_map(|ca| ca.root_cert_der().to_vec())
                .collect(),
            hint: String::new(),
        }],
        ..Default::default()
    }
}

fn issue(ca: &CertificateAuthority, id: &str) -> IssuedSvid {
    ca.issue_svid(&id.parse().unwrap(), Duration::from_secs(3600))
        .unwrap()
}

/// Publishes `resp` and waits until `identity` has installed it (rotation count `n`).
async fn push(server: &WorkloadApiServer, identity: &Identity, resp: X509SvidResponse, n: u64) {
    server.publish(resp);
    wait_rotations(identity, n).await;
}

/// A mesh server (with the identity under test as its TLS config) that records the leaf
/// certificate the client of every connection is known by, and answers HTTP with 200.
struct ClientCertRecorder {
    addr: SocketAddr,
    leaves: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ClientCertRecorder {
    async fn start(server: &Identity) -> ClientCertRecorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let leaves: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
        let seen = leaves.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        seen.lock().unwrap().push(leaf.to_vec());
                    }
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        ClientCertRecorder { addr, leaves }
    }

    /// The serial of the leaf `client` presents on a new mesh connection (a fresh outbound sidecar, so no
    /// pooled connection is reused; the identity's TLS session cache is).
    async fn presented_by(&self, client: &Identity) -> String {
        let outbound = outbound_to(self.addr, MeshClient::Mtls(Arc::new(client.clone()))).await;
        let before = self.leaves.lock().unwrap().len();
        assert_eq!(one_request(outbound).await, (200, String::new()));
        let leaves = self.leaves.lock().unwrap();
        assert_eq!(leaves.len(), before + 1, "one new mesh connection");
        serial_of(&leaves[before])
    }
}

/// The serial of the leaf the server at `addr` presents on a new TLS connection, seen by a fresh probe
/// client with an SVID from `ca` (trusting `roots`).
async fn server_leaf(
    addr: SocketAddr,
    ca: &CertificateAuthority,
    roots: &[&CertificateAuthority],
) -> String {
    let probe = limits_support::identity_for(ca, "spiffe://example.org/ns/oo/sa/probe", roots);
    let cfg = probe.client_config(&SERVER_ID.parse().unwrap(), &[b"http/1.1"]);
    let s = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(cfg).connect(name, s),
    )
    .await
    .unwrap()
    .unwrap();
    serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

/// The serial number (hex) of a DER certificate.
fn serial_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
        .raw_serial_as_string()
}

/// The serial number (hex) of an issued SVID's leaf.
fn serial(svid: &IssuedSvid) -> String {
    serial_of(&svid.chain[0])
}

#[tokio::test]
async fn workload_api_svid_and_ca_rotation_under_sustained_traffic_fails_no_request() {
    let old = dev_ca("example.org");
    let new = dev_ca("example.org");
    let dir = tempfile::tempdir().unwrap();
    let mut c_svid = issue(&old, CLIENT_ID);
    let mut s_svid = issue(&old, SERVER_ID);
    let c_agent = WorkloadApiServer::start(
        &dir.path().join("client-agent.sock"),
        wl_response(&c_svid, &[&old]),
    );
    let s_agent = WorkloadApiServer::start(
        &dir.path().join("server-agent.sock"),
        wl_response(&s_svid, &[&old]),
    );
    let lifecycle = Lifecycle::new();
    let client = Identity::start(&wl_cfg(&c_agent), &lifecycle)
        .await
        .unwrap();
    let server = Identity::start(&wl_cfg(&s_agent), &lifecycle)
        .await
        .unwrap();
    assert_eq!(client.svid_info().source, "workload-api");
    let app = RecordingApp::start().await;
    let (inbound, outbound) =
        mtls_hop(app.addr, Arc::new(server.clone()), Arc::new(client.clone())).await;
    let recorder = ClientCertRecorder::start(&server).await;
    assert_eq!(recorder.presented_by(&client).await, serial(&c_svid));
    assert_eq!(
        server_leaf(inbound.addr, &old, &[&old]).await,
        serial(&s_svid)
    );
    let load = Load::start(outbound);

    // 1. New SVIDs from the same CA, streamed by the agents.
    c_svid = issue(&old, CLIENT_ID);
    push(&c_agent, &client, wl_response(&c_svid, &[&old]), 1).await;
    s_svid = issue(&old, SERVER_ID);
    push(&s_agent, &server, wl_response(&s_svid, &[&old]), 1).await;
    load.more(10).await;
    assert_eq!(recorder.presented_by(&client).await, serial(&c_svid));
    assert_eq!(
        server_leaf(inbound.addr, &old, &[&old]).await,
        serial(&s_svid)
    );

    // 2. A CA change: the bundles gain the new root, the SVIDs move to the new CA (one side at
    //    a time), then the old root is removed.
    push(&c_agent, &client, wl_response(&c_svid, &[&old, &new]), 2).await;
    push(&s_agent, &server, wl_response(&s_svid, &[&old, &new]), 2).await;
    load.more(10).await;
    c_svid = issue(&new, CLIENT_ID);
    push(&c_agent, &client, wl_response(&c_svid, &[&old, &new]), 3).await;
    load.more(10).await;
    s_svid = issue(&new, SERVER_ID);
    push(&s_agent, &server, wl_response(&s_svid, &[&old, &new]), 3).await;
    load.more(10).await;
    assert_eq!(recorder.presented_by(&client).await, serial(&c_svid));
    assert_eq!(
        server_leaf(inbound.addr, &new, &[&new]).await,
        serial(&s_svid)
    );
    let stale = StalePeers::connect(app.addr, &old, &new, &client, inbound.addr).await;
    push(&c_agent, &client, wl_response(&c_svid, &[&new]), 4).await;
    push(&s_agent, &server, wl_response(&s_svid, &[&new]), 4).await;
    load.finish().await;
    assert_eq!(one_request(outbound).await, (200, String::new()));
    assert_eq!(recorder.presented_by(&client).await, serial(&c_svid));
    assert_eq!(
        server.svid_info().trust_domains,
        vec!["example.org".to_string()]
    );

    // Old-CA SVIDs are refused now, in both directions, even by peers that hold a TLS
    // session from before.
    stale.assert_refused(&client, inbound.addr).await;
}
