//! Balancing across a service's endpoints: power of two choices on load (requests in flight)
//! or on latency (peak EWMA of response-header latency, weighted by load). Endpoints whose
//! circuit is open or whose health check fails are ejected from the choice and re-admitted when
//! the breaker's probe or the health check succeeds. With none left: `no-healthy-endpoint`
//! (or `circuit-open` for a service with a single endpoint whose circuit is open).
//!
//! A request may name a [`PreferredEndpoint`] (transparent mode: the original destination the
//! app connected to). Its first attempt goes there while that endpoint is usable; retries, and
//! requests whose preferred endpoint is ejected, are balanced as usual.
//!
//! A request whose route names a hash key and that carries it goes to the key's owner on the
//! service's hash ring (see [`super::hash`]), before any preferred endpoint: an ejected owner's
//! keys go to the next usable endpoint on the ring and come back when it recovers; a retry
//! goes to the next endpoint not tried yet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;

use super::body::ReplayBody;
use super::breaker::{open_error, Breaker, BreakerService};
use super::endpoint::{BoxFuture, Endpoint, NewService};
use super::guard::Guarded;
use super::hash::Ring;
use super::health::{check_once, HealthState};
use super::observer::Observer;
use super::policy::{BalanceStrategy, ServicePolicy};
use super::retry::Tried;
use super::timeout::AttemptTimeout;
use crate::classify::AttemptError;
use crate::errors::Cause;

/// The endpoint a request should go to first, in its request extensions: in transparent mode
/// the original destination the app connected to, so that a call to one pod's address reaches
/// that pod rather than any endpoint of its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferredEndpoint(pub SocketAddr);

/// Latency assumed for an endpoint without measurements (as linkerd does).
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Latency recorded for a failed request.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Load of one endpoint.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicUsize,
    ewma: Mutex<(f64, Instant)>,
}

impl Load {
    fn new() -> Self {
        Load {
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new((DEFAULT_RTT.as_secs_f64(), Instant::now())),
        }
    }

    /// Requests in flight (until their response bodies end).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Records one latency into the peak EWMA (a slower sample takes effect at once).
    fn observe(&self, rtt: Duration, decay: Duration) {
        let mut e = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let sample = rtt.as_secs_f64();
        if sample > e.0 {
            *e = (sample, now);
        } else {
            let dt = now.duration_since(e.1).as_secs_f64();
            let w = (-dt / decay.as_secs_f64().max(1e-3)).exp();
            *e = (e.0 * w + sample * (1.0 - w), now);
        }
    }

    fn cost(&self, strategy: BalanceStrategy) -> f64 {
        let n = self.in_flight() as f64;
        match strategy {
            BalanceStrategy::P2cLoad => n,
            BalanceStrategy::P2cEwma => {
                self.ewma.lock().unwrap_or_else(|e| e.into_inner()).0 * (n + 1.0)
            }
        }
    }
}

struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One endpoint in the balancer.
pub struct Slot<E> {
    /// The target.
    pub endpoint: Endpoint,
    /// Its circuit breaker.
    pub breaker: Arc<Breaker>,
    /// Its load.
    pub load: Arc<Load>,
    /// Its active health.
    pub health: Arc<HealthState>,
    requests: Option<Arc<dyn super::observer::EndpointCounter>>,
    svc: BreakerService<AttemptTimeout<E>>,
}

impl<E> Slot<E> {
    fn usable(&self) -> bool {
        self.health.is_healthy() && self.breaker.is_available()
    }

    fn state(&self) -> String {
        if !self.health.is_healthy() {
            let why = self.health.last_error().unwrap_or_default();
            format!("{} failing its health check ({why})", self.endpoint.addr)
        } else {
            let why = self.breaker.last_failure().unwrap_or_default();
            format!(
                "{} ejected, circuit open (last failure: {why})",
                self.endpoint.addr
            )
        }
    }
}

struct Shared<N: NewService<Endpoint>> {
    policy: ServicePolicy,
    observer: Arc<dyn Observer>,
    new: N,
    slots: ArcSwap<Vec<Arc<Slot<N::Service>>>>,
    /// The hash ring of the endpoints (empty unless a route of the service hashes).
    ring: ArcSwap<Ring>,
}

/// The balancer of one service; cheap to clone.
pub struct Balancer<N: NewService<Endpoint>> {
    shared: Arc<Shared<N>>,
}

impl<N: NewService<Endpoint>> Clone for Balancer<N> {
    fn clone(&self) -> Self {
        Balancer {
            shared: self.shared.clone(),
        }
    }
}

impl<N, RB> Balancer<N>
where
    N: NewService<Endpoint> + Send + Sync + 'static,
    N::Service: tower::Service<Request<ReplayBody>, Response = Response<RB>, Error = AttemptError>
        + Clone
        + Send
        + Sync
        + 'static,
    <N::Service as tower::Service<Request<ReplayBody>>>::Future: Send,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<super::body::BoxError>,
{
    /// A balancer over `addrs`, building endpoint services with `new`; circuit transitions
    /// are reported to `observer`.
    pub fn new(
        policy: ServicePolicy,
        new: N,
        addrs: &[SocketAddr],
        observer: Arc<dyn Observer>,
    ) -> Self {
        let b = Balancer {
            shared: Arc::new(Shared {
                policy,
                observer,
                new,
                slots: ArcSwap::from_pointee(Vec::new()),
                ring: ArcSwap::from_pointee(Ring::default()),
            }),
        };
        b.update(addrs);
        b
    }

    /// Replaces the endpoint set (after DNS re-resolution); known endpoints keep their state.
    pub fn update(&self, addrs: &[SocketAddr]) {
        let s = &self.shared;
        let old = s.slots.load_full();
        let mut next = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if next
                .iter()
                .any(|x: &Arc<Slot<N::Service>>| x.endpoint.addr == *addr)
            {
                continue;
            }
            if let Some(slot) = old.iter().find(|x| x.endpoint.addr == *addr) {
                next.push(slot.clone());
                continue;
            }
            let endpoint = Endpoint {
                service: s.policy.service.clone(),
                addr: *addr,
            };
            let raw = s.new.new_service(endpoint.clone());
            let describe: Arc<str> = endpoint.describe().into();
            let breaker = Arc::new(Breaker::new(s.policy.breaker.clone()).observed(
                s.observer.clone(),
                s.policy.service.clone(),
                *addr,
            ));
            let slot = Arc::new(Slot {
                svc: BreakerService::new(
                    AttemptTimeout::new(raw.clone(), describe.clone()),
                    breaker.clone(),
                    describe,
                ),
                endpoint,
                breaker,
                load: Arc::new(Load::new()),
                health: Arc::new(HealthState::default()),
                requests: s.observer.endpoint_counter(&s.policy.service, *addr),
            });
            if s.policy.health_check.is_some() && tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(health_loop(Arc::downgrade(&slot), raw, s.policy.clone()));
            }
            next.push(slot);
        }
        let hashes = s.policy.default_route.hash_key.is_some()
            || s.policy.routes.iter().any(|r| r.1.hash_key.is_some());
        let unchanged = next.len() == old.len()
            && next
                .iter()
                .zip(old.iter())
                .all(|(a, b)| a.endpoint.addr == b.endpoint.addr);
        if hashes && (!unchanged || s.ring.load().is_empty()) {
            let addrs: Vec<_> = next.iter().map(|x| x.endpoint.addr).collect();
            s.ring.store(Arc::new(Ring::new(&addrs)));
        }
        s.slots.store(Arc::new(next));
    }

    /// The current endpoints (for diagnostics, metrics and tests).
    pub fn slots(&self) -> Arc<Vec<Arc<Slot<N::Service>>>> {
        self.shared.slots.load_full()
    }

    /// Runs one health check of every endpoint now (the periodic loop does the same).
    pub async fn check_health_now(&self) {
        let Some(hc) = self.shared.policy.health_check.clone() else {
            return;
        };
        for slot in self.slots().iter() {
            let raw = self.shared.new.new_service(slot.endpoint.clone());
            let r = check_once(&raw, &slot.endpoint, &hc).await;
            slot.health.observe(r, &hc);
        }
    }

    fn pick(
        &self,
        tried: Option<&Tried>,
        preferred: Option<PreferredEndpoint>,
        key: Option<u64>,
    ) -> Result<Arc<Slot<N::Service>>, AttemptError> {
        let slots = self.slots();
        let mut usable: Vec<_> = slots.iter().filter(|s| s.usable()).collect();
        // The owner of the request's hash key, else the next usable endpoint on the ring.
        if let Some(h) = key {
            let ring = self.shared.ring.load();
            let mut retried = None;
            for addr in ring.candidates(h) {
                let Some(slot) = usable.iter().find(|s| s.endpoint.addr == addr) else {
                    continue;
                };
                if tried.is_some_and(|t| t.contains(&addr)) {
                    retried.get_or_insert(*slot);
                    continue;
                }
                return Ok((*slot).clone());
            }
            if let Some(slot) = retried {
                return Ok(slot.clone());
            }
        }
        // The endpoint the app itself addressed, unless it already failed this request.
        if let Some(PreferredEndpoint(addr)) = preferred {
            let untried = tried.is_none_or(|t| !t.contains(&addr));
            if let Some(slot) = usable.iter().find(|s| s.endpoint.addr == addr) {
                if untried {
                    return Ok((*slot).clone());
                }
            }
        }
        // A retry goes to an endpoint not tried yet, when there is one.
        if let Some(t) = tried {
            let fresh: Vec<_> = usable
                .iter()
                .copied()
                .filter(|s| !t.contains(&s.endpoint.addr))
                .collect();
            if !fresh.is_empty() {
                usable = fresh;
            }
        }
        let strategy = self.shared.policy.balance.strategy;
        match usable.len() {
            0 => Err(self.none_usable(&slots)),
            1 => Ok(usable[0].clone()),
            n => {
                let mut rng = fastrand::Rng::new();
                let a = rng.usize(..n);
                let b = (a + 1 + rng.usize(..n - 1)) % n;
                let (x, y) = (usable[a], usable[b]);
                Ok(if y.load.cost(strategy) < x.load.cost(strategy) {
                    y.clone()
                } else {
                    x.clone()
                })
            }
        }
    }

    fn none_usable(&self, slots: &[Arc<Slot<N::Service>>]) -> AttemptError {
        let service = &self.shared.policy.service;
        if slots.is_empty() {
            return AttemptError::new(
                Cause::NoHealthyEndpoint,
                format!(
                    "{service} has no endpoint: its address resolved to nothing; check the \
                     service's address in the config and DNS"
                ),
            );
        }
        if let [only] = slots {
            if only.health.is_healthy() {
                if let Some(r) = only.breaker.rejection() {
                    return open_error(&only.endpoint.describe(), &only.breaker, &r);
                }
            }
        }
        let states: Vec<_> = slots.iter().map(|s| s.state()).collect();
        AttemptError::new(
            Cause::NoHealthyEndpoint,
            format!(
                "no endpoint of {service} can take the request: {}; check the upstream \
                 instances (their logs, `/healthcheck`) and the network path to them",
                states.join("; ")
            ),
        )
    }
}

async fn health_loop<E, RB>(slot: Weak<Slot<E>>, raw: E, policy: ServicePolicy)
where
    E: tower::Service<Request<ReplayBody>, Response = Response<RB>, Error = AttemptError> + Clone,
    RB: Body<Data = Bytes>,
    RB::Error: Into<super::body::BoxError>,
{
    let Some(hc) = policy.health_check else {
        return;
    };
    let mut tick = tokio::time::interval(hc.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = slot.upgrade() else { return };
        let endpoint = s.endpoint.clone();
        let health = s.health.clone();
        drop(s);
        let r = check_once(&raw, &endpoint, &hc).await;
        if let Err(e) = &r {
            tracing::warn!(service = %endpoint.service, endpoint = %endpoint.addr, "health check failed: {e}");
        }
        health.observe(r, &hc);
    }
}

impl<N, RB> tower::Service<Request<ReplayBody>> for Balancer<N>
where
    N: NewService<Endpoint> + Send + Sync + 'static,
    N::Service: tower::Service<Request<ReplayBody>, Response = Response<RB>, Error = AttemptError>
        + Clone
        + Send
        + Sync
        + 'static,
    <N::Service as tower::Service<Request<ReplayBody>>>::Future: Send,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<super::body::BoxError>,
{
    type Response = Response<Guarded<RB>>;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Self::Response, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let tried = req.extensions().get::<Tried>().cloned();
        let preferred = req.extensions().get::<PreferredEndpoint>().copied();
        let key = super::timeout::route_of(&req)
            .hash_key
            .as_ref()
            .and_then(|k| k.hash(req.uri(), req.headers()));
        let slot = match self.pick(tried.as_ref(), preferred, key) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if let Some(t) = &tried {
            t.push(slot.endpoint.addr);
        }
        if let Some(c) = &slot.requests {
            c.inc();
        }
        let decay = self.shared.policy.balance.ewma_decay;
        Box::pin(async move {
            slot.load.in_flight.fetch_add(1, Ordering::AcqRel);
            let in_flight = InFlight(slot.load.clone());
            let start = Instant::now();
            let mut svc = slot.svc.clone();
            let res = tower::ServiceExt::ready(&mut svc).await?.call(req).await;
            // A failure counts as a slow answer, so p2c steers away from a failing endpoint even
            // before its circuit opens.
            let rtt = match &res {
                Ok(r) if !slot.breaker.is_failure_status(r.status().as_u16()) => start.elapsed(),
                _ => start.elapsed().max(FAILURE_PENALTY),
            };
            slot.load.observe(rtt, decay);
            let rsp = res?;
            Ok(rsp.map(|b| {
                let mut g = Guarded::new(b);
                g.hold(Box::new(in_flight));
                g
            }))
        })
    }
}
