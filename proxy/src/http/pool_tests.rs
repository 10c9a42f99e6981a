//! The pool's idle limits and HTTP/2 keep-alive on paused time, over in-memory connections to
//! a real hyper server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::*;
use crate::errors::ProxyError;

/// A server-side stream that can be frozen: reads never complete and writes vanish, like a
/// middlebox that silently drops a flow.
struct Freezable {
    inner: DuplexStream,
    frozen: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A hyper server reached over in-memory streams; counts connections opened and ended.
#[derive(Default)]
struct Server {
    opened: AtomicUsize,
    ended: AtomicUsize,
    /// Freezes the most recent connection.
    frozen: Mutex<Option<Arc<AtomicBool>>>,
    /// Delay before answering a request.
    delay: Mutex<Duration>,
}

impl Server {
    fn connect(self: &Arc<Self>, version: HttpVersion) -> Result<DuplexStream, ProxyError> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let frozen = Arc::new(AtomicBool::new(false));
        *self.frozen.lock().unwrap() = Some(frozen.clone());
        self.opened.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(Freezable {
                inner: server,
                frozen,
            });
            let delay = *me.delay.lock().unwrap();
            let svc = service_fn(move |_req| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = match version {
                HttpVersion::Http1 => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                }
                HttpVersion::Http2 => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(io, svc)
                        .await
                }
            };
            me.ended.fetch_add(1, Ordering::SeqCst);
        });
        Ok(client)
    }

    fn open(&self) -> usize {
        self.opened.load(Ordering::SeqCst) - self.ended.load(Ordering::SeqCst)
    }
}

async fn get(pool: &Pool<u8, Full<Bytes>>, server: &Arc<Server>, version: HttpVersion) -> u16 {
    let req = http::Request::get("http://upstream/")
        .version(match version {
            HttpVersion::Http1 => http::Version::HTTP_11,
            HttpVersion::Http2 => http::Version::HTTP_2,
        })
        .body(Full::new(Bytes::new()))
        .unwrap();
    let s = server.clone();
    let rsp = pool
        .send(&0, version, req, move || {
            let s = s.clone();
            async move { s.connect(version) }
        })
        .await
        .expect("a response");
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await.unwrap();
    status
}

const IDLE: Duration = Duration::from_secs(4);

#[tokio::test(start_paused = true)]
async fn idle_connections_close_when_their_limit_passes_not_at_the_next_request() {
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let server = Arc::new(Server::default());
        let pool = Pool::new(IDLE);
        assert_eq!(get(&pool, &server, version).await, 200);
        assert_eq!(get(&pool, &server, version).await, 200);
        assert_eq!(
            server.opened.load(Ordering::SeqCst),
            1,
            "{version:?}: reused"
        );
        tokio::time::sleep(IDLE - Duration::from_millis(100)).await;
        assert_eq!(server.open(), 1, "{version:?}: still open before the limit");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            server.open(),
            0,
            "{version:?}: closed once idle for {IDLE:?}"
        );
        assert_eq!(pool.pooled(), 0);
        // The next request opens a new connection.
        assert_eq!(get(&pool, &server, version).await, 200);
        assert_eq!(server.opened.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_response_keeps_an_http2_connection() {
    let server = Arc::new(Server::default());
    *server.delay.lock().unwrap() = Duration::from_secs(25); // a socket.io long-poll
    let pool = Pool::new(IDLE);
    let p = Arc::new(pool);
    let (p2, s2) = (p.clone(), server.clone());
    let poll = tokio::spawn(async move { get(&p2, &s2, HttpVersion::Http2).await });
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(server.open(), 1, "a request in flight is not idle");
    assert_eq!(poll.await.unwrap(), 200);
    tokio::time::sleep(IDLE - Duration::from_millis(100)).await;
    assert_eq!(server.open(), 1, "the idle clock starts at the response");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ping_replaces_the_http2_connection() {
    let server = Arc::new(Server::default());
    let pool = Pool::new(Duration::from_secs(600)).with_h2_keep_alive(H2KeepAlive {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    });
    assert_eq!(get(&pool, &server, HttpVersion::Http2).await, 200);
    // The flow is silently dropped (NAT or conntrack forgot it).
    let frozen = server.frozen.lock().unwrap().clone().unwrap();
    frozen.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(16)).await;
    // The PING went unanswered: the next request goes out on a new connection and succeeds.
    assert_eq!(get(&pool, &server, HttpVersion::Http2).await, 200);
    assert_eq!(server.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn without_pings_a_silently_dropped_http2_connection_is_not_noticed() {
    // The control for the test above: the same silence, no PINGs, and the pool still holds the
    // dead connection (a request would be sent into the void).
    let server = Arc::new(Server::default());
    let pool = Pool::new(Duration::from_secs(600));
    assert_eq!(get(&pool, &server, HttpVersion::Http2).await, 200);
    let frozen = server.frozen.lock().unwrap().clone().unwrap();
    frozen.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let lock = pool.lock();
    let h2 = lock.map.get(&0).and_then(|s| s.h2.as_ref()).unwrap();
    assert!(!h2.tx.is_closed());
}
