//! Shared setup for the hardening tests: an app that records exactly the bytes and requests it
//! receives, an inbound sidecar with `[limits]` and `[authz]`, and raw-socket clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use docmesh_proxy::authz::Authorizer;
use docmesh_proxy::config::inbound::{InboundConfig, InboundMode, InboundPortConfig};
use docmesh_proxy::config::limits::LimitsConfig;
use docmesh_proxy::inbound::{Inbound, MeshServer};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::limits::Limits;
use docmesh_proxy::metrics::Metrics;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in a test is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `f` with the test deadline.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("test step did not finish within the deadline")
}

/// One request as the app parsed it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The values of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An HTTP/1.1 app that records every byte it reads and every request it parsed; answers
/// `200 ok` (with the body length it read in `x-app-body-len`).
#[derive(Clone)]
pub struct RecordingApp {
    pub addr: SocketAddr,
    pub raw: Arc<Mutex<Vec<u8>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingApp {
    pub async fn start() -> RecordingApp {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = RecordingApp {
            addr: l.local_addr().unwrap(),
            raw: Arc::default(),
            seen: Arc::default(),
        };
        let a = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let io = Recorder {
                    inner: s,
                    raw: a.raw.clone(),
                };
                let seen = a.seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                                let body = body.unwrap_or_default();
                                let len = body.len();
                                seen.lock().unwrap().push(Seen {
                                    method: parts.method.to_string(),
                                    uri: parts.uri.to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(k, v)| {
                                            (
                                                k.to_string(),
                                                String::from_utf8_lossy(v.as_bytes()).into(),
                                            )
                                        })
                                        .collect(),
                                    body,
                                });
                                let resp = http::Response::builder()
                                    .header("x-app-body-len", len)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(TokioIo::new(io), svc)
                    .await;
                });
            }
        });
        app
    }

    /// The requests the app parsed so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Everything the app read so far, as text.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
}

struct Recorder {
    inner: TcpStream,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled()[before..].to_vec();
            self.raw.lock().unwrap().extend_from_slice(&new);
        }
        r
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An inbound sidecar on 127.0.0.1 port 0 in front of `app`.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
}

/// Options of [`start_inbound`].
#[derive(Clone)]
pub struct InboundOptions {
    pub mode: InboundMode,
    pub mesh: MeshServer,
    pub limits: LimitsConfig,
    pub authz: Option<Arc<Authorizer>>,
    pub handshake_timeout: Duration,
}

impl Default for InboundOptions {
    fn default() -> Self {
        InboundOptions {
            mode: InboundMode::Permissive,
            mesh: MeshServer::Plaintext,
            limits: LimitsConfig::default(),
            authz: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Starts an inbound sidecar for `app` with `opts`.
pub async fn start_inbound(app: SocketAddr, opts: InboundOptions) -> Sidecar {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let cfg = InboundConfig {
        transparent: false,
        mode: opts.mode,
        handshake_timeout: opts.handshake_timeout,
        detect_timeout: Duration::from_millis(200),
        ports: vec![InboundPortConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            app_port: app.port(),
        }],
        ..InboundConfig::default()
    };
    let inbound = Inbound::new(&cfg, opts.mesh.clone(), lifecycle.clone(), &metrics);
    let limits = Limits::new(&opts.limits);
    limits.register_metrics(&metrics);
    inbound.set_limits(limits);
    if let Some(a) = opts.authz {
        inbound.set_authorizer(a);
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app_port = app.port();
    tokio::spawn(async move { inbound.serve_port(l, app_port).await });
    Sidecar {
        addr,
        metrics,
        lifecycle,
    }
}

/// Sends `bytes` on a new connection and reads until the proxy closes it (bounded).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

/// Reads until EOF or a reset (bounded by the deadline); returns what was read.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    bounded(async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text` (0 when there is none).
pub fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A normal request through `addr` succeeds (the proxy keeps serving).
pub async fn still_serving(addr: SocketAddr) {
    let text = raw_exchange(
        addr,
        b"GET /health HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&text),
        200,
        "normal traffic must still pass: {text}"
    );
}

/// The value of a Prometheus sample line starting with `prefix` in `metrics` (0 if absent).
pub fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    let text = metrics.encode().unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A dev CA for trust domain `td` (one day).
pub fn dev_ca(td: &str) -> docmesh_certs::ca::CertificateAuthority {
    docmesh_certs::ca::CertificateAuthority::generate(
        &td.parse().unwrap(),
        docmesh_certs::ca::KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400),
    )
    .unwrap()
}

/// The production identity for an SVID `id` from `ca`, trusting the roots of `trusted`.
pub fn identity_for(
    ca: &docmesh_certs::ca::CertificateAuthority,
    id: &str,
    trusted: &[&docmesh_certs::ca::CertificateAuthority],
) -> Arc<docmesh_proxy::identity::Identity> {
    let svid = ca
        .issue_svid(&id.parse().unwrap(), Duration::from_secs(3600))
        .unwrap();
    let bundle: String = trusted.iter().map(|c| c.root_cert_pem()).collect();
    Arc::new(
        docmesh_proxy::identity::Identity::from_pem(
            svid.cert_chain_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            bundle.as_bytes(),
        )
        .unwrap(),
    )
}

/// An explicit outbound listener (the local app is its client) for one plaintext-mesh service
/// `svc` at `upstream` (an inbound sidecar or any HTTP server), with `limits`.
pub async fn start_outbound(
    upstream: SocketAddr,
    protocol: docmesh_proxy::config::outbound::Protocol,
    limits: LimitsConfig,
) -> Sidecar {
    use docmesh_proxy::config::outbound::{OutboundConfig, ServiceConfig};
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let cfg = OutboundConfig {
        transparent: false,
        detect_timeout: Duration::from_millis(200),
        services: vec![ServiceConfig {
            name: "svc".into(),
            addresses: vec![upstream.to_string()],
            spiffe_id: "spiffe://example.org/app".into(),
            protocol,
            ..ServiceConfig::default()
        }],
        ..OutboundConfig::default()
    };
    let outbound = docmesh_proxy::outbound::Outbound::new(
        &cfg,
        docmesh_proxy::outbound::connect::MeshClient::Plaintext,
        lifecycle.clone(),
        &metrics,
    )
    .unwrap();
    let limits = Limits::new(&limits);
    limits.register_metrics(&metrics);
    outbound.set_limits(limits);
    outbound.start(cfg.resolve_interval).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { outbound.serve_service(l, "svc").await.unwrap() });
    Sidecar {
        addr,
        metrics,
        lifecycle,
    }
}

/// Asserts that `text` starts with a response of `status` and contains every one of `parts`
/// (a cause, a detail); on failure shows the whole answer.
pub fn assert_answer(text: &str, status: u16, parts: &[&str]) {
    assert_eq!(status_of(text), status, "{text}");
    for p in parts {
        assert!(text.contains(p), "no {p:?} in: {text}");
    }
}

/// Sends `bytes` on a new connection (as [`raw_exchange`]) and checks the answer as
/// [`assert_answer`] does; returns it for further checks.
pub async fn expect_answer(addr: SocketAddr, bytes: &[u8], status: u16, parts: &[&str]) -> String {
    let text = raw_exchange(addr, bytes).await;
    assert_answer(&text, status, parts);
    text
}

/// The status codes of every HTTP/1.1 response in `text`, in order (keep-alive answers).
pub fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

/// How many requests `metrics` counts as rejected by a limit with `cause`.
pub fn rejections(metrics: &Metrics, cause: &str) -> f64 {
    metric(
        metrics,
        &format!("docmesh_limit_rejections_total{{cause=\"{cause}\"}}"),
    )
}
