//! Retries against misbehaving upstreams on real sockets: recovery, the non-idempotent rule,
//! refused HTTP/2 streams, body replay limits and the retry budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::resilience_support::*;
use bytes::Bytes;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::resilience::endpoint::NewHyperEndpoint;
use docmesh_proxy::resilience::ServiceStack;
use http::Method;

#[tokio::test]
async fn get_recovers_from_503s() {
    let up = Upstream::spawn(Kind::Fail503(2)).await;
    let s = stack(policy("ds"), &[up.addr]);
    let (status, body) = get(&s, "/info/info.json").await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    assert_eq!(up.counters.requests(), 3);
}

#[tokio::test]
async fn post_is_not_retried_on_503() {
    let up = Upstream::spawn(Kind::Fail503(2)).await;
    let s = stack(policy("ds"), &[up.addr]);
    let (status, _) = send(&s, Method::POST, "/cb", Bytes::from_static(b"{\"key\":1}"))
        .await
        .unwrap();
    assert_eq!(
        status, 503,
        "the upstream saw the callback: its answer is relayed"
    );
    assert_eq!(up.counters.requests(), 1);
}

#[tokio::test]
async fn idempotent_requests_are_retried_after_a_reset_with_the_body_replayed() {
    let up = Upstream::spawn(Kind::ResetAfterBody).await;
    let mut p = policy("ds");
    p.breaker.consecutive_failures = 0;
    let s = stack(p, &[up.addr]);
    let e = send(&s, Method::PUT, "/file", Bytes::from_static(b"same body"))
        .await
        .unwrap_err();
    assert_eq!(e.cause, Cause::UpstreamReset);
    assert_eq!(up.counters.requests(), 3, "PUT is idempotent: 3 attempts");
    let bodies = up.counters.bodies.lock().unwrap().clone();
    assert!(bodies.iter().all(|b| &b[..] == b"same body"), "{bodies:?}");
}

#[tokio::test]
async fn post_whose_body_was_sent_is_not_retried() {
    let up = Upstream::spawn(Kind::ResetAfterBody).await;
    let s = stack(policy("integrator"), &[up.addr]);
    let e = send(
        &s,
        Method::POST,
        "/callback",
        Bytes::from_static(b"{\"status\":2}"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.cause, Cause::UpstreamReset);
    assert_eq!(e.cause.status(), 502);
    assert!(
        e.detail
            .contains("not retried: the request body was already sent"),
        "{e}"
    );
    assert_eq!(
        up.counters.accepts(),
        1,
        "exactly one attempt reached the upstream"
    );
    assert_eq!(up.counters.requests(), 1);
}

#[tokio::test]
async fn post_is_retried_on_another_endpoint_when_nothing_was_sent() {
    let good = Upstream::spawn(Kind::Ok).await;
    let bad = refusing_addr().await;
    let s = stack(policy("integrator"), &[bad, good.addr]);
    for i in 0..10 {
        let body = Bytes::from(format!("callback {i}"));
        let (status, _) = send(&s, Method::POST, "/callback", body).await.unwrap();
        assert_eq!(status, 200);
    }
    let bodies = good.counters.bodies.lock().unwrap().clone();
    let want: Vec<Bytes> = (0..10)
        .map(|i| Bytes::from(format!("callback {i}")))
        .collect();
    assert_eq!(bodies, want, "every callback arrived exactly once, intact");
}

#[tokio::test]
async fn bodies_larger_than_the_replay_buffer_are_not_retried() {
    let up = Upstream::spawn(Kind::ResetAfterBody).await;
    let mut p = policy("ds");
    with_route(&mut p, |r| r.retry.max_replay_bytes = 16);
    let s = stack(p, &[up.addr]);
    let e = send(&s, Method::PUT, "/big", Bytes::from(vec![b'x'; 100_000]))
        .await
        .unwrap_err();
    assert_eq!(e.cause, Cause::UpstreamReset);
    assert!(e.detail.contains("larger than the replay buffer"), "{e}");
    assert_eq!(up.counters.requests(), 1);
}

#[tokio::test]
async fn retry_budget_bounds_total_attempts() {
    let up = Upstream::spawn(Kind::Always503).await;
    let mut p = policy("ds");
    p.breaker.consecutive_failures = 0;
    p.budget.ratio = 0.2;
    p.budget.min_per_second = 1;
    p.budget.ttl = Duration::from_secs(10);
    with_route(&mut p, |r| r.retry.max_attempts = 3);
    let rec = Arc::new(Recorder::default());
    let s = stack_observed(p, &[up.addr], rec.clone());
    let n = 50;
    for _ in 0..n {
        assert_eq!(get(&s, "/").await.unwrap().0, 503);
    }
    let attempts = up.counters.requests();
    // Without a budget: 150. With it: the reserve (1/s * 10 s) plus 20 % of the requests.
    let bound = n + 10 + n / 5;
    assert!(
        attempts <= bound,
        "{attempts} attempts exceed the budget bound {bound}"
    );
    assert!(attempts > n + 10, "retries did happen: {attempts}");
    assert_eq!(
        rec.retries.load(Ordering::SeqCst),
        attempts - n,
        "every retry reported"
    );
    assert!(
        rec.budget_exhausted.load(Ordering::SeqCst) > 0,
        "refusals reported"
    );
}

#[tokio::test]
async fn answered_requests_leave_the_retry_budget_alone() {
    // A budget with one token in reserve and almost nothing earned per request: if answered
    // requests took from it, it would be empty after the first few.
    let up = Upstream::spawn(Kind::Ok).await;
    let mut p = policy("ds");
    p.budget.ratio = 0.01;
    p.budget.min_per_second = 1;
    p.budget.ttl = Duration::from_secs(1);
    let rec = Arc::new(Recorder::default());
    let s = stack_observed(p, &[up.addr], rec.clone());
    for _ in 0..50 {
        assert_eq!(get(&s, "/").await.unwrap().0, 200);
    }
    assert_eq!(up.counters.requests(), 50);
    assert_eq!(
        rec.budget_exhausted.load(Ordering::SeqCst),
        0,
        "no request wanted a retry, so none was refused one"
    );
    assert_eq!(rec.retries.load(Ordering::SeqCst), 0);
}

/// An HTTP/2 upstream that refuses the first `refuse` streams with REFUSED_STREAM.
async fn h2_refusing(refuse: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            let served = served2.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let mut body = req.into_body();
                    while let Some(chunk) = body.data().await {
                        if let Ok(c) = chunk {
                            let _ = body.flow_control().release_capacity(c.len());
                        }
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let rsp = http::Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut tx) = respond.send_response(rsp, false) {
                        let _ = tx.send_data(Bytes::from_static(b"converted"), true);
                    }
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn refused_http2_streams_are_retried_even_for_post() {
    let (addr, served) = h2_refusing(1).await;
    let p = policy("converter");
    let s: Stack = ServiceStack::new(p, NewHyperEndpoint::new(h2_client()), &[addr]);
    let (status, body) = send(
        &s,
        Method::POST,
        "/ConvertService.ashx",
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!((status, &body[..]), (200, &b"converted"[..]));
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // Without retries the refused stream surfaces as upstream-reset: the retry above was ours.
    let (addr, served) = h2_refusing(1).await;
    let mut p = policy("converter");
    with_route(&mut p, |r| r.retry.max_attempts = 1);
    let s: Stack = ServiceStack::new(p, NewHyperEndpoint::new(h2_client()), &[addr]);
    let e = send(
        &s,
        Method::POST,
        "/ConvertService.ashx",
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.cause, Cause::UpstreamReset);
    assert!(e.detail.contains("REFUSED_STREAM"), "{e}");
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    docmesh_proxy::resilience::ReplayBody,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

#[tokio::test]
async fn the_response_says_how_many_attempts_it_took() {
    let up = Upstream::spawn(Kind::Fail503(1)).await;
    let s = stack(policy("ds"), &[up.addr]);
    let req = http::Request::get("/")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let rsp = s.call(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let attempts = rsp
        .extensions()
        .get::<docmesh_proxy::resilience::Attempts>();
    assert_eq!(
        attempts,
        Some(&docmesh_proxy::resilience::Attempts(2)),
        "for the access log"
    );
}
