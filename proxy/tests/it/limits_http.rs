//! `[limits]` through a real inbound sidecar (raw bytes over TCP on 127.0.0.1): 431/414/413
//! with their `docmesh-error` cause, slowloris and silent bodies cut off, connection slots,
//! TLS handshake timeout, HTTP/2 stream limits and rapid reset. After each attack the proxy
//! still serves normal traffic.

use std::time::Duration;

use crate::limits_support::*;
use docmesh_proxy::config::limits::{BodyLimitRoute, LimitsConfig};
use docmesh_proxy::config::outbound::Protocol;
use docmesh_proxy::inbound::MeshServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn small_limits() -> LimitsConfig {
    LimitsConfig {
        max_headers: 20,
        max_header_bytes: 4096,
        max_uri_bytes: 256,
        body: vec![BodyLimitRoute {
            path_prefix: "/upload".into(),
            max_body_bytes: 100,
        }],
        ..LimitsConfig::default()
    }
}

/// A plaintext inbound sidecar in front of `app` with `limits`.
async fn inbound_with(app: &RecordingApp, limits: LimitsConfig) -> Sidecar {
    start_inbound(
        app.addr,
        InboundOptions {
            limits,
            ..InboundOptions::default()
        },
    )
    .await
}

fn request_with(extra: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

/// A GET whose head is `GET / HTTP/1.1`, a host and an `x-big` header of `n` bytes, unended.
fn huge_head(n: usize) -> Vec<u8> {
    let mut huge = b"GET / HTTP/1.1\r\nhost: app\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'v', n));
    huge
}

/// A declared 200-byte upload, past the 100 bytes `small_limits` allows under `/upload`.
const POST_200: &[u8] =
    b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ncontent-length: 200\r\nconnection: close\r\n\r\n";

/// A chunked upload of four 64-byte chunks (256 bytes), past the `small_limits` route limit.
fn chunked_upload() -> Vec<u8> {
    let mut chunked = b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"40\r\n");
        chunked.extend_from_slice(&[b'z'; 64]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    chunked
}

const TOO_LARGE: &str = "docmesh-error: request-header-too-large";
const PAYLOAD: &str = "docmesh-error: payload-too-large";

#[tokio::test]
async fn oversized_heads_get_431_414_and_413_with_their_cause_and_never_reach_the_app() {
    let app = RecordingApp::start().await;
    let side = inbound_with(&app, small_limits()).await;

    let many: String = (0..25).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = request_with(&many, "/");
    expect_answer(side.addr, &req, 431, &[TOO_LARGE, "limits.max_headers"]).await;

    let big = format!("x-big: {}\r\n", "v".repeat(5000));
    let req = request_with(&big, "/");
    expect_answer(side.addr, &req, 431, &["limits.max_header_bytes"]).await;

    // Far past the limit the head guard answers before hyper's parser would (same cause,
    // counted), having read no more than a bounded part of the head.
    let huge = format!("x-big: {}\r\n", "v".repeat(40_000));
    let req = request_with(&huge, "/");
    let parts = [TOO_LARGE, "limits.max_header_bytes (4096)"];
    expect_answer(side.addr, &req, 431, &parts).await;

    let long = format!("/{}", "a".repeat(300));
    let req = request_with("", &long);
    expect_answer(side.addr, &req, 414, &["docmesh-error: uri-too-long"]).await;

    expect_answer(side.addr, POST_200, 413, &[PAYLOAD]).await;

    assert!(
        app.requests().is_empty(),
        "nothing reaches the app: {:?}",
        app.requests()
    );
    assert_eq!(
        metric(&side.metrics, "docmesh_limit_rejections_total"),
        5.0,
        "{}",
        side.metrics.encode().unwrap()
    );

    // A chunked body past the route limit is cut off: the app never gets it whole.
    expect_answer(side.addr, &chunked_upload(), 413, &[PAYLOAD]).await;
    assert!(app.requests().iter().all(|r| r.body.len() < 256));

    // Under the limits everything passes.
    let ok = b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\nconnection: close\r\n\r\n";
    let mut with_body = ok.to_vec();
    with_body.extend_from_slice(&[b'y'; 100]);
    expect_answer(side.addr, &with_body, 200, &["x-app-body-len: 100"]).await;
    still_serving(side.addr).await;
}
/// Sends `head` while reading: a client that keeps writing a head of any size gets the
/// proxy's answer (the write may fail once the proxy closes).
async fn send_while_reading(addr: std::net::SocketAddr, head: Vec<u8>) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&head).await;
        w
    });
    let mut out = Vec::new();
    let _ = bounded(r.read_to_end(&mut out)).await;
    drop(writer);
    String::from_utf8_lossy(&out).into_owned()
}

/// A head of any size, on a fresh connection or after other requests on a keep-alive one,
/// gets the proxy's own 431 (cause, detail, counted); memory stays bounded (the guard reads
/// at most its cut-off of a head); the app sees nothing of it.
#[tokio::test]
async fn heads_of_any_size_get_the_proxys_431_on_fresh_and_keep_alive_connections() {
    let app = RecordingApp::start().await;
    let side = inbound_with(&app, small_limits()).await;
    let huge = huge_head(4 << 20);
    let text = send_while_reading(side.addr, huge.clone()).await;
    assert_answer(&text, 431, &[TOO_LARGE, "limits.max_header_bytes (4096)"]);

    // Keep-alive: a request with a body, one without, then the oversized head.
    let mut seq = b"POST /a HTTP/1.1\r\nhost: app\r\ncontent-length: 5000\r\n\r\n".to_vec();
    seq.extend(std::iter::repeat_n(b'b', 5000));
    seq.extend_from_slice(b"GET /b HTTP/1.1\r\nhost: app\r\n\r\n");
    seq.extend_from_slice(&huge);
    let text = send_while_reading(side.addr, seq).await;
    assert_eq!(statuses(&text), ["200", "200", "431"], "{text}");
    assert!(text.contains(TOO_LARGE), "{text}");
    let uris: Vec<String> = app.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["/a", "/b"]);
    assert_eq!(app.requests()[0].body.len(), 5000);
    assert_eq!(rejections(&side.metrics, "request-header-too-large"), 2.0);

    // Many keep-alive requests with bodies and heads just under the limit pass: the guard
    // never counts bodies or earlier heads.
    let header = format!("x-pad: {}\r\n", "p".repeat(3800));
    let mut seq = Vec::new();
    for i in 0..20 {
        seq.extend_from_slice(
            format!("POST /k{i} HTTP/1.1\r\nhost: app\r\n{header}content-length: 3000\r\n\r\n")
                .as_bytes(),
        );
        seq.extend(std::iter::repeat_n(b'c', 3000));
        seq.extend_from_slice(
            format!("GET /g{i} HTTP/1.1\r\nhost: app\r\n{header}\r\n").as_bytes(),
        );
    }
    seq.extend_from_slice(b"GET /last HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    let text = send_while_reading(side.addr, seq).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 41, "{text}");
    assert!(!text.contains("docmesh-error"), "{text}");
    still_serving(side.addr).await;
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let app = RecordingApp::start().await;
    let side = inbound_with(
        &app,
        LimitsConfig {
            header_read_timeout: Duration::from_millis(300),
            ..LimitsConfig::default()
        },
    )
    .await;
    slowloris(side.addr).await;
    assert!(app.requests().is_empty());
    still_serving(side.addr).await;
}

/// One header byte every 20 ms (8 s for the whole head) is cut off long before.
async fn slowloris(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // One header byte every 20 ms would take 8 s to finish; the proxy must close first.
    let drip = async {
        for _ in 0..400 {
            if s.write_all(b"x").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    let cut_off = bounded(drip).await;
    assert!(cut_off, "the slow client was never cut off");
}

/// A body that goes silent: the request to the app is aborted after `body_idle_timeout` and
/// the client gets `408 request-body-timeout` (counted with that cause).
#[tokio::test]
async fn a_silent_request_body_gets_408_request_body_timeout() {
    let app = RecordingApp::start().await;
    let side = inbound_with(
        &app,
        LimitsConfig {
            body_idle_timeout: Duration::from_millis(300),
            ..LimitsConfig::default()
        },
    )
    .await;
    silent_body(side.addr, &side.metrics).await;
    assert!(app.requests().iter().all(|r| r.body.len() != 100));
    still_serving(side.addr).await;
}

async fn silent_body(addr: std::net::SocketAddr, metrics: &docmesh_proxy::metrics::Metrics) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // The client never sends the rest.
    let text = read_to_close(&mut s).await;
    let parts = [
        "docmesh-error: request-body-timeout",
        "limits.body_idle_timeout",
    ];
    assert_answer(&text, 408, &parts);
    assert_eq!(rejections(metrics, "request-body-timeout"), 1.0);
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_closed_and_counted() {
    let app = RecordingApp::start().await;
    let side = inbound_with(
        &app,
        LimitsConfig {
            max_connections_per_listener: 2,
            ..LimitsConfig::default()
        },
    )
    .await;
    let held1 = TcpStream::connect(side.addr).await.unwrap();
    let mut held2 = TcpStream::connect(side.addr).await.unwrap();
    held2
        .write_all(b"GET /held HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = bounded(held2.read(&mut buf)).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
    // Both slots are held: a third connection is closed at once, with nothing read.
    let mut third = TcpStream::connect(side.addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .await;
    let text = read_to_close(&mut third).await;
    assert!(text.is_empty(), "{text}");
    assert_eq!(
        metric(
            &side.metrics,
            "docmesh_connections_refused_total{reason=\"listener\"}"
        ),
        1.0
    );
    assert_eq!(app.requests().len(), 1);
    // Freeing a slot lets new connections in again.
    drop(held1);
    bounded(async {
        loop {
            let t = raw_exchange(
                side.addr,
                b"GET /again HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
            )
            .await;
            if status_of(&t) == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(held2);
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_the_handshake_is_cut_off() {
    let ca = dev_ca("example.org");
    let identity = identity_for(&ca, "spiffe://example.org/ns/oo/sa/documentserver", &[&ca]);
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            mode: docmesh_proxy::config::inbound::InboundMode::Strict,
            mesh: MeshServer::Mtls(identity),
            handshake_timeout: Duration::from_millis(300),
            ..InboundOptions::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(side.addr).await.unwrap();
    // The start of a TLS record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.is_empty());
    assert_eq!(
        metric(
            &side.metrics,
            "docmesh_inbound_tls_handshake_failures_total"
        ),
        1.0
    );
    assert!(app.raw_text().is_empty());
}

#[tokio::test]
async fn http2_settings_announce_the_stream_limit_and_rapid_resets_get_goaway() {
    let app = RecordingApp::start().await;
    let side = inbound_with(
        &app,
        LimitsConfig {
            h2_max_concurrent_streams: 7,
            h2_max_pending_accept_reset_streams: 5,
            ..LimitsConfig::default()
        },
    )
    .await;
    let tcp = TcpStream::connect(side.addr).await.unwrap();
    let (client, mut conn) = bounded(h2::client::handshake(tcp)).await.unwrap();
    let mut client = client;
    // The client learns the server's SETTINGS while the first exchange runs.
    let req = http::Request::get("http://app/first").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = bounded(async {
        tokio::select! {
            r = resp => r,
            r = &mut conn => panic!("connection ended early: {r:?}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    let conn_task = tokio::spawn(conn);

    // Rapid reset: open streams and cancel them at once, many times.
    let outcome = bounded(async {
        for i in 0..2000 {
            let mut c = match client.clone().ready().await {
                Ok(c) => c,
                Err(e) => return Some(e),
            };
            let req = http::Request::get(format!("http://app/r{i}"))
                .body(())
                .unwrap();
            match c.send_request(req, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(e) => return Some(e),
            }
        }
        None
    })
    .await;
    let err = match outcome {
        Some(e) => e,
        None => bounded(conn_task).await.unwrap().unwrap_err(),
    };
    assert!(
        err.is_go_away() || err.is_io() || err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{err:?}"
    );
    still_serving(side.addr).await;
}

/// Every `[limits]` request check applies on an outbound listener too (the local app is a
/// client like any other): 431 below and far past the guard's cut-off, 414, 413 for a
/// declared and for a chunked body, 408 for a silent body, slowloris; each with its cause,
/// counted on the outbound's metrics, nothing reaching the upstream; normal requests pass.
#[tokio::test]
async fn outbound_listeners_apply_every_request_limit() {
    let app = RecordingApp::start().await;
    let out = start_outbound(
        app.addr,
        Protocol::Http1,
        LimitsConfig {
            header_read_timeout: Duration::from_millis(300),
            body_idle_timeout: Duration::from_millis(300),
            ..small_limits()
        },
    )
    .await;
    expect_answer(out.addr, &request_with("", "/fine"), 200, &[]).await;

    let big = format!("x-big: {}\r\n", "v".repeat(5000));
    let req = request_with(&big, "/");
    expect_answer(out.addr, &req, 431, &["limits.max_header_bytes"]).await;
    let text = send_while_reading(out.addr, huge_head(1 << 20)).await;
    assert_answer(&text, 431, &["\"hop\":\"outbound\""]);

    let long = format!("/{}", "a".repeat(300));
    expect_answer(out.addr, &request_with("", &long), 414, &[]).await;

    expect_answer(out.addr, POST_200, 413, &[PAYLOAD]).await;
    expect_answer(out.addr, &chunked_upload(), 413, &[PAYLOAD]).await;
    assert!(app.requests().iter().all(|r| r.body.len() < 256));

    silent_body(out.addr, &out.metrics).await;
    slowloris(out.addr).await;

    assert_eq!(
        app.requests()
            .iter()
            .filter(|r| r.uri != "/fine" && r.uri != "/upload/doc" && r.uri != "/x")
            .count(),
        0,
        "{:?}",
        app.requests()
    );
    for (cause, n) in [
        ("request-header-too-large", 2.0),
        ("uri-too-long", 1.0),
        ("payload-too-large", 2.0),
        ("request-body-timeout", 1.0),
    ] {
        assert_eq!(
            rejections(&out.metrics, cause),
            n,
            "{cause}: {}",
            out.metrics.encode().unwrap()
        );
    }
    still_serving(out.addr).await;
}

/// HTTP/2: a header list over `max_header_bytes` (and within the advertised list size, twice
/// that) gets the proxy's 431 with its cause; past the advertised size the h2 layer answers
/// 431 itself or refuses the stream; the connection keeps serving either way.
#[tokio::test]
async fn http2_header_lists_over_the_limit_get_431() {
    let app = RecordingApp::start().await;
    let side = inbound_with(&app, small_limits()).await;
    let tcp = TcpStream::connect(side.addr).await.unwrap();
    let (client, conn) = bounded(h2::client::handshake(tcp)).await.unwrap();
    tokio::spawn(conn);
    let send = |value: String| {
        let client = client.clone();
        async move {
            let mut client = bounded(client.ready()).await.unwrap();
            let req = http::Request::get("http://app/h2")
                .header("x-big", value)
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            bounded(resp).await
        }
    };
    let resp = send("v".repeat(6000)).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["docmesh-error"], "request-header-too-large");
    match send("v".repeat(9000)).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e:?}"),
    }
    let resp = send("small".into()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(app.requests().iter().all(|r| r.uri.ends_with("/h2")));
    assert_eq!(app.requests().len(), 1);
}

/// The head guard over the mesh hop's mTLS (HTTP/1 over TLS 1.3): a huge head from a
/// verified peer gets the proxy's 431, after a normal request on the same connection.
#[tokio::test]
async fn an_oversized_head_over_mtls_gets_the_proxys_431() {
    const SERVER: &str = "spiffe://example.org/ns/oo/sa/documentserver";
    let ca = dev_ca("example.org");
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            mode: docmesh_proxy::config::inbound::InboundMode::Strict,
            mesh: MeshServer::Mtls(identity_for(&ca, SERVER, &[&ca])),
            limits: small_limits(),
            ..InboundOptions::default()
        },
    )
    .await;
    let client = identity_for(&ca, "spiffe://example.org/ns/oo/sa/integrator", &[&ca]);
    let config = client.client_config(&SERVER.parse().unwrap(), &[b"http/1.1"]);
    let tcp = TcpStream::connect(side.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("docmesh").unwrap();
    let tls = bounded(tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let mut bytes = b"GET /first HTTP/1.1\r\nhost: app\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nhost: app\r\nx-big: ");
    bytes.extend(std::iter::repeat_n(b'v', 1 << 20));
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut out = Vec::new();
    let _ = bounded(r.read_to_end(&mut out)).await;
    drop(writer);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&text), ["200", "431"], "{text}");
    assert!(text.contains(TOO_LARGE), "{text}");
    assert_eq!(app.requests().len(), 1);
}

/// A request target longer than hyper's own limit (65 534 bytes) on a fresh connection, with
/// the default limits (where the head itself is still under the guard's cut-off): the
/// proxy's `414 uri-too-long`, not the parser's bare 414.
#[tokio::test]
async fn a_huge_request_target_gets_the_proxys_414() {
    let app = RecordingApp::start().await;
    let side = start_inbound(app.addr, InboundOptions::default()).await;
    let long = format!("/{}", "a".repeat(70_000));
    let text = send_while_reading(side.addr, request_with("", &long)).await;
    let parts = [
        "docmesh-error: uri-too-long",
        "limits.max_uri_bytes (16384)",
    ];
    assert_answer(&text, 414, &parts);
    assert!(app.requests().is_empty());
    still_serving(side.addr).await;
}
