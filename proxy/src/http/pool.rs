//! Pooled upstream HTTP connections, built on hyper's connection-level client.
//!
//! Keyed by the caller (endpoint address, service, protocol), so that the request URI and
//! `Host`/`:authority` travel untouched. HTTP/1.1 connections are kept in a FIFO of idle
//! senders (a connection is reused once its previous response finished); one HTTP/2
//! connection per key is shared by all requests. A request that a reused connection could not
//! even start to send (it died while idle) is retried on another connection, which removes the
//! classic "reset before headers" race with upstream keep-alive timeouts.
//!
//! Idle limits are kept on time, not only checked when a connection is next wanted: a reaper
//! task (one per pool, only while it holds connections) sleeps until the earliest idle
//! deadline and closes what expired (HTTP/1.1: idle since its last response; HTTP/2: no
//! request waiting for response headers since then). A connection past its limit is never
//! handed out. HTTP/2 connections can send keep-alive PINGs (`with_h2_keep_alive`): one left
//! unanswered closes the connection (NAT and conntrack drop silent flows), and the next
//! request opens a new one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::errors::{Cause, ProxyError};
use crate::protocol::HttpVersion;

/// Idle HTTP/1.1 connections kept per key at most; more are closed when they go idle.
const MAX_IDLE_PER_KEY: usize = 256;

struct Idle<B> {
    tx: http1::SendRequest<B>,
    since: Instant,
}

/// Requests of a shared HTTP/2 connection still waiting for their response headers, and when
/// the last one got them (its idle clock).
#[derive(Debug)]
struct H2Use {
    waiting: AtomicUsize,
    since: Mutex<Instant>,
}

impl H2Use {
    fn idle_since(&self) -> Option<Instant> {
        if self.waiting.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.since.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Counts one request on an HTTP/2 connection until its response headers (or failure).
struct H2Request(Arc<H2Use>);

impl H2Request {
    fn start(u: &Arc<H2Use>) -> Self {
        u.waiting.fetch_add(1, Ordering::AcqRel);
        H2Request(u.clone())
    }
}

impl Drop for H2Request {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

struct H2<B> {
    tx: http2::SendRequest<B>,
    used: Arc<H2Use>,
}

struct Slot<B> {
    h1: VecDeque<Idle<B>>,
    h2: Option<H2<B>>,
}

impl<B> Default for Slot<B> {
    fn default() -> Self {
        Slot {
            h1: VecDeque::new(),
            h2: None,
        }
    }
}

enum Sender<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>, Arc<H2Use>),
}

/// HTTP/2 keep-alive PINGs: sent every `interval` (also while idle), and a PING unanswered
/// for `timeout` closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2KeepAlive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long a PING may go unanswered.
    pub timeout: Duration,
}

struct Slots<K, B> {
    map: HashMap<K, Slot<B>>,
    /// Whether a reaper task is running for this pool.
    reaping: bool,
}

/// A pool of upstream connections keyed by `K`; request bodies of type `B` stream through.
pub struct Pool<K, B> {
    idle_timeout: Duration,
    keep_alive: Option<H2KeepAlive>,
    /// Whether the peers are apps, whose HTTP/2 support is in question (see `h2_probe`).
    apps: bool,
    slots: Arc<Mutex<Slots<K, B>>>,
}

impl<K, B> std::fmt::Debug for Pool<K, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<K, B> Pool<K, B>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An empty pool; connections idle for `idle_timeout` are closed.
    pub fn new(idle_timeout: Duration) -> Self {
        Pool {
            idle_timeout,
            keep_alive: None,
            apps: false,
            slots: Arc::new(Mutex::new(Slots {
                map: HashMap::new(),
                reaping: false,
            })),
        }
    }

    /// The peers are apps: a fresh HTTP/2 connection they close before a byte is taken as an
    /// app that does not speak HTTP/2 (`upstream-not-http2`, see `h2_probe`).
    pub fn to_apps(mut self) -> Self {
        self.apps = true;
        self
    }

    /// Makes the pool's HTTP/2 connections send keep-alive PINGs.
    pub fn with_h2_keep_alive(mut self, keep_alive: H2KeepAlive) -> Self {
        self.keep_alive = Some(keep_alive);
        self
    }

    /// Pooled connections (idle HTTP/1.1 ones and shared HTTP/2 ones), for tests and metrics.
    pub fn pooled(&self) -> usize {
        self.lock()
            .map
            .values()
            .map(|s| s.h1.len() + usize::from(s.h2.is_some()))
            .sum()
    }

    /// Sends `req` over a pooled connection for `key`, opening one with `connect` when none is
    /// free. `connect` yields a ready byte stream (TCP, or TLS already negotiated).
    pub async fn send<F, Fut, Io>(
        &self,
        key: &K,
        version: HttpVersion,
        mut req: http::Request<B>,
        connect: F,
    ) -> Result<http::Response<Incoming>, ProxyError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Io, ProxyError>>,
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Up to two pooled connections that turn out dead, then a fresh one.
        for attempt in 0..3 {
            let pooled = if attempt < 2 {
                self.checkout(key, version)
            } else {
                None
            };
            let reused = pooled.is_some();
            // How a connection opened here ended, to name the cause of a first request that
            // fails only because its connection did.
            let mut ended = None;
            let sender = match pooled {
                Some(s) => s,
                None => {
                    let io = connect().await?;
                    let (s, end) = handshake(version, io, self.keep_alive, self.apps).await?;
                    ended = Some(end);
                    // The slot exists from the first connection on: a finished HTTP/1.1
                    // connection only goes back to a slot that still exists (see `retain`).
                    let mut slots = self.lock();
                    let slot = slots.map.entry(key.clone()).or_default();
                    if let Sender::H2(tx, used) = &s {
                        slot.h2 = Some(H2 {
                            tx: tx.clone(),
                            used: used.clone(),
                        });
                    }
                    self.start_reaper(&mut slots);
                    drop(slots);
                    s
                }
            };
            match sender {
                Sender::H1(mut tx) => {
                    if tx.ready().await.is_err() {
                        if reused {
                            continue;
                        }
                        return Err(ended_cause(ended, closed_before_request()).await);
                    }
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            self.checkin(key, tx);
                            return Ok(resp);
                        }
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => req = r,
                            _ => return Err(ended_cause(ended, upstream_error(e.error())).await),
                        },
                    }
                }
                Sender::H2(mut tx, used) => {
                    let _waiting = H2Request::start(&used);
                    if tx.ready().await.is_err() {
                        self.drop_h2(key);
                        if reused {
                            continue;
                        }
                        return Err(ended_cause(ended, closed_before_request()).await);
                    }
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(resp),
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => {
                                self.drop_h2(key);
                                req = r;
                            }
                            _ => return Err(ended_cause(ended, upstream_error(e.error())).await),
                        },
                    }
                }
            }
        }
        Err(closed_before_request())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<K, B>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the reaper unless one runs (called with the lock held, after adding a connection).
    fn start_reaper(&self, slots: &mut Slots<K, B>) {
        if slots.reaping || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        slots.reaping = true;
        tokio::spawn(reap(Arc::downgrade(&self.slots), self.idle_timeout));
    }

    fn checkout(&self, key: &K, version: HttpVersion) -> Option<Sender<B>> {
        let mut slots = self.lock();
        let slot = slots.map.get_mut(key)?;
        let now = Instant::now();
        match version {
            HttpVersion::Http2 => match &slot.h2 {
                Some(h2) if !h2.tx.is_closed() && !expired(&h2.used, now, self.idle_timeout) => {
                    Some(Sender::H2(h2.tx.clone(), h2.used.clone()))
                }
                _ => {
                    slot.h2 = None;
                    None
                }
            },
            HttpVersion::Http1 => {
                // Oldest first: the likeliest to have finished its previous response.
                for _ in 0..slot.h1.len() {
                    let idle = slot.h1.pop_front()?;
                    if idle.tx.is_closed() || now.duration_since(idle.since) >= self.idle_timeout {
                        continue;
                    }
                    if idle.tx.is_ready() {
                        return Some(Sender::H1(idle.tx));
                    }
                    slot.h1.push_back(idle);
                }
                None
            }
        }
    }

    /// Keeps only the connections whose key passes `keep`; the others close once their
    /// requests in flight are done (they never go back to the pool).
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.lock().map.retain(|k, _| keep(k));
    }

    fn checkin(&self, key: &K, tx: http1::SendRequest<B>) {
        let mut slots = self.lock();
        let Some(slot) = slots.map.get_mut(key) else {
            return; // retired while the request was in flight: close it
        };
        if slot.h1.len() < MAX_IDLE_PER_KEY {
            slot.h1.push_back(Idle {
                tx,
                since: Instant::now(),
            });
        }
        self.start_reaper(&mut slots);
    }

    fn drop_h2(&self, key: &K) {
        if let Some(slot) = self.lock().map.get_mut(key) {
            slot.h2 = None;
        }
    }
}

fn expired(used: &H2Use, now: Instant, idle_timeout: Duration) -> bool {
    used.idle_since()
        .is_some_and(|since| now.duration_since(since) >= idle_timeout)
}

/// Closes idle connections when their limit passes: sleeps until the earliest deadline, drops
/// what expired (dropping a sender closes an HTTP/1.1 connection at once and an HTTP/2 one
/// once its streams are done), and ends when the pool is empty or gone.
async fn reap<K, B>(slots: Weak<Mutex<Slots<K, B>>>, idle_timeout: Duration) {
    loop {
        let next = {
            let Some(slots) = slots.upgrade() else { return };
            let mut guard = slots.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
            guard.map.retain(|_, slot| {
                slot.h1.retain(|idle| {
                    let keep =
                        !idle.tx.is_closed() && now.duration_since(idle.since) < idle_timeout;
                    if keep {
                        soonest(idle.since + idle_timeout);
                    }
                    keep
                });
                if let Some(h2) = &slot.h2 {
                    if h2.tx.is_closed() || expired(&h2.used, now, idle_timeout) {
                        slot.h2 = None;
                    } else {
                        // Busy: look again one idle period from now at the latest.
                        soonest(h2.used.idle_since().unwrap_or(now) + idle_timeout);
                    }
                }
                // An empty slot stays while HTTP/1.1 requests may still check in (see
                // `retain`); it costs nothing.
                true
            });
            match next {
                Some(t) => t,
                None => {
                    guard.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// How a connection's task ended: its error, classified; nothing when it ended cleanly.
type Ended = tokio::sync::oneshot::Receiver<ProxyError>;

/// The cause of a request that failed with `fallback` because its fresh connection failed:
/// the connection's own error when it says more. With TLS 1.3 a peer rejects our client SVID
/// after our side of the handshake ended; the alert ends the connection's task, while the
/// request only learns that the connection closed.
async fn ended_cause(ended: Option<Ended>, fallback: ProxyError) -> ProxyError {
    if fallback.cause != Cause::UpstreamReset {
        return fallback;
    }
    let Some(ended) = ended else {
        return fallback;
    };
    // The task ends as soon as the connection failed; the bound only guards against a task
    // that keeps running (the request failed for another reason).
    match tokio::time::timeout(Duration::from_millis(250), ended).await {
        Ok(Ok(e)) if e.cause != Cause::UpstreamReset => e,
        _ => fallback,
    }
}

async fn handshake<B, Io>(
    version: HttpVersion,
    io: Io,
    keep_alive: Option<H2KeepAlive>,
    apps: bool,
) -> Result<(Sender<B>, Ended), ProxyError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match version {
        HttpVersion::Http1 => {
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| upstream_error(&e))?;
            let (end_tx, end_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream HTTP/1 connection ended with an error");
                    let _ = end_tx.send(upstream_error(&e));
                }
            });
            Ok((Sender::H1(tx), end_rx))
        }
        HttpVersion::Http2 => {
            let io = super::h2_probe::H2Probe::new(io.into_inner(), apps);
            let io = TokioIo::new(super::coalesce::Coalesced::new(io));
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            if let Some(ka) = keep_alive {
                builder
                    .keep_alive_interval(ka.interval)
                    .keep_alive_timeout(ka.timeout)
                    .keep_alive_while_idle(true);
            }
            let (tx, conn) = builder
                .handshake(io)
                .await
                .map_err(|e| upstream_error(&e))?;
            let (end_tx, end_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                    let _ = end_tx.send(upstream_error(&e));
                }
            });
            let used = Arc::new(H2Use {
                waiting: AtomicUsize::new(0),
                since: Mutex::new(Instant::now()),
            });
            Ok((Sender::H2(tx, used), end_rx))
        }
    }
}

/// The alert of a TLS error that reached us as text only: the HTTP/2 connection keeps an
/// I/O error's kind and message, not the error itself, so rustls' `AlertReceived` arrives as
/// its display form ("received fatal alert: NAME").
fn closed_before_request() -> ProxyError {
    ProxyError::new(
        Cause::UpstreamReset,
        "the upstream closed the connection before the request could be sent",
    )
}

/// Maps a hyper client error to a cause with the shared classifier ([`crate::classify`]):
/// everything after the connection was established is `upstream-reset` unless it is a
/// timeout, a TLS alert from the peer (with TLS 1.3 a server rejects our client SVID only after
/// our side of the handshake finished, so the alert arrives with the first response read), or
/// an HTTP/1.x answer to HTTP/2 (`upstream-not-http2`).
pub fn upstream_error(e: &hyper::Error) -> ProxyError {
    crate::classify::http_error(e, false, "the upstream").error
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
