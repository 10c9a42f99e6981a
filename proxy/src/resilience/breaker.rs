//! Per-endpoint circuit breaker: `consecutive_failures` failures in a row open the circuit for
//! an exponentially growing, jittered period; when it ends, one probe request is let through and
//! its outcome closes the circuit or opens it again for a longer period. While open, requests
//! fail with `circuit-open` without touching the network.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use super::backoff::jittered_open;
use super::body::ReplayBody;
use super::endpoint::BoxFuture;
use super::observer::Observer;
use super::policy::BreakerPolicy;
use crate::classify::AttemptError;
use crate::errors::Cause;

/// Circuit state, as exported to metrics and the admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests fail fast until the open period ends.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, opens: u32 },
    HalfOpen { opens: u32 },
}

/// The breaker of one endpoint.
pub struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
    rng: Mutex<fastrand::Rng>,
    last_failure: Mutex<Option<String>>,
    watch: Option<Watch>,
}

struct Watch {
    observer: Arc<dyn Observer>,
    service: Arc<str>,
    endpoint: std::net::SocketAddr,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("policy", &self.policy)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn kind(s: &State) -> CircuitState {
    match s {
        State::Closed { .. } => CircuitState::Closed,
        State::Open { .. } => CircuitState::Open,
        State::HalfOpen { .. } => CircuitState::HalfOpen,
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// When the next probe may go (`None`: a probe is in flight now).
    pub retry_in: Option<Duration>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self::with_rng(policy, fastrand::Rng::new())
    }

    /// A closed breaker with a given random source (for reproducible tests).
    pub fn with_rng(policy: BreakerPolicy, rng: fastrand::Rng) -> Self {
        Breaker {
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            rng: Mutex::new(rng),
            last_failure: Mutex::new(None),
            watch: None,
        }
    }

    /// Reports this breaker's transitions (as endpoint `endpoint` of `service`) to `observer`.
    pub fn observed(
        mut self,
        observer: Arc<dyn Observer>,
        service: Arc<str>,
        endpoint: std::net::SocketAddr,
    ) -> Self {
        self.watch = Some(Watch {
            observer,
            service,
            endpoint,
        });
        self
    }

    /// Moves to `next`, reporting a change of kind.
    fn set(&self, s: &mut State, next: State) {
        let (from, to) = (kind(s), kind(&next));
        *s = next;
        if from != to {
            if let Some(w) = &self.watch {
                w.observer.circuit(&w.service, w.endpoint, to);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current state (an expired open period reads as `Open` until a request probes).
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether a request would be admitted now (without admitting it).
    pub fn is_available(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until, .. } => Instant::now() >= until,
            State::HalfOpen { .. } => false,
        }
    }

    /// Why a request would be rejected now, without changing the state (`None`: admitted).
    pub fn rejection(&self) -> Option<Rejected> {
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { until, .. } => {
                let now = Instant::now();
                (now < until).then(|| Rejected {
                    retry_in: Some(until - now),
                })
            }
            State::HalfOpen { .. } => Some(Rejected { retry_in: None }),
        }
    }

    /// Admits a request: `Ok(true)` for the probe of a half-open circuit.
    pub fn admit(&self) -> Result<bool, Rejected> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(false),
            State::Open { until, opens } => {
                let now = Instant::now();
                if now >= until {
                    self.set(&mut s, State::HalfOpen { opens });
                    Ok(true)
                } else {
                    Err(Rejected {
                        retry_in: Some(until - now),
                    })
                }
            }
            State::HalfOpen { .. } => Err(Rejected { retry_in: None }),
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, success: bool, probe: bool, failure: Option<&str>) {
        if self.policy.consecutive_failures == 0 {
            return;
        }
        if let Some(f) = failure {
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.to_owned());
        }
        let mut s = self.lock();
        let next = match (&*s, success) {
            (_, true) if probe || matches!(*s, State::Closed { .. }) => {
                State::Closed { failures: 0 }
            }
            (State::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.policy.consecutive_failures {
                    self.open(1)
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { opens }, false) if probe => self.open(opens + 1),
            // Late outcomes of requests admitted before the circuit opened change nothing.
            _ => return,
        };
        self.set(&mut s, next);
    }

    /// A probe that ended without an outcome (cancelled): let the next request probe.
    pub fn abandon_probe(&self) {
        let mut s = self.lock();
        if let State::HalfOpen { opens } = *s {
            self.set(
                &mut s,
                State::Open {
                    until: Instant::now(),
                    opens,
                },
            );
        }
    }

    fn open(&self, opens: u32) -> State {
        let p = &self.policy;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let d = jittered_open(p.open_base, p.open_max, opens, p.jitter, &mut rng);
        State::Open {
            until: Instant::now() + d,
            opens,
        }
    }

    /// The last failure seen, for the operator-facing detail.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a response status counts as a failure of the endpoint.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.policy.failure_statuses.contains(&status)
    }
}

/// Tower service that applies a [`Breaker`] to one endpoint's service.
#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
    describe: Arc<str>,
}

impl<S> BreakerService<S> {
    /// Guards `inner` (the service of the endpoint described by `describe`) with `breaker`.
    pub fn new(inner: S, breaker: Arc<Breaker>, describe: Arc<str>) -> Self {
        BreakerService {
            inner,
            breaker,
            describe,
        }
    }
}

/// The error of a request refused by an open circuit.
pub fn open_error(describe: &str, breaker: &Breaker, rejected: &Rejected) -> AttemptError {
    let when = match rejected.retry_in {
        Some(d) => format!("the next probe goes in {:.1} s", d.as_secs_f64()),
        None => "a probe request is testing it now".to_owned(),
    };
    let last = breaker
        .last_failure()
        .map_or_else(String::new, |f| format!("; last failure: {f}"));
    AttemptError::new(
        Cause::CircuitOpen,
        format!(
            "the circuit to {describe} is open after consecutive failures ({when}){last}; \
             fix the upstream (see the last failure) and the probe will close it"
        ),
    )
}

/// Drop guard: a probe future dropped before its outcome releases the half-open state.
struct ProbeGuard {
    breaker: Arc<Breaker>,
    armed: bool,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

impl<S, B> tower::Service<Request<ReplayBody>> for BreakerService<S>
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
        let breaker = self.breaker.clone();
        let probe = match breaker.admit() {
            Ok(p) => p,
            Err(r) => {
                let e = open_error(&self.describe, &breaker, &r);
                return Box::pin(async move { Err(e) });
            }
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut guard = ProbeGuard {
                breaker: breaker.clone(),
                armed: probe,
            };
            let res = tower::ServiceExt::ready(&mut inner).await?.call(req).await;
            guard.armed = false;
            match &res {
                Ok(rsp) if breaker.is_failure_status(rsp.status().as_u16()) => {
                    breaker.record(false, probe, Some(&format!("status {}", rsp.status())))
                }
                Ok(_) => breaker.record(true, probe, None),
                Err(e) => breaker.record(false, probe, Some(&e.error.to_string())),
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(jitter: f64) -> Breaker {
        Breaker::with_rng(
            BreakerPolicy {
                consecutive_failures: 3,
                open_base: Duration::from_secs(1),
                open_max: Duration::from_secs(8),
                jitter,
                failure_statuses: vec![503],
            },
            fastrand::Rng::with_seed(1),
        )
    }

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            let p = b.admit().unwrap();
            b.record(false, p, Some("boom"));
        }
    }

    /// Advances paused time until the breaker admits again; returns how long that took.
    async fn open_for(b: &Breaker) -> Duration {
        let start = Instant::now();
        let step = Duration::from_millis(10);
        while b.admit().is_err() {
            assert_eq!(b.state(), CircuitState::Open);
            tokio::time::advance(step).await;
        }
        Instant::now() - start
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_doubles() {
        let b = breaker(0.0);
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Closed);
        b.record(true, false, None);
        fail(&b, 2);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a success resets the count"
        );
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
        let r = b.admit().unwrap_err();
        assert_eq!(r.retry_in, Some(Duration::from_secs(1)));
        let mut expected = vec![];
        for _ in 0..5 {
            // open_for admitted the probe; it fails and re-opens for twice as long.
            let d = open_for(&b).await;
            expected.push(d.as_millis() / 10 * 10);
            assert_eq!(b.state(), CircuitState::HalfOpen);
            assert_eq!(b.admit().unwrap_err().retry_in, None, "one probe at a time");
            b.record(false, true, Some("still down"));
        }
        assert_eq!(expected, [1000, 2000, 4000, 8000, 8000]);
        let _ = open_for(&b).await;
        b.record(true, true, None);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(), Ok(false));
        fail(&b, 3);
        assert_eq!(
            open_for(&b).await,
            Duration::from_secs(1),
            "growth restarts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_within_bounds() {
        for seed in 0..20 {
            let b = Breaker::with_rng(breaker(0.5).policy, fastrand::Rng::with_seed(seed));
            fail(&b, 3);
            let d = open_for(&b).await;
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1010),
                "{d:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_lets_the_next_request_probe() {
        let b = breaker(0.0);
        fail(&b, 3);
        let _ = open_for(&b).await;
        b.abandon_probe();
        assert_eq!(b.admit(), Ok(true));
    }
}
