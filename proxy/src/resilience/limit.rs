//! Limits on concurrent and pending requests of a service. A request beyond `max_concurrent`
//! waits (at most its route's `request` timeout) if fewer than `max_pending` already wait;
//! otherwise it fails at once with `overloaded`. The slot is held until the response body ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::Semaphore;

use super::body::ReplayBody;
use super::endpoint::BoxFuture;
use super::guard::Guarded;
use super::policy::LimitsPolicy;
use super::timeout::route_of;
use crate::classify::AttemptError;
use crate::errors::Cause;

/// The concurrency-limit layer of a service.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    slots: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    limits: LimitsPolicy,
    service: Arc<str>,
}

impl<S> ConcurrencyLimit<S> {
    /// Limits calls to `inner`, the stack of `service`.
    pub fn new(inner: S, limits: LimitsPolicy, service: Arc<str>) -> Self {
        ConcurrencyLimit {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            pending: Arc::new(AtomicUsize::new(0)),
            limits,
            service,
        }
    }
}

struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> tower::Service<Request<ReplayBody>> for ConcurrencyLimit<S>
where
    S: tower::Service<Request<ReplayBody>, Response = Response<Guarded<B>>, Error = AttemptError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Guarded<B>>;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Self::Response, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let slots = self.slots.clone();
        let pending = self.pending.clone();
        let limits = self.limits.clone();
        let service = self.service.clone();
        let wait = route_of(&req).timeouts.request.filter(|d| !d.is_zero());
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let overloaded = |why: String| {
                AttemptError::new(
                    Cause::Overloaded,
                    format!(
                        "{service} has {} requests in flight and {why}; the upstream is slower \
                         than the traffic: check its latency, scale it out, or raise \
                         `limits.max_concurrent` / `limits.max_pending`",
                        limits.max_concurrent
                    ),
                )
            };
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if pending.fetch_add(1, Ordering::AcqRel) >= limits.max_pending {
                        pending.fetch_sub(1, Ordering::AcqRel);
                        return Err(overloaded(format!(
                            "{} already waiting (`max_pending`)",
                            limits.max_pending
                        )));
                    }
                    let _waiting = PendingGuard(pending.clone());
                    let acquire = slots.clone().acquire_owned();
                    let got = match wait {
                        Some(d) => tokio::time::timeout(d, acquire).await.ok(),
                        None => Some(acquire.await),
                    };
                    match got {
                        Some(Ok(p)) => p,
                        _ => {
                            return Err(overloaded(
                                "no slot freed up within the request timeout".to_owned(),
                            ))
                        }
                    }
                }
            };
            let rsp = tower::ServiceExt::ready(&mut inner)
                .await?
                .call(req)
                .await?;
            Ok(rsp.map(|mut b| {
                b.hold(Box::new(permit));
                b
            }))
        })
    }
}
