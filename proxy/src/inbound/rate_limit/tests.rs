use super::*;
use crate::config::ratelimit::TenantRate;

fn limiter(cfg: &[RateLimitConfig]) -> RateLimiter {
    RateLimiter::new(cfg, RateLimitMetrics::default())
}

fn rule(requests: u32, burst: Option<u32>) -> RateLimitConfig {
    RateLimitConfig {
        requests,
        burst,
        ..RateLimitConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
    let rate = Rate::new(10, Duration::from_secs(1), Some(5));
    let mut b = Bucket::full(rate, Instant::now());
    for _ in 0..5 {
        b.take(rate, Instant::now()).unwrap();
    }
    let wait = b.take(rate, Instant::now()).unwrap_err();
    assert_eq!(wait, Duration::from_millis(100));
    tokio::time::advance(Duration::from_millis(99)).await;
    assert!(b.take(rate, Instant::now()).is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    b.take(rate, Instant::now()).unwrap();
    assert!(b.take(rate, Instant::now()).is_err());
    // A long pause refills to the burst, never beyond it.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        b.take(rate, Instant::now()).unwrap();
    }
    assert!(b.take(rate, Instant::now()).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_sustained_rate_over_a_minute_is_the_configured_one() {
    // 2 requests per second, burst 1: one attempt every 10 ms for 60 s admits 120 (+1 burst).
    let l = limiter(&[rule(2, Some(1))]);
    let mut admitted = 0;
    for _ in 0..6000 {
        if l.check(80, "/", Some("acme")).is_ok() {
            admitted += 1;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert!((120..=121).contains(&admitted), "{admitted}");
}

#[tokio::test(start_paused = true)]
async fn each_tenant_has_its_own_bucket_and_its_own_rate() {
    let mut cfg = rule(3, None);
    cfg.tenants.insert(
        "bigcorp".into(),
        TenantRate {
            requests: 10,
            burst: None,
        },
    );
    let l = limiter(&[cfg]);
    for _ in 0..3 {
        l.check(80, "/x", Some("noisy")).unwrap();
    }
    let e = l.check(80, "/x", Some("noisy")).unwrap_err();
    assert!(e.detail.contains("tenant `noisy`"), "{}", e.detail);
    assert!(e.detail.contains("inbound.rate_limits[0]"), "{}", e.detail);
    // The noisy tenant's empty bucket costs the quiet one nothing.
    for _ in 0..3 {
        l.check(80, "/x", Some("quiet")).unwrap();
    }
    for _ in 0..10 {
        l.check(80, "/x", Some("bigcorp")).unwrap();
    }
    assert!(l.check(80, "/x", Some("bigcorp")).is_err());
    // Requests without a tenant share one bucket.
    for _ in 0..3 {
        l.check(80, "/x", None).unwrap();
    }
    assert!(l.check(80, "/x", None).is_err());
}

#[tokio::test(start_paused = true)]
async fn rules_pick_by_port_and_longest_prefix_and_a_route_limit_is_shared() {
    let mut convert = rule(1, None);
    convert.path_prefix = "/ConvertService.ashx".into();
    convert.per_tenant = false;
    let mut other_port = rule(1, None);
    other_port.port = Some(9000);
    let l = limiter(&[rule(100, None), convert, other_port]);
    l.check(80, "/ConvertService.ashx", Some("a")).unwrap();
    let e = l.check(80, "/ConvertService.ashx", Some("b")).unwrap_err();
    assert!(e.detail.contains("all callers"), "{}", e.detail);
    l.check(80, "/other", Some("b")).unwrap();
    l.check(9000, "/other", Some("b")).unwrap();
    assert!(l.check(9000, "/other", Some("b")).is_err());
    // No rule for the path: never limited.
    let only = limiter(&[RateLimitConfig {
        path_prefix: "/api/".into(),
        ..rule(1, None)
    }]);
    for _ in 0..10 {
        only.check(80, "/web", None).unwrap();
    }
}

#[test]
fn the_answer_is_429_with_retry_after_in_whole_seconds() {
    let resp = limited_response(
        &Limited {
            retry_after: Duration::from_millis(1200),
            detail: "tenant `noisy` exceeded".into(),
        },
        None,
    );
    assert_eq!(resp.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["docmesh-error"], "rate-limited");
}
