//! Telemetry that tells the truth (issue 22), through a real sidecar pair (two `docmesh-proxy
//! run` processes): the access log counts body bytes as they flow (a chunked upload without
//! `Content-Length`, an HTTP/2 stream), the duration ends when the response body ends (not at
//! its headers), and a client that goes away (an HTTP/2 stream reset before or after the
//! response headers, a grpcio call cancelled by its deadline) is logged as
//! `client-cancelled`, not as a success.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use serde_json::Value as Json;

const SLOW_CHUNKS: u64 = 4;
const SLOW_CHUNK: usize = 1000;
const SLOW_GAP: Duration = Duration::from_millis(150);

/// An h1 + h2c app: `/echo` streams the request body back, `/slow` sends SLOW_CHUNKS chunks
/// SLOW_GAP apart, anything under `/hang` (gRPC paths too) never answers.
async fn start_truth_app() -> SocketAddr {
    serve_app(truth_app).await
}

async fn truth_app(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.contains("Hang") || path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    let body: TestBody = if path == "/slow" {
        let chunks = futures::stream::unfold(0u64, |i| async move {
            if i == SLOW_CHUNKS {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(SLOW_GAP).await;
            }
            let frame = hyper::body::Frame::data(Bytes::from(vec![b'x'; SLOW_CHUNK]));
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(frame),
                i + 1,
            ))
        });
        StreamBody::new(chunks).boxed()
    } else {
        req.into_body().map_err(|e| e.into()).boxed()
    };
    Ok(http::Response::new(body))
}

/// The sidecar pair in front of the truth app.
async fn start_pair() -> ProcessPair {
    ProcessPair::start(start_truth_app().await.port()).await
}

fn bytes_of(v: &Json) -> (u64, u64) {
    (
        v["bytes_received"].as_u64().unwrap(),
        v["bytes_sent"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_as_they_flow_and_durations_end_with_the_body() {
    const UPLOAD: u64 = 3 * 1024 * 1024 + 17;
    let mut p = start_pair().await;

    // A chunked HTTP/1.1 upload (no Content-Length), echoed back as it arrives.
    let mut c = h1_client(p.outbound).await;
    let req = http::Request::post("/echo")
        .header("host", "documentserver")
        .body(pattern_body(UPLOAD))
        .unwrap();
    assert!(req.headers().get("content-length").is_none());
    let resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = bounded(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got.len() as u64, UPLOAD);
    let (out, inb) = p.path_lines("/echo").await;
    assert_eq!(bytes_of(&out), (UPLOAD, UPLOAD), "{out}");
    assert_eq!(bytes_of(&inb), (UPLOAD, UPLOAD), "{inb}");
    assert!(out.get("outcome").is_none(), "completed: {out}");

    // An HTTP/2 stream (as gRPC calls are): bytes both ways, no Content-Length either way.
    let mut h2 = h2_client(p.outbound).await;
    let req = http::Request::post("http://documentserver/echo")
        .body(pattern_body(100_000))
        .unwrap();
    let resp = bounded(h2.send_request(req)).await.unwrap();
    let got = bounded(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), 100_000);
    let (out, inb) = p.path_lines("/echo").await;
    assert_eq!(bytes_of(&out), (100_000, 100_000), "{out}");
    assert_eq!(bytes_of(&inb), (100_000, 100_000), "{inb}");

    // A slow stream: the duration covers the whole body, not just its headers.
    let resp = bounded(
        h2.send_request(
            http::Request::get("http://documentserver/slow")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let got = bounded(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got.len() as u64, SLOW_CHUNKS * SLOW_CHUNK as u64);
    let (out, inb) = p.path_lines("/slow").await;
    let body_time = (SLOW_GAP * (SLOW_CHUNKS as u32 - 1)).as_secs_f64() * 1000.0;
    for v in [&out, &inb] {
        assert!(
            v["duration_ms"].as_f64().unwrap() >= body_time,
            "the duration ends with the body ({body_time} ms of gaps): {v}"
        );
        assert_eq!(v["bytes_sent"], SLOW_CHUNKS * SLOW_CHUNK as u64, "{v}");
        assert!(v.get("outcome").is_none(), "{v}");
    }
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_as_client_cancelled() {
    let mut p = start_pair().await;
    let mut h2 = h2_client(p.outbound).await;

    // Reset before the response headers: the request had no response at all.
    let pending = h2.send_request(
        http::Request::get("http://documentserver/hang")
            .body(full(""))
            .unwrap(),
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), pending).await;
    let (out, inb) = p.path_lines("/hang").await;
    for v in [&out, &inb] {
        assert_eq!(v["outcome"], "client-cancelled", "{v}");
        assert_eq!(v["status"], Json::Null, "no response was sent: {v}");
        assert_eq!(v["cause"], Json::Null, "{v}");
    }

    // Reset after the headers, mid-body: the status was sent, the body was not finished.
    let resp = bounded(
        h2.send_request(
            http::Request::get("http://documentserver/slow")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let first = bounded(body.frame()).await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let (out, _) = p.path_lines("/slow").await;
    assert_eq!(out["outcome"], "client-cancelled", "{out}");
    assert_eq!(out["status"], 200, "{out}");
    let sent = out["bytes_sent"].as_u64().unwrap();
    assert!(
        (1..SLOW_CHUNKS * SLOW_CHUNK as u64).contains(&sent),
        "part of the body: {out}"
    );
    p.terminate().await;
}

/// A grpcio unary call with a deadline of 0.5 s to `target`; prints the status code name.
const DEADLINE_CLIENT: &str = r#"
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    call = channel.unary_unary("/docmesh.test.Echo/Hang",
                               request_serializer=None, response_deserializer=None)
    try:
        call(b"\x0a\x02hi", timeout=0.5)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_cancelled_by_its_deadline_is_not_logged_as_a_success() {
    let mut p = start_pair().await;
    let target = p.outbound.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", DEADLINE_CLIENT, &target])
            .output()
            .expect("python3 with grpcio (tests/scripts/install-deps.sh)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "DEADLINE_EXCEEDED"
    );
    let (out, inb) = p.path_lines("/docmesh.test.Echo/Hang").await;
    for v in [&out, &inb] {
        assert_eq!(v["outcome"], "client-cancelled", "{v}");
        assert_ne!(v["status"], 200, "{v}");
        assert!(
            v["bytes_received"].as_u64().unwrap() > 0,
            "the request message: {v}"
        );
    }
    p.terminate().await;
}
