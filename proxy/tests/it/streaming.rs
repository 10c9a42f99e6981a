//! A 100 MB body streams through two real `docmesh-proxy run` processes (mTLS between them)
//! without being held in memory: the peak RSS of each proxy process (VmHWM from
//! /proc/PID/status, which the proxy cannot influence) stays far below the body size.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;

const BODY: u64 = 100 * 1024 * 1024;
/// Peak RSS allowed per proxy process: a buffered body alone would exceed it twice over.
const MAX_HWM_KB: u64 = 48 * 1024;

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// FNV-1a over a stream of chunks.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
const FNV0: u64 = 0xcbf29ce484222325;

async fn expected_hash(n: u64) -> u64 {
    let mut body = pattern_body(n);
    let mut h = FNV0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            h = fnv(h, &d);
        }
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_streams_through_two_proxy_processes_in_bounded_memory() {
    let app = start_http_app().await;
    let mut pair = ProcessPair::start(app.port()).await;

    let want = expected_hash(BODY).await;
    let mut c = h1_client(pair.outbound).await;

    // Upload and download at once: the app echoes the body as it arrives.
    let req = http::Request::post("/echo")
        .header("host", "documentserver")
        .header("content-length", BODY.to_string())
        .body(pattern_body(BODY))
        .unwrap();
    let resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (n, h) = bounded(drain(resp.into_body())).await;
    assert_eq!((n, h), (BODY, want), "echoed body differs");

    // A 100 MB download.
    let resp = bounded(c.send_request(get(&format!("/download?n={BODY}"), "documentserver")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (n, h) = bounded(drain(resp.into_body())).await;
    assert_eq!((n, h), (BODY, want), "downloaded body differs");

    for (name, p) in [("client", &pair.client), ("server", &pair.server)] {
        let hwm = vm_hwm_kb(p.pid());
        eprintln!("{name} proxy VmHWM: {hwm} kB");
        assert!(
            hwm < MAX_HWM_KB,
            "{name} proxy peaked at {hwm} kB RSS for a {BODY}-byte body"
        );
    }

    // SIGTERM drains and exits 0.
    pair.terminate().await;
}

async fn drain(mut body: hyper::body::Incoming) -> (u64, u64) {
    let mut n = 0u64;
    let mut h = FNV0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            let d: Bytes = d;
            n += d.len() as u64;
            h = fnv(h, &d);
        }
    }
    (n, h)
}
