//! Shared setup for the data-path integration tests: stand-in apps (HTTP echo with WebSocket,
//! TCP echo, server-speaks-first banner), sidecar pairs on 127.0.0.1 port 0, clients, dev-CA
//! fixtures, `docmesh-proxy run` child processes (`process`) and pairs of them
//! (`process_pair`), and a TLS peer for `diagnose` (`tls_peer`).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use docmesh_proxy::config::inbound::{InboundConfig, InboundMode, InboundPortConfig};
use docmesh_proxy::config::outbound::{OutboundConfig, Protocol, ServiceConfig};
use docmesh_proxy::inbound::{Inbound, MeshServer};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::outbound::connect::MeshClient;
use docmesh_proxy::outbound::Outbound;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod process;
mod process_pair;
mod tls_peer;
// Not every test that includes `support` uses these.
#[allow(unused_imports)]
pub use process::{explicit_client_toml, explicit_server_toml, identity_toml, ProxyProcess};
#[allow(unused_imports)]
pub use process_pair::{
    admin_metrics, admin_samples, get_through, ProcessMesh, ProcessPair, FIRST_INBOUND,
    FIRST_OUTBOUND,
};
#[allow(unused_imports)]
pub use tls_peer::start_true_peer;

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs `f` with the test deadline.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("test step timed out")
}

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

// ---------------------------------------------------------------------------------------
// Stand-in apps

/// An HTTP/1.1 + h2c app: `/echo` streams the request body back; every response reports what
/// the app saw in `x-seen-*` headers; `/download?n=BYTES` streams BYTES bytes; a WebSocket
/// upgrade on `/ws` echoes frames and greets first.
pub async fn start_http_app() -> SocketAddr {
    serve_app(app_handler).await
}

/// Serves `handler` as an HTTP/1.1 + h2c app (upgrades allowed) on 127.0.0.1 port 0, a task
/// per connection, and returns its address: the accept loop of every stand-in HTTP app.
pub async fn serve_app<H, F, B>(handler: H) -> SocketAddr
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handler);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn app_handler(
    mut req: http::Request<Incoming>,
) -> Result<http::Response<TestBody>, Infallible> {
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default()
    };
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| seen("host"));
    let mut b = http::Response::builder()
        .header("x-seen-host", host)
        .header("x-seen-xfh", seen("x-forwarded-host"))
        .header("x-seen-xfp", seen("x-forwarded-proto"))
        .header("x-seen-version", format!("{:?}", req.version()))
        .header("x-seen-path", req.uri().path().to_owned())
        .header("x-seen-connection", seen("connection"))
        .header("x-seen-keepalive", seen("keep-alive"))
        .header("x-seen-custom-hop", seen("x-custom-hop"))
        .header("x-seen-orig-proto", seen("docmesh-orig-proto"));
    if req.uri().path() == "/ws" {
        let key = seen("sec-websocket-key");
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                ws_echo(TokioIo::new(up)).await;
            }
        });
        b = b
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", ws_accept(&key));
        return Ok(b.body(full(Bytes::new())).unwrap());
    }
    match req.uri().path() {
        "/echo" => Ok(b
            .body(req.into_body().map_err(|e| e.into()).boxed())
            .unwrap()),
        "/download" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok(b.header("content-length", n.to_string())
                .body(pattern_body(n))
                .unwrap())
        }
        _ => Ok(b.body(full("hello from the app")).unwrap()),
    }
}

/// A streamed body of `n` bytes (`0..=250` repeating), produced in 64 KiB chunks.
pub fn pattern_body(n: u64) -> TestBody {
    let chunk: Bytes = (0..65536u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let stream = futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= n {
                return None;
            }
            let len = (n - sent).min(chunk.len() as u64) as usize;
            let frame = hyper::body::Frame::data(chunk.slice(..len));
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(frame),
                sent + len as u64,
            ))
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// Sec-WebSocket-Accept for `key` (RFC 6455 §4.2.2).
pub fn ws_accept(key: &str) -> String {
    use base64::Engine;
    let mut data = key.as_bytes().to_vec();
    data.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC11D65");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &data);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Server side of a tiny WebSocket: greets with a text frame, then echoes every text frame
/// (payloads < 126 bytes) with an `echo: ` prefix until a close frame.
async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    if ws_write(&mut s, b"hello", false).await.is_err() {
        return;
    }
    loop {
        let Ok((op, payload)) = ws_read(&mut s).await else {
            return;
        };
        if op == 0x8 {
            let _ = s.write_all(&[0x88, 0x00]).await;
            return;
        }
        let mut reply = b"echo: ".to_vec();
        reply.extend_from_slice(&payload);
        if ws_write(&mut s, &reply, false).await.is_err() {
            return;
        }
    }
}

/// Writes one text frame (masked when `mask`, as clients must).
pub async fn ws_write<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
    mask: bool,
) -> std::io::Result<()> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, payload.len() as u8 | if mask { 0x80 } else { 0 }];
    if mask {
        let key = [0x12u8, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    s.write_all(&f).await
}

/// Reads one frame (payload < 126 bytes); returns opcode and unmasked payload.
pub async fn ws_read<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let masked = h[1] & 0x80 != 0;
    let len = (h[1] & 0x7f) as usize;
    let mut key = [0u8; 4];
    if masked {
        s.read_exact(&mut key).await?;
    }
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await?;
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((h[0] & 0x0f, p))
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TCP echo server that passes the client's half-close on (echo, then shut down writes).
pub async fn start_tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP relay to `target` that counts the connections it accepts (to observe pooling).
pub async fn start_counting_relay(
    target: SocketAddr,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    (addr, count)
}

/// A server-speaks-first app (like MySQL or SMTP): sends a banner on accept, then echoes.
pub async fn start_banner_server(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(banner).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// Sidecars

/// How to build a sidecar pair.
#[derive(Clone)]
pub struct PairOptions {
    pub mode: InboundMode,
    pub protocol: Protocol,
    pub outbound_mesh: MeshClient,
    pub inbound_mesh: MeshServer,
    pub detect_timeout: Duration,
    pub spiffe_id: String,
    /// `outbound.mesh_http2`: HTTP/1.x requests ride HTTP/2 between the sidecars.
    pub mesh_http2: bool,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            mode: InboundMode::Permissive,
            protocol: Protocol::Detect,
            outbound_mesh: MeshClient::Plaintext,
            inbound_mesh: MeshServer::Plaintext,
            detect_timeout: Duration::from_millis(200),
            spiffe_id: "spiffe://example.org/app".into(),
            mesh_http2: true,
        }
    }
}

/// An explicit-mode sidecar pair: client → `outbound` listener → (mesh hop) → inbound public
/// port → app.
pub struct Pair {
    /// Where the calling app connects (the explicit outbound listener).
    pub outbound: SocketAddr,
    /// The inbound sidecar's public port.
    pub inbound: SocketAddr,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
}

/// Starts an inbound sidecar for `app` and returns its public address.
pub async fn start_inbound(
    app: SocketAddr,
    opts: &PairOptions,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
) -> SocketAddr {
    let cfg = InboundConfig {
        transparent: false,
        mode: opts.mode,
        ports: vec![InboundPortConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            app_port: app.port(),
        }],
        ..InboundConfig::default()
    };
    let inbound = Inbound::new(&cfg, opts.inbound_mesh.clone(), lifecycle.clone(), metrics);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app_port = app.port();
    tokio::spawn(async move { inbound.serve_port(l, app_port).await });
    addr
}

/// Starts an outbound sidecar with one service `svc` at `addresses`; returns the explicit
/// listener address.
pub async fn start_outbound(
    addresses: Vec<String>,
    opts: &PairOptions,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
) -> SocketAddr {
    start_outbound_with(addresses, opts, lifecycle, metrics, None).await
}

/// Like [`start_outbound`], with the `[resilience]` section `resilience` (validated) installed.
pub async fn start_outbound_with(
    addresses: Vec<String>,
    opts: &PairOptions,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
    resilience: Option<&docmesh_proxy::config::resilience::ResilienceConfig>,
) -> SocketAddr {
    let cfg = OutboundConfig {
        transparent: false,
        detect_timeout: opts.detect_timeout,
        connect_timeout: Duration::from_secs(5),
        services: vec![ServiceConfig {
            name: "svc".into(),
            addresses,
            spiffe_id: opts.spiffe_id.clone(),
            protocol: opts.protocol,
            ..ServiceConfig::default()
        }],
        mesh_http2: opts.mesh_http2,
        ..OutboundConfig::default()
    };
    let outbound =
        Outbound::new(&cfg, opts.outbound_mesh.clone(), lifecycle.clone(), metrics).unwrap();
    if let Some(res) = resilience {
        res.validate().unwrap();
        outbound.set_resilience(res);
    }
    outbound.start(cfg.resolve_interval).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { outbound.serve_service(l, "svc").await.unwrap() });
    addr
}

impl Pair {
    /// A pair in front of `app`.
    pub async fn start(app: SocketAddr, opts: PairOptions) -> Pair {
        let lifecycle = Lifecycle::new();
        let metrics = Metrics::new();
        let inbound = start_inbound(app, &opts, &lifecycle, &metrics).await;
        let outbound = start_outbound(vec![inbound.to_string()], &opts, &lifecycle, &metrics).await;
        Pair {
            outbound,
            inbound,
            lifecycle,
            metrics,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients

pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// Sends a plaintext HTTP/1.1 GET to `addr` (an mTLS-only port) and asserts the connection
/// is closed or reset without an answer (`why` is the failure message).
pub async fn assert_plaintext_unanswered(addr: SocketAddr, why: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = bounded(s.read_to_end(&mut buf)).await;
    assert!(matches!(n, Ok(0)) || n.is_err(), "{why}");
}

/// Collects a response body as a string.
pub async fn text(resp: http::Response<Incoming>) -> String {
    let b = bounded(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

/// A WebSocket handshake (`GET path`, `Connection: Upgrade`, `Upgrade: websocket`, version 13,
/// `Sec-WebSocket-Key: key`) for `Host: documentserver`.
pub fn ws_request(path: &str, key: &str) -> http::Request<TestBody> {
    http::Request::get(path)
        .header("host", "documentserver")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", key)
        .body(full(Bytes::new()))
        .unwrap()
}

/// A GET request for `path` with `host`.
pub fn get(path: &str, host: &str) -> http::Request<TestBody> {
    http::Request::get(path)
        .header("host", host)
        .body(full(Bytes::new()))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// mTLS fixtures (dev CA from docmesh_certs::ca)

pub use docmesh_certs::ca::{CertificateAuthority, IssuedSvid, KeyAlgorithm};
use docmesh_certs::tls::{ExpectedPeer, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier};
pub use docmesh_certs::{SpiffeId, TrustBundleSet, TrustDomain};
use docmesh_proxy::inbound::ServerTls;
use docmesh_proxy::outbound::connect::ClientTls;
use docmesh_proxy::protocol::alpn;
use std::sync::Arc;

/// A dev CA for trust domain `td` (one day).
pub fn dev_ca(td: &str) -> CertificateAuthority {
    let td: TrustDomain = td.parse().unwrap();
    CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))
        .unwrap()
}

/// An SVID for `id` from `ca`, valid for an hour.
pub fn svid(ca: &CertificateAuthority, id: &str) -> IssuedSvid {
    ca.issue_svid(&id.parse().unwrap(), Duration::from_secs(3600))
        .unwrap()
}

/// An SVID for `id` that expired an hour ago.
pub fn expired_svid(ca: &CertificateAuthority, id: &str) -> IssuedSvid {
    let now = time::OffsetDateTime::now_utc();
    ca.issue_svid_with(
        &id.parse().unwrap(),
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    )
    .unwrap()
}

/// Minimal mesh TLS for tests that need what the production identity refuses to load (an
/// expired SVID): TLS 1.3, SPIFFE verifiers from docmesh_certs, one fixed SVID.
pub struct TestTls {
    svid: IssuedSvid,
    bundles: SharedBundles,
    server: Arc<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TestTls {
    /// Our SVID and the roots we trust.
    pub fn new(svid: IssuedSvid, trusted: &[&CertificateAuthority]) -> Arc<TestTls> {
        let mut pem = String::new();
        for ca in trusted {
            pem.push_str(ca.root_cert_pem());
        }
        let bundles = TrustBundleSet::from_pem_auto(pem.as_bytes(), None).unwrap();
        let bundles: SharedBundles = Arc::new(arc_swap::ArcSwap::from_pointee(bundles));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundles.clone())))
            .with_single_cert(svid.chain.clone(), svid.private_key())
            .unwrap();
        server.alpn_protocols = vec![alpn::H2.to_vec(), alpn::HTTP1.to_vec(), alpn::TCP.to_vec()];
        Arc::new(TestTls {
            svid,
            bundles,
            server: Arc::new(server),
        })
    }
}

impl ClientTls for TestTls {
    fn client_config(&self, expected: &SpiffeId, alpn: &'static [u8]) -> Arc<rustls::ClientConfig> {
        let verifier =
            SpiffeServerVerifier::new(self.bundles.clone(), ExpectedPeer::Exact(expected.clone()));
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.svid.chain.clone(), self.svid.private_key())
            .unwrap();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }
}

impl ServerTls for TestTls {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

/// The production identity (identity module) for `svid`, trusting the roots of `trusted`.
pub fn identity(
    svid: &IssuedSvid,
    trusted: &[&CertificateAuthority],
) -> Arc<docmesh_proxy::identity::Identity> {
    let mut pem = String::new();
    for ca in trusted {
        pem.push_str(ca.root_cert_pem());
    }
    Arc::new(
        docmesh_proxy::identity::Identity::from_pem(
            svid.cert_chain_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            pem.as_bytes(),
        )
        .unwrap(),
    )
}

pub const CLIENT_ID: &str = "spiffe://example.org/ns/oo/sa/integrator";
pub const SERVER_ID: &str = "spiffe://example.org/ns/oo/sa/documentserver";

/// Options for an mTLS pair: the client sidecar has `client`, the server sidecar `server`;
/// the outbound expects SERVER_ID.
pub fn mtls_options<C: ClientTls, S: ServerTls>(client: Arc<C>, server: Arc<S>) -> PairOptions {
    PairOptions {
        mode: InboundMode::Strict,
        outbound_mesh: MeshClient::Mtls(client),
        inbound_mesh: MeshServer::Mtls(server),
        spiffe_id: SERVER_ID.into(),
        ..PairOptions::default()
    }
}

/// Options for a healthy mTLS pair from one CA, with the production identity module.
pub fn healthy_mtls(ca: &CertificateAuthority) -> PairOptions {
    mtls_options(
        identity(&svid(ca, CLIENT_ID), &[ca]),
        identity(&svid(ca, SERVER_ID), &[ca]),
    )
}
