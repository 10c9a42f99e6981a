//! Circuit breaking and ejection with real sockets: an open circuit fails fast without any
//! connection attempt, and the probe closes it once the upstream recovers.

use std::time::{Duration, Instant};

use crate::resilience_support::*;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::resilience::breaker::CircuitState;

fn breaker_policy(name: &str) -> docmesh_proxy::resilience::policy::ServicePolicy {
    let mut p = policy(name);
    p.breaker.consecutive_failures = 3;
    p.breaker.open_base = Duration::from_millis(200);
    p.breaker.jitter = 0.0;
    with_route(&mut p, |r| r.retry.max_attempts = 1);
    p
}

#[tokio::test]
async fn open_circuit_fails_fast_without_connecting_and_probe_closes_it() {
    let up = Upstream::spawn(Kind::Flap).await;
    up.counters.set_down(true);
    let rec = std::sync::Arc::new(Recorder::default());
    let s = stack_observed(breaker_policy("documentserver"), &[up.addr], rec.clone());
    for _ in 0..3 {
        let e = get(&s, "/").await.unwrap_err();
        assert_eq!(e.cause, Cause::UpstreamReset, "{e}");
    }
    assert_eq!(up.counters.accepts(), 3);
    for _ in 0..5 {
        let e = get(&s, "/").await.unwrap_err();
        assert_eq!(e.cause, Cause::CircuitOpen, "{e}");
        assert_eq!(e.cause.status(), 503);
        assert!(
            e.detail.contains("documentserver") && e.detail.contains("last failure"),
            "{e}"
        );
    }
    assert_eq!(
        up.counters.accepts(),
        3,
        "no connection attempt while the circuit is open"
    );

    up.counters.set_down(false);
    // Poll (bounded) until the open period ends and the probe goes through.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fast_fails = 0;
    loop {
        match get(&s, "/").await {
            Ok((status, _)) => {
                assert_eq!(status, 200);
                break;
            }
            Err(e) => {
                assert_eq!(e.cause, Cause::CircuitOpen, "{e}");
                fast_fails += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the probe never closed the circuit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.counters.accepts(),
        4,
        "exactly one probe connection ({fast_fails} fast fails)"
    );
    let slots = s.balancer().slots();
    assert_eq!(slots[0].breaker.state(), CircuitState::Closed);
    for _ in 0..5 {
        assert_eq!(get(&s, "/").await.unwrap().0, 200);
    }
    let seen: Vec<_> = rec.circuits.lock().unwrap().iter().map(|c| c.1).collect();
    assert_eq!(
        seen,
        [
            CircuitState::Open,
            CircuitState::HalfOpen,
            CircuitState::Closed
        ],
        "transitions reported for metrics"
    );
}

#[tokio::test]
async fn failed_probe_reopens_for_longer() {
    let up = Upstream::spawn(Kind::Flap).await;
    up.counters.set_down(true);
    let s = stack(breaker_policy("ds"), &[up.addr]);
    for _ in 0..3 {
        let _ = get(&s, "/").await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // Wait for the probe: it fails (upstream still down) and the circuit re-opens.
    loop {
        let e = get(&s, "/").await.unwrap_err();
        if e.cause == Cause::UpstreamReset {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.counters.accepts(), 4);
    let e = get(&s, "/").await.unwrap_err();
    assert_eq!(e.cause, Cause::CircuitOpen);
    // Second open period is 400 ms (doubled); the detail says when the next probe goes.
    assert!(
        e.detail.contains("next probe goes in 0.4") || e.detail.contains("next probe goes in 0.3"),
        "{e}"
    );
}

#[tokio::test]
async fn flapping_endpoint_is_ejected_and_readmitted() {
    let good = Upstream::spawn(Kind::Ok).await;
    let flappy = Upstream::spawn(Kind::Flap).await;
    flappy.counters.set_down(true);
    let mut p = breaker_policy("converter");
    p.breaker.consecutive_failures = 2;
    // Sequential requests have no load: p2c on load picks at random, so the flapping endpoint
    // keeps being chosen until its circuit ejects it.
    p.balance.strategy = docmesh_proxy::resilience::policy::BalanceStrategy::P2cLoad;
    p.breaker.open_base = Duration::from_secs(2);
    with_route(&mut p, |r| r.retry.max_attempts = 3);
    let s = stack(p, &[good.addr, flappy.addr]);
    for _ in 0..30 {
        assert_eq!(
            get(&s, "/").await.unwrap().0,
            200,
            "retries and ejection hide the flapping"
        );
    }
    let slots = s.balancer().slots();
    assert_ne!(
        slots[1].breaker.state(),
        CircuitState::Closed,
        "the flapping endpoint is ejected"
    );
    let accepted_while_down = flappy.counters.accepts();
    assert!(accepted_while_down >= 2);

    // Ejected: no further connection attempt reaches it while its circuit is open.
    for _ in 0..20 {
        assert_eq!(get(&s, "/").await.unwrap().0, 200);
    }
    assert_eq!(flappy.counters.accepts(), accepted_while_down);

    flappy.counters.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(8);
    while flappy.counters.requests() == 0 {
        assert_eq!(get(&s, "/").await.unwrap().0, 200);
        assert!(
            Instant::now() < deadline,
            "the recovered endpoint was never re-admitted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slots[1].breaker.state(), CircuitState::Closed);
}
