//! Serving one accepted connection as HTTP/1.1 (with upgrades) or HTTP/2, with graceful
//! shutdown when the proxy drains.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::lifecycle::Lifecycle;
use crate::limits::{HeadGuard, HeadWatch, ServerLimits};
use crate::observe::ObservedBody;
use crate::protocol::HttpVersion;

/// hyper's smallest allowed HTTP/1 read buffer (`max_buf_size` panics below it).
const H1_MIN_BUF: usize = 8192;

/// How long a connection that has not sent its first request yet may take to do so once the
/// drain has started: a peer that just connected has a request on its way, and closing the
/// connection under it would fail that request (it cannot know whether it was processed).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Set by the first request of a connection.
#[derive(Default)]
struct FirstRequest {
    seen: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    fn mark(&self) {
        if !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the first request arrived, or after [`FIRST_REQUEST_GRACE`].
    async fn wait(&self) {
        if self.seen.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(FIRST_REQUEST_GRACE, self.notify.notified()).await;
    }
}

/// Serves `io` with `handler` until the peer closes the connection. When the drain starts,
/// idle keep-alive connections close (HTTP/2: GOAWAY) and busy ones finish their current
/// requests first; a connection that has not sent its first request yet gets a moment for it.
pub async fn serve_connection<Io, H, Fut>(
    io: Io,
    version: HttpVersion,
    handler: H,
    lifecycle: &Lifecycle,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = http::Response<ObservedBody>> + Send + 'static,
{
    serve_connection_limited(
        io,
        version,
        handler,
        lifecycle.draining(),
        ServerLimits::default(),
    )
    .await
}

/// [`serve_connection`] with the `[limits]` server settings: header read timeout (slowloris),
/// the HTTP/1 head guard (the proxy's own 431 for a head of any size, see
/// [`crate::limits::head`]), parser cut-offs, HTTP/2 streams, header list size and
/// reset-flood limits. The connection winds down gracefully once `stop` completes (the
/// proxy's drain, or for the inbound also a peer that is no longer trusted).
pub async fn serve_connection_limited<Io, H, Fut>(
    io: Io,
    version: HttpVersion,
    handler: H,
    stop: impl Future<Output = ()>,
    limits: ServerLimits,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = http::Response<ObservedBody>> + Send + 'static,
{
    let first = Arc::new(FirstRequest::default());
    let seen = Arc::clone(&first);
    let activity = Arc::new(super::idle::Activity::default());
    let active = Arc::clone(&activity);
    // HTTP/1: the head guard between the socket and hyper, told by every request where the
    // request heads are (HTTP/2 bounds its header lists itself).
    let (io, watch) = match (&limits.guard, version) {
        (Some((l, hop)), HttpVersion::Http1) => {
            let watch = Arc::new(HeadWatch::default());
            let guard = HeadGuard::new(io, Arc::clone(&watch), limits.head, l.clone(), *hop);
            (tokio_util::either::Either::Left(guard), Some(watch))
        }
        _ => (tokio_util::either::Either::Right(io), None),
    };
    let io = TokioIo::new(io);
    let svc = service_fn(move |mut req: http::Request<Incoming>| {
        seen.mark();
        let waiting = active.start();
        let upgrade = watch
            .as_ref()
            .and_then(|w| w.on_request(&mut req).map(|epoch| (Arc::clone(w), epoch)));
        let grpc = crate::grpc::is_grpc(&req);
        // Boxed: hyper's HTTP/1 server allocates room for one service future per connection
        // when the connection opens and keeps it while the connection idles. The handler's
        // future is about 5 KiB (the whole outbound or inbound request path), so every idle
        // keep-alive connection held it; boxed, it is allocated per request instead (one
        // allocation, CPU within noise) and an idle connection holds a pointer. Measured with
        // 8 968 idle client connections: 276 MiB -> 192 MiB (docs/benchmark.md).
        let fut = Box::pin(handler(req));
        async move {
            let mut resp = fut.await;
            if grpc {
                resp = ObservedBody::map_response(resp, |r| {
                    crate::grpc::into_trailers_only(
                        r,
                        http_body_util::Either::Right(http_body_util::Full::default()),
                    )
                });
            }
            if let Some((w, epoch)) = upgrade {
                w.on_response(epoch, resp.status());
            }
            drop(waiting);
            Ok::<_, Infallible>(resp)
        }
    });
    let drain = stop;
    tokio::pin!(drain);
    let result = match version {
        HttpVersion::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_headers(limits.parser_max_headers)
                .max_header_size(limits.head.parser_max)
                // An unfinished head cannot grow the read buffer past the cut-off either.
                .max_buf_size(limits.head.parser_max.max(H1_MIN_BUF) + H1_MIN_BUF)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = &mut drain => {
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = first.wait() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            }
        }
        HttpVersion::Http2 => {
            // Boxed: the HTTP/2 connection's state (about 3 KiB) would otherwise size this
            // future, and so the task of every HTTP/1 connection, which never uses it.
            let mut conn = Box::pin(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(limits.h2_max_concurrent_streams)
                    .max_header_list_size(limits.h2_max_header_list_size)
                    .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
                    .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
                    .serve_connection(
                        TokioIo::new(super::coalesce::Coalesced::new(io.into_inner())),
                        svc,
                    ),
            );
            // hyper has no HTTP/2 idle limit: the one of idle HTTP/1.1 keep-alive connections
            // (`limits.header_read_timeout`) applies, then GOAWAY.
            tokio::select! {
                r = conn.as_mut() => r,
                _ = activity.idle_for(limits.header_read_timeout) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = &mut drain => {
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = first.wait() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
