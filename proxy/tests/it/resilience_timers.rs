//! Timer behaviour of the assembled stack on paused tokio time (no real sleeping): backoff
//! growth and jitter bounds, per-try / response-header / whole-request timeouts, pending waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::resilience::backoff::ceiling;
use docmesh_proxy::resilience::policy::ServicePolicy;
use docmesh_proxy::resilience::{AttemptError, Endpoint, NewService, ReplayBody, ServiceStack};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Mode {
    /// Fails every attempt with a reset (after reading the body).
    Reset,
    /// Reads the whole body, then never answers.
    Hang,
}

#[derive(Clone)]
struct Mock {
    mode: Mode,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl NewService<Endpoint> for Mock {
    type Service = Mock;
    fn new_service(&self, _: Endpoint) -> Mock {
        self.clone()
    }
}

impl tower::Service<Request<ReplayBody>> for Mock {
    type Response = Response<Full<Bytes>>;
    type Error = AttemptError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, AttemptError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        self.calls.lock().unwrap().push(Instant::now());
        let mode = self.mode;
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            match mode {
                Mode::Reset => Err(AttemptError::new(Cause::UpstreamReset, "mock reset")),
                Mode::Hang => std::future::pending().await,
            }
        })
    }
}

fn mock(mode: Mode) -> Mock {
    Mock {
        mode,
        calls: Arc::default(),
    }
}

fn addr() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn base_policy(f: impl FnOnce(&mut docmesh_proxy::resilience::RoutePolicy)) -> ServicePolicy {
    let mut p = ServicePolicy::new("mock");
    p.breaker.consecutive_failures = 0;
    p.budget.min_per_second = 1000;
    let mut r = (*p.default_route).clone();
    f(&mut r);
    p.default_route = Arc::new(r);
    p
}

async fn get(s: &ServiceStack<Mock, Full<Bytes>>) -> docmesh_proxy::errors::ProxyError {
    let req = Request::get("/x").body(Full::new(Bytes::new())).unwrap();
    s.call(req).await.expect_err("mock upstream never succeeds")
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially_with_full_jitter() {
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(1000);
    let attempts = 6;
    let mut max_gap = vec![Duration::ZERO; attempts - 1];
    let mut min_gap = vec![Duration::MAX; attempts - 1];
    for _ in 0..60 {
        let m = mock(Mode::Reset);
        let p = base_policy(|r| {
            r.retry.max_attempts = attempts as u32;
            r.retry.backoff_base = base;
            r.retry.backoff_max = max;
        });
        let s = ServiceStack::new(p, m.clone(), &[addr()]);
        let e = get(&s).await;
        assert_eq!(e.cause, Cause::UpstreamReset);
        assert!(e.detail.contains("6 attempt(s)"), "{e}");
        let calls = m.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), attempts);
        for (n, w) in calls.windows(2).enumerate() {
            let gap = w[1] - w[0];
            let cap = ceiling(base, max, n as u32 + 1);
            assert!(gap <= cap, "backoff {} was {gap:?} > {cap:?}", n + 1);
            max_gap[n] = max_gap[n].max(gap);
            min_gap[n] = min_gap[n].min(gap);
        }
    }
    for n in 0..attempts - 1 {
        let cap = ceiling(base, max, n as u32 + 1);
        assert!(
            max_gap[n] > cap * 3 / 4,
            "backoff {} never near its ceiling {cap:?}",
            n + 1
        );
        assert!(
            min_gap[n] < cap / 4,
            "backoff {} never near zero (no jitter?)",
            n + 1
        );
    }
    // Growth: the ceilings double until the cap.
    assert!(max_gap[3] > max_gap[0] * 4);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_bounds_each_attempt_and_retries() {
    let m = mock(Mode::Hang);
    let p = base_policy(|r| {
        r.timeouts.per_try = Some(Duration::from_secs(1));
        r.timeouts.response_headers = None;
        r.retry.max_attempts = 3;
        r.retry.backoff_base = Duration::ZERO;
    });
    let s = ServiceStack::new(p, m.clone(), &[addr()]);
    let start = Instant::now();
    let e = get(&s).await;
    assert_eq!(e.cause, Cause::ResponseTimeout);
    assert!(e.detail.contains("per_try"), "{e}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(m.calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn request_timeout_covers_all_attempts() {
    let m = mock(Mode::Hang);
    let p = base_policy(|r| {
        r.timeouts.per_try = Some(Duration::from_secs(1));
        r.timeouts.request = Some(Duration::from_millis(2500));
        r.retry.max_attempts = 5;
        r.retry.backoff_base = Duration::ZERO;
    });
    let s = ServiceStack::new(p, m.clone(), &[addr()]);
    let start = Instant::now();
    let e = get(&s).await;
    assert_eq!(e.cause, Cause::ResponseTimeout);
    assert!(e.detail.contains("`request` timeout"), "{e}");
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(m.calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn response_headers_timeout_starts_when_the_body_is_sent() {
    let m = mock(Mode::Hang);
    let p = base_policy(|r| {
        r.timeouts.response_headers = Some(Duration::from_secs(2));
        r.retry.max_attempts = 1;
    });
    let s = ServiceStack::new(p, m.clone(), &[addr()]);
    // A slow upload: the second chunk comes after 5 s.
    let chunks = futures::stream::unfold(0, |i| async move {
        match i {
            0 => Some((
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"a"))),
                1,
            )),
            1 => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Some((Ok(http_body::Frame::data(Bytes::from_static(b"b"))), 2))
            }
            _ => None,
        }
    });
    let req = Request::post("/upload")
        .body(StreamBody::new(chunks))
        .unwrap();
    let start = Instant::now();
    let e = s.call(req).await.err().unwrap();
    assert_eq!(e.cause, Cause::ResponseTimeout);
    assert!(e.detail.contains("response_headers"), "{e}");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(7),
        "5 s upload + 2 s wait"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_requests_wait_at_most_the_request_timeout() {
    let m = mock(Mode::Hang);
    let mut p = base_policy(|r| {
        r.timeouts.request = Some(Duration::from_secs(4));
        r.timeouts.response_headers = None;
    });
    p.limits.max_concurrent = 1;
    p.limits.max_pending = 1;
    // The first request holds the only slot for 100 s.
    let mut long = (*p.default_route).clone();
    long.timeouts.request = Some(Duration::from_secs(100));
    p.routes.push((
        docmesh_proxy::resilience::policy::RouteMatch {
            methods: vec![],
            path_prefix: "/long".into(),
        },
        Arc::new(long),
    ));
    let s = ServiceStack::new(p, m.clone(), &[addr()]);
    let s1 = s.clone();
    let first = tokio::spawn(async move {
        let req = Request::get("/long").body(Full::new(Bytes::new())).unwrap();
        s1.call(req).await.err().unwrap()
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    let s2 = s.clone();
    let second = tokio::spawn(async move { get(&s2).await });
    tokio::task::yield_now().await;
    // The third finds the one slot busy and the one pending place taken.
    let e = get(&s).await;
    assert_eq!(e.cause, Cause::Overloaded);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let e2 = second.await.unwrap();
    assert_eq!(e2.cause, Cause::Overloaded, "{e2}");
    assert!(e2.detail.contains("no slot freed up"), "{e2}");
    assert_eq!(start.elapsed(), Duration::from_secs(4));
    assert_eq!(first.await.unwrap().cause, Cause::ResponseTimeout);
}
