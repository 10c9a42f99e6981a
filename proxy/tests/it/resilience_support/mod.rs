//! Misbehaving upstreams on 127.0.0.1 for the resilience integration tests, and a stack builder.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use docmesh_proxy::resilience::endpoint::{plain_client, HyperEndpoint, NewHyperEndpoint};
use docmesh_proxy::resilience::policy::ServicePolicy;
use docmesh_proxy::resilience::ServiceStack;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The stack type the tests drive.
pub type Stack = ServiceStack<NewHyperEndpoint<HttpConnector>, Incoming>;

/// Builds a stack over plaintext loopback endpoints.
pub fn stack(policy: ServicePolicy, addrs: &[SocketAddr]) -> Stack {
    let client = plain_client(&policy.default_route.timeouts);
    ServiceStack::new(policy, NewHyperEndpoint::new(client), addrs)
}

/// Builds a stack that reports to `observer`.
pub fn stack_observed(
    policy: ServicePolicy,
    addrs: &[SocketAddr],
    observer: Arc<Recorder>,
) -> Stack {
    let client = plain_client(&policy.default_route.timeouts);
    ServiceStack::observed(policy, NewHyperEndpoint::new(client), addrs, observer)
}

/// An observer that records every event.
#[derive(Default)]
pub struct Recorder {
    pub retries: AtomicUsize,
    pub budget_exhausted: AtomicUsize,
    pub circuits:
        std::sync::Mutex<Vec<(SocketAddr, docmesh_proxy::resilience::breaker::CircuitState)>>,
}

impl docmesh_proxy::resilience::observer::Observer for Recorder {
    fn retry(&self, _: &str) {
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
    fn budget_exhausted(&self, _: &str) {
        self.budget_exhausted.fetch_add(1, Ordering::SeqCst);
    }
    fn circuit(
        &self,
        _: &str,
        ep: SocketAddr,
        to: docmesh_proxy::resilience::breaker::CircuitState,
    ) {
        self.circuits.lock().unwrap().push((ep, to));
    }
}

/// A policy with fast backoffs and no jitter surprises, for tests.
pub fn policy(name: &str) -> ServicePolicy {
    let mut p = ServicePolicy::new(name);
    let mut r = (*p.default_route).clone();
    r.retry.backoff_base = Duration::from_millis(1);
    r.retry.backoff_max = Duration::from_millis(5);
    r.timeouts.connect = Duration::from_secs(2);
    p.default_route = Arc::new(r);
    p
}

/// Changes the default route in place.
pub fn with_route(
    p: &mut ServicePolicy,
    f: impl FnOnce(&mut docmesh_proxy::resilience::RoutePolicy),
) {
    let mut r = (*p.default_route).clone();
    f(&mut r);
    p.default_route = Arc::new(r);
}

/// Counters and switches of a test upstream.
#[derive(Default)]
pub struct Counters {
    /// TCP connections accepted.
    pub accepts: AtomicUsize,
    /// HTTP requests seen (head read).
    pub requests: AtomicUsize,
    /// When true, the upstream misbehaves (meaning depends on the kind).
    pub down: AtomicBool,
    /// Bodies received, for checking replays.
    pub bodies: std::sync::Mutex<Vec<Bytes>>,
}

impl Counters {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst)
    }
}

/// How a test upstream behaves.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// 200 `ok` to everything (`/healthcheck`: `true`, or `false` while down).
    Ok,
    /// 503 to the first `n` requests, then 200.
    Fail503(usize),
    /// 503 to every request.
    Always503,
    /// While down: accept and reset at once; else like `Ok`.
    Flap,
    /// Reads the request, sends half a response head, resets.
    ResetMidResponse,
    /// Reads the whole request including its body, then resets without answering.
    ResetAfterBody,
    /// Reads the request and never answers.
    Stall,
    /// 503 to every request while down (on pooled connections too), else 200.
    Down503,
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

impl Upstream {
    pub async fn spawn(kind: Kind) -> Upstream {
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                c.accepts.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(serve(kind, s, c));
            }
        });
        Upstream { addr, counters }
    }
}

fn rst(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Reads one request head and its content-length body; returns the body.
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(buf[head_end..head_end + len].to_vec())
}

async fn serve(kind: Kind, mut s: TcpStream, c: Arc<Counters>) {
    match kind {
        Kind::Flap if c.down.load(Ordering::SeqCst) => rst(s),
        Kind::ResetMidResponse => {
            if read_request(&mut s).await.is_some() {
                c.requests.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                let _ = s.flush().await;
            }
            rst(s)
        }
        Kind::ResetAfterBody => {
            if let Some(body) = read_request(&mut s).await {
                c.requests.fetch_add(1, Ordering::SeqCst);
                c.bodies.lock().unwrap().push(body.into());
            }
            rst(s)
        }
        Kind::Stall => {
            if read_request(&mut s).await.is_some() {
                c.requests.fetch_add(1, Ordering::SeqCst);
            }
            let mut sink = [0u8; 64];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        _ => {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let c = c.clone();
                async move {
                    let n = c.requests.fetch_add(1, Ordering::SeqCst);
                    let path = req.uri().path().to_owned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    c.bodies.lock().unwrap().push(body);
                    let down = c.down.load(Ordering::SeqCst);
                    let (status, text) = match kind {
                        _ if path == "/healthcheck" => (200, if down { "false" } else { "true" }),
                        Kind::Fail503(k) if n < k => (503, "unavailable"),
                        Kind::Always503 => (503, "unavailable"),
                        Kind::Down503 if down => (503, "unavailable"),
                        _ => (200, "ok"),
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(text.as_bytes())))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    }
}

/// An address where nothing listens (connections are refused).
pub async fn refusing_addr() -> SocketAddr {
    let l = listener().await;
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// An address whose SYNs go unanswered: a listener with a full accept queue that never accepts.
/// Returns the address and the guards that keep the queue full.
pub async fn blackhole_addr() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (addr, fill, sock)
}

/// GET `path` through the stack.
pub async fn get(
    stack: &Stack,
    path: &str,
) -> Result<(u16, Bytes), docmesh_proxy::errors::ProxyError> {
    send(stack, http::Method::GET, path, Bytes::new()).await
}

/// Sends a request through the stack and reads the whole response.
pub async fn send(
    stack: &Stack,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), docmesh_proxy::errors::ProxyError> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "upstream.test")
        .body(Full::new(body))
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(20), stack.call(req))
        .await
        .expect("the stack answered within 20 s")?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, body))
}

/// Drop-in for unused-import lints in some test files.
pub type Endpoint = HyperEndpoint<HttpConnector>;
