//! The drain end to end, through `app::run` as `docmesh-proxy run` uses it: a request in
//! flight when `POST /shutdown` arrives still completes, `/ready` says "draining" meanwhile,
//! and the sidecar stops by itself once the request is done.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_proxy::config::Config;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

const CLIENT: &str = "spiffe://drain.test/ns/a/sa/client";
const SERVER: &str = "spiffe://drain.test/ns/a/sa/server";

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("bounded wait")
}

/// An app whose answers wait until the test releases them; reports each arrival.
async fn slow_app(release: Arc<Notify>, arrived: mpsc::UnboundedSender<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (release, arrived) = (release.clone(), arrived.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (release, arrived) = (release.clone(), arrived.clone());
                    async move {
                        let _ = arrived.send(());
                        release.notified().await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_ports(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn write_svid(dir: &Path, ca: &CertificateAuthority, name: &str, id: &str) {
    let s = ca
        .issue_svid(&id.parse().unwrap(), Duration::from_secs(3600))
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), s.cert_chain_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), s.key_pem).unwrap();
}

fn config(dir: &Path, name: &str, body: &str) -> Config {
    let p = |f: &str| dir.join(f).display().to_string();
    let text = format!(
        "[identity]\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\n{body}\n\
         [observability.access_log]\nenabled = false\n",
        p(&format!("{name}.pem")),
        p(&format!("{name}.key")),
        p("bundle.pem"),
    );
    Config::from_parts(Some(&text), Path::new(name), std::iter::empty()).unwrap()
}

async fn admin(addr: SocketAddr, method: http::Method, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn post_shutdown_lets_the_in_flight_request_finish_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate(
        &"drain.test".parse().unwrap(),
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86_400),
    )
    .unwrap();
    std::fs::write(dir.path().join("bundle.pem"), ca.root_cert_pem()).unwrap();
    write_svid(dir.path(), &ca, "client", CLIENT);
    write_svid(dir.path(), &ca, "server", SERVER);

    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let app = slow_app(release.clone(), arrived_tx).await;
    let [client_admin, server_admin, server_in, client_out] = free_ports(4)[..] else {
        unreachable!()
    };
    let server = config(
        dir.path(),
        "server",
        &format!(
            "[admin]\nlisten = \"{server_admin}\"\ndrain_grace_period = \"30s\"\n\
             [inbound]\ntransparent = false\n[[inbound.ports]]\nlisten = \"{server_in}\"\napp_port = {}\n\
             [outbound]\ntransparent = false\n",
            app.port()
        ),
    );
    let client = config(
        dir.path(),
        "client",
        &format!(
            "[admin]\nlisten = \"{client_admin}\"\n[inbound]\ntransparent = false\n\
             [outbound]\ntransparent = false\n\
             [[outbound.services]]\nname = \"server\"\naddresses = [\"{server_in}\"]\nspiffe_id = \"{SERVER}\"\nprotocol = \"http1\"\n\
             [[outbound.listeners]]\nlisten = \"{client_out}\"\nservice = \"server\"\n"
        ),
    );
    let server_task = tokio::spawn(docmesh_proxy::app::run(server));
    let client_task = tokio::spawn(docmesh_proxy::app::run(client));
    for a in [server_admin, client_admin] {
        bounded(docmesh_proxy::admin::ready::await_ready(
            a,
            Duration::from_secs(10),
            Duration::from_millis(20),
        ))
        .await
        .unwrap();
    }

    // A request that the app holds.
    let in_flight = tokio::spawn(async move {
        let s = TcpStream::connect(client_out).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/slow")
            .header(http::header::HOST, "server")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    bounded(arrived.recv()).await.unwrap();

    // Drain the server sidecar while the request is in flight.
    assert_eq!(
        admin(server_admin, http::Method::POST, "/shutdown").await.0,
        202
    );
    let (status, body) = admin(server_admin, http::Method::GET, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining (POST /shutdown)"), "{body}");
    assert!(
        !server_task.is_finished(),
        "the drain waits for the in-flight request"
    );

    // The app answers: the request completes and the sidecar stops by itself.
    release.notify_one();
    let (status, body) = bounded(in_flight).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"done"[..]));
    bounded(server_task).await.unwrap().unwrap();

    assert_eq!(
        admin(client_admin, http::Method::POST, "/shutdown").await.0,
        202
    );
    bounded(client_task).await.unwrap().unwrap();
}
