//! Transparent mode: the original destination is the preferred endpoint of a request. Its first
//! attempt goes there while that endpoint is usable; a retry falls back to the other endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::resilience_support::*;
use docmesh_proxy::resilience::balance::PreferredEndpoint;

async fn get_preferring(s: &Stack, preferred: SocketAddr) -> u16 {
    let mut req = Request::get("/")
        .header("host", "upstream.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(PreferredEndpoint(preferred));
    let rsp = tokio::time::timeout(Duration::from_secs(20), s.call(req))
        .await
        .expect("the stack answered within 20 s")
        .expect("a response");
    let status = rsp.status().as_u16();
    let _ = rsp.into_body().collect().await;
    status
}

#[tokio::test]
async fn every_request_reaches_the_preferred_endpoint() {
    let a = Upstream::spawn(Kind::Ok).await;
    let b = Upstream::spawn(Kind::Ok).await;
    let s = stack(policy("docservice"), &[a.addr, b.addr]);
    // Alternate the address the app connected to: a balancer that ignored it (latency-sticky
    // or random) cannot produce exactly these counts.
    for i in 0..20 {
        let target = if i % 4 == 0 { a.addr } else { b.addr };
        assert_eq!(get_preferring(&s, target).await, 200);
    }
    assert_eq!(a.counters.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        b.counters.requests.load(Ordering::SeqCst),
        15,
        "no request was balanced away from the address the app connected to"
    );
}

#[tokio::test]
async fn a_refusing_preferred_endpoint_falls_back_on_retry() {
    let a = Upstream::spawn(Kind::Ok).await;
    // An address where nothing listens: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = policy("docservice");
    with_route(&mut p, |r| r.retry.max_attempts = 2);
    let s = stack(p, &[dead, a.addr]);
    assert_eq!(get_preferring(&s, dead).await, 200);
    assert_eq!(a.counters.requests.load(Ordering::SeqCst), 1);
}
