//! Serving one accepted connection as HTTP/1.1 (with upgrades) or HTTP/2, with graceful
//! shutdown when the proxy drains.

use std::convert::Infallible;
use std::future::Future;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::pool::HttpVersion;
use super::ProxyBody;
use crate::lifecycle::Lifecycle;

/// Serves `io` with `handler` until the peer closes the connection; when the drain starts,
/// idle keep-alive connections close and busy ones finish their current requests first.
pub async fn serve_connection<Io, H, Fut>(
    io: Io,
    version: HttpVersion,
    handler: H,
    lifecycle: &Lifecycle,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let io = TokioIo::new(io);
    let svc = service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let drain = lifecycle.draining();
    tokio::pin!(drain);
    let result = match version {
        HttpVersion::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = &mut drain => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        HttpVersion::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = &mut drain => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
