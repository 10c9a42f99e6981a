//! Timeouts as tower layers. The route's policy travels in the request extensions
//! (`Arc<RoutePolicy>`, put there by the route layer); a layer without one uses the defaults.
//!
//! - [`AttemptTimeout`]: per attempt, `per_try` from dispatch to response headers, and
//!   `response_headers` from the moment the request body was fully sent to response headers
//!   (so a long upload does not eat the wait for the answer).
//! - [`RequestTimeout`]: the whole request until response headers, retries and backoffs included.
//!
//! Connect and TLS handshake timeouts are applied by the datapath's connector.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};

use super::body::ReplayBody;
use super::endpoint::BoxFuture;
use super::policy::RoutePolicy;
use crate::classify::AttemptError;
use crate::errors::Cause;

/// The route policy of a request (from its extensions, else the defaults).
pub fn route_of<B>(req: &Request<B>) -> Arc<RoutePolicy> {
    req.extensions()
        .get::<Arc<RoutePolicy>>()
        .cloned()
        .unwrap_or_default()
}

/// Per-attempt timeouts for one endpoint's service.
#[derive(Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    describe: Arc<str>,
}

impl<S> AttemptTimeout<S> {
    /// Applies the per-attempt timeouts to `inner`, the service of the endpoint `describe`.
    pub fn new(inner: S, describe: Arc<str>) -> Self {
        AttemptTimeout { inner, describe }
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl<S, B> tower::Service<Request<ReplayBody>> for AttemptTimeout<S>
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
        let t = route_of(&req).timeouts.clone();
        let body_sent = req.body().fully_read();
        let describe = self.describe.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let call = async move { tower::ServiceExt::ready(&mut inner).await?.call(req).await };
            let headers_deadline = async move {
                match t.response_headers {
                    Some(d) if !d.is_zero() => {
                        body_sent.await;
                        tokio::time::sleep(d).await;
                        d
                    }
                    _ => std::future::pending().await,
                }
            };
            let per_try = async move {
                match t.per_try {
                    Some(d) if !d.is_zero() => {
                        tokio::time::sleep(d).await;
                        d
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                res = call => res,
                d = headers_deadline => Err(AttemptError::new(
                    Cause::ResponseTimeout,
                    format!(
                        "no response headers from {describe} within {} after the request was \
                         sent (`response_headers` timeout); the upstream is stalled or slow: \
                         check its load and logs, or raise the route's timeout (synchronous \
                         ConvertService calls take up to 30 min; prefer `async: true`)",
                        secs(d)
                    ),
                )),
                d = per_try => Err(AttemptError::new(
                    Cause::ResponseTimeout,
                    format!(
                        "no response headers from {describe} within the `per_try` timeout of {}; \
                         check the upstream's load and logs, or raise the route's timeout",
                        secs(d)
                    ),
                )),
            }
        })
    }
}

/// Whole-request timeout (all attempts and backoffs) of a service.
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    service: Arc<str>,
}

impl<S> RequestTimeout<S> {
    /// Bounds every request to `inner` (the stack of `service`) by its route's `request` timeout.
    pub fn new(inner: S, service: Arc<str>) -> Self {
        RequestTimeout { inner, service }
    }
}

impl<S, B> tower::Service<Request<ReplayBody>> for RequestTimeout<S>
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
        let limit = route_of(&req).timeouts.request.filter(|d| !d.is_zero());
        let service = self.service.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let call = async move { tower::ServiceExt::ready(&mut inner).await?.call(req).await };
            match limit {
                None => call.await,
                Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
                    Err(AttemptError::new(
                        Cause::ResponseTimeout,
                        format!(
                            "no response from {service} within the `request` timeout of {} \
                             (all attempts and backoffs included); check the upstream's load \
                             and logs, or raise the route's timeout",
                            secs(d)
                        ),
                    ))
                }),
            }
        })
    }
}
