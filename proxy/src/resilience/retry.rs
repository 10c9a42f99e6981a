//! Retries: bounded attempts, exponential backoff with full jitter, a retry budget, bodies
//! replayed from the bounded buffer of [`ReplayBody`], and the rule that a non-idempotent
//! request (POST callbacks, conversions) is retried only when none of it reached the upstream.
//!
//! Retried: connect failures and other errors decided before any byte was written (always),
//! a peer sidecar's `connect-refused` / `connect-timeout` / `dns-failure` answer (always: the
//! request never reached the peer's app),
//! HTTP/2 `REFUSED_STREAM` (always), resets and per-attempt timeouts (idempotent requests only),
//! configured statuses (idempotent requests only). Never retried: `circuit-open`, `overloaded`,
//! `no-healthy-endpoint` (retrying cannot help and would only add load), and TLS or identity
//! failures (configuration problems that a retry only repeats).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};

use super::backoff::full_jitter;
use super::body::ReplayBody;
use super::budget::RetryBudget;
use super::endpoint::BoxFuture;
use super::observer::Observer;
use super::policy::is_idempotent;
use super::timeout::route_of;
use crate::classify::AttemptError;
use crate::errors::Cause;

pub use crate::errors::Attempts;

/// Endpoints the attempts of one request went to (shared by its attempts through the request
/// extensions); the balancer prefers endpoints not tried yet, so a retry goes elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Tried(pub Arc<Mutex<Vec<SocketAddr>>>);

impl Tried {
    /// Records an endpoint.
    pub fn push(&self, addr: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(addr);
    }

    /// Whether `addr` was tried.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(addr)
    }
}

/// Causes a peer docmesh sidecar reports (`docmesh-error`) when it could not even connect to
/// its app: the request never reached the app, so any request may be retried.
const PEER_UNSENT: [&str; 3] = ["connect-refused", "connect-timeout", "dns-failure"];

fn peer_never_reached_app<B>(rsp: &Response<B>) -> bool {
    rsp.status().is_server_error()
        && rsp
            .headers()
            .get(crate::errors::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| PEER_UNSENT.contains(&c))
}

/// The retry layer of a service.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    budget: Arc<RetryBudget>,
    service: Arc<str>,
    observer: Arc<dyn Observer>,
}

impl<S> Retry<S> {
    /// Retries calls to `inner` (the balancer of `service`) within `budget` (shared by every
    /// route of the service), reporting retries and refusals by the budget to `observer`.
    pub fn new(
        inner: S,
        budget: Arc<RetryBudget>,
        service: Arc<str>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Retry {
            inner,
            budget,
            service,
            observer,
        }
    }
}

/// Why a failed attempt is not retried (`None`: it may be).
fn refuse_error(e: &AttemptError, idempotent: bool, body_sent: bool) -> Option<&'static str> {
    match e.error.cause {
        Cause::CircuitOpen | Cause::Overloaded | Cause::NoHealthyEndpoint => Some("fail-fast"),
        Cause::Unauthenticated | Cause::Forbidden => Some("not retryable"),
        // Configuration problems: retrying only repeats the handshake failure.
        Cause::TlsPlaintextPeer
        | Cause::TlsUntrustedPeer
        | Cause::IdentityMismatch
        | Cause::TlsRejectedByPeer => Some("not retryable"),
        _ if e.unsent => None,
        _ if !idempotent && body_sent => Some("the request body was already sent"),
        _ if !idempotent => Some("the request may have reached the upstream"),
        _ => None,
    }
}

impl<S, B> tower::Service<Request<ReplayBody>> for Retry<S>
where
    S: tower::Service<Request<ReplayBody>, Response = Response<B>, Error = AttemptError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Response<B>, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let route = route_of(&req);
        let budget = self.budget.clone();
        let (service, observer) = (self.service.clone(), self.observer.clone());
        let mut inner = self.inner.clone();
        budget.deposit();
        Box::pin(async move {
            // The route's policy, shared (an `Arc` clone, not a copy of its status list).
            let policy = &route.retry;
            let idempotent = is_idempotent(req.method());
            let (mut parts, template) = req.into_parts();
            parts.extensions.insert(Tried::default());
            let max = policy.max_attempts.max(1);
            let mut rng = fastrand::Rng::new();
            let mut attempt = 1;
            // A never-polled handle on the shared buffer; later attempts replay from it.
            let replay_src = template.replay();
            let mut body = Some(template);
            loop {
                let Some(this_body) = body.take() else {
                    // Unreachable: `body` is refilled before every retry.
                    return Err(AttemptError::new(
                        Cause::UpstreamReset,
                        "internal: no request body",
                    ));
                };
                let sent = this_body.sent_flag();
                let req = Request::from_parts(parts.clone(), this_body);
                let res = tower::ServiceExt::ready(&mut inner).await?.call(req).await;
                let body_sent = sent.load(Ordering::Acquire);
                let why_not = match &res {
                    // A peer sidecar that could not reach its app: nothing reached the app.
                    Ok(rsp) if peer_never_reached_app(rsp) => None,
                    Ok(rsp) if !policy.on_status.contains(&rsp.status().as_u16()) => Some(""),
                    Ok(_) if !idempotent => Some(""),
                    Ok(_) => None,
                    Err(e) => refuse_error(e, idempotent, body_sent),
                };
                let next = replay_src.as_ref().and_then(|t| t.replay());
                // Lazily: only an attempt that wants a retry may take from the budget (and
                // report it exhausted).
                let why_not = why_not.or_else(|| {
                    if attempt >= max {
                        Some("attempts exhausted")
                    } else if next.is_none() {
                        Some("the request body is larger than the replay buffer")
                    } else if !budget.withdraw() {
                        observer.budget_exhausted(&service);
                        Some("the retry budget is exhausted")
                    } else {
                        None
                    }
                });
                let Some(why) = why_not else {
                    drop(res);
                    observer.retry(&service);
                    body = next;
                    let wait =
                        full_jitter(policy.backoff_base, policy.backoff_max, attempt, &mut rng);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                };
                return match res {
                    Ok(mut rsp) => {
                        rsp.extensions_mut().insert(Attempts(attempt));
                        Ok(rsp)
                    }
                    Err(mut e) => {
                        e.error.attempts = Some(attempt);
                        if attempt > 1 || (max > 1 && !matches!(why, "fail-fast" | "not retryable"))
                        {
                            e.error.detail = format!(
                                "{} [{attempt} attempt(s); not retried: {why}]",
                                e.error.detail
                            );
                        }
                        Err(e)
                    }
                };
            }
        })
    }
}
