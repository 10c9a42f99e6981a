//! Typed targets and the endpoint contract.
//!
//! The stack is built over targets (linkerd2-proxy style): a [`NewService`] turns an
//! [`Endpoint`] (service name + address) into a service that sends one request to that address.
//! The datapath provides the mTLS one; [`NewHyperEndpoint`] is the plaintext one over a
//! hyper-util client, used in tests and as the template.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use hyper_util::client::legacy::{connect::Connect, Client};

use super::body::ReplayBody;
use crate::classify::{http_error, AttemptError};
use crate::errors::ProxyError;

/// Boxed, sendable future used by the layers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Builds a service for a target.
pub trait NewService<T> {
    /// The service built.
    type Service;
    /// A service for `target`.
    fn new_service(&self, target: T) -> Self::Service;
}

/// One address of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The configured service name.
    pub service: Arc<str>,
    /// The resolved address.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// `service (addr)`, the form used in every operator-facing detail.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.service, self.addr)
    }
}

/// A function that sends one request to one endpoint (e.g. the datapath's pooled mesh send).
/// Failures are [`ProxyError`]s; their cause tells whether the request could have left (see
/// [`AttemptError`]'s `From`).
pub type EndpointFn<RB> = Arc<
    dyn Fn(Endpoint, Request<ReplayBody>) -> BoxFuture<Result<Response<RB>, ProxyError>>
        + Send
        + Sync,
>;

/// Builds endpoint services from an [`EndpointFn`].
pub struct NewFnEndpoint<RB>(pub EndpointFn<RB>);

impl<RB> Clone for NewFnEndpoint<RB> {
    fn clone(&self) -> Self {
        NewFnEndpoint(self.0.clone())
    }
}

impl<RB> NewService<Endpoint> for NewFnEndpoint<RB> {
    type Service = FnEndpoint<RB>;
    fn new_service(&self, target: Endpoint) -> FnEndpoint<RB> {
        FnEndpoint {
            f: self.0.clone(),
            target,
        }
    }
}

/// One endpoint's service made by [`NewFnEndpoint`].
pub struct FnEndpoint<RB> {
    f: EndpointFn<RB>,
    target: Endpoint,
}

impl<RB> Clone for FnEndpoint<RB> {
    fn clone(&self) -> Self {
        FnEndpoint {
            f: self.f.clone(),
            target: self.target.clone(),
        }
    }
}

impl<RB: Send + 'static> tower::Service<Request<ReplayBody>> for FnEndpoint<RB> {
    type Response = Response<RB>;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Response<RB>, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let fut = (self.f)(self.target.clone(), req);
        Box::pin(async move { fut.await.map_err(AttemptError::from) })
    }
}

/// A plaintext hyper-util client configured from a route's timeouts (connect timeout, pooled
/// connection idle timeout); the datapath's mTLS client takes the same values.
pub fn plain_client(
    timeouts: &super::policy::TimeoutPolicy,
) -> Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(timeouts.pool_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(http)
}

/// Makes [`HyperEndpoint`]s from a shared hyper-util client.
#[derive(Clone)]
pub struct NewHyperEndpoint<C> {
    client: Client<C, ReplayBody>,
}

impl<C> NewHyperEndpoint<C> {
    /// Uses `client` (its connector decides plaintext or TLS) for every endpoint.
    pub fn new(client: Client<C, ReplayBody>) -> Self {
        NewHyperEndpoint { client }
    }
}

impl<C: Clone> NewService<Endpoint> for NewHyperEndpoint<C> {
    type Service = HyperEndpoint<C>;
    fn new_service(&self, target: Endpoint) -> HyperEndpoint<C> {
        HyperEndpoint {
            client: self.client.clone(),
            describe: target.describe().into(),
            target,
        }
    }
}

/// Sends a request to one endpoint through a hyper-util client, classifying failures.
#[derive(Clone)]
pub struct HyperEndpoint<C> {
    client: Client<C, ReplayBody>,
    target: Endpoint,
    describe: Arc<str>,
}

impl<C> tower::Service<Request<ReplayBody>> for HyperEndpoint<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<hyper::body::Incoming>;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Self::Response, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReplayBody>) -> Self::Future {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let client = self.client.clone();
        let describe = self.describe.clone();
        let uri = format!("http://{}{pq}", self.target.addr);
        Box::pin(async move {
            *req.uri_mut() = uri.parse::<Uri>().map_err(|e| {
                AttemptError::new(
                    crate::errors::Cause::UpstreamReset,
                    format!("cannot address {describe} with path {pq}: {e}"),
                )
            })?;
            client
                .request(req)
                .await
                .map_err(|e| http_error(&e, e.is_connect(), &describe))
        })
    }
}
