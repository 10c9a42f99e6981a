//! `[limits]` through a real inbound sidecar (raw bytes over TCP on 127.0.0.1): 431/414/413
//! with their `docmesh-error` cause, slowloris and silent bodies cut off, connection slots,
//! TLS handshake timeout, HTTP/2 stream limits and rapid reset. After each attack the proxy
//! still serves normal traffic.

mod harden_support;

use std::time::Duration;

use docmesh_proxy::config::limits::{BodyLimitRoute, LimitsConfig};
use docmesh_proxy::inbound::MeshServer;
use harden_support::*;
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

fn request_with(extra: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn oversized_heads_get_431_414_and_413_with_their_cause_and_never_reach_the_app() {
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            limits: small_limits(),
            ..InboundOptions::default()
        },
    )
    .await;

    let many: String = (0..25).map(|i| format!("x-h{i}: v\r\n")).collect();
    let text = raw_exchange(side.addr, &request_with(&many, "/")).await;
    assert_eq!(status_of(&text), 431, "{text}");
    assert!(
        text.contains("docmesh-error: request-header-too-large"),
        "{text}"
    );
    assert!(text.contains("limits.max_headers"), "{text}");

    let big = format!("x-big: {}\r\n", "v".repeat(5000));
    let text = raw_exchange(side.addr, &request_with(&big, "/")).await;
    assert_eq!(status_of(&text), 431, "{text}");
    assert!(text.contains("limits.max_header_bytes"), "{text}");

    // Far past the limit the parser itself cuts the head off (bare 431, nothing buffered).
    let huge = format!("x-big: {}\r\n", "v".repeat(40_000));
    let text = raw_exchange(side.addr, &request_with(&huge, "/")).await;
    assert_eq!(status_of(&text), 431, "{text}");

    let long = format!("/{}", "a".repeat(300));
    let text = raw_exchange(side.addr, &request_with("", &long)).await;
    assert_eq!(status_of(&text), 414, "{text}");
    assert!(text.contains("docmesh-error: uri-too-long"), "{text}");

    let post = b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ncontent-length: 200\r\nconnection: close\r\n\r\n";
    let text = raw_exchange(side.addr, post).await;
    assert_eq!(status_of(&text), 413, "{text}");
    assert!(text.contains("docmesh-error: payload-too-large"), "{text}");

    assert!(
        app.requests().is_empty(),
        "nothing reaches the app: {:?}",
        app.requests()
    );
    assert_eq!(
        metric(&side.metrics, "docmesh_limit_rejections_total"),
        4.0,
        "{}",
        side.metrics.encode().unwrap()
    );

    // A chunked body past the route limit is cut off: the app never gets it whole.
    let mut chunked = b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"40\r\n");
        chunked.extend_from_slice(&[b'z'; 64]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let text = raw_exchange(side.addr, &chunked).await;
    assert_eq!(status_of(&text), 413, "{text}");
    assert!(text.contains("docmesh-error: payload-too-large"), "{text}");
    assert!(app.requests().iter().all(|r| r.body.len() < 256));

    // Under the limits everything passes.
    let ok = b"POST /upload/doc HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\nconnection: close\r\n\r\n";
    let mut with_body = ok.to_vec();
    with_body.extend_from_slice(&[b'y'; 100]);
    let text = raw_exchange(side.addr, &with_body).await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.contains("x-app-body-len: 100"), "{text}");
    still_serving(side.addr).await;
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            limits: LimitsConfig {
                header_read_timeout: Duration::from_millis(300),
                ..LimitsConfig::default()
            },
            ..InboundOptions::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(side.addr).await.unwrap();
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
    assert!(app.requests().is_empty());
    still_serving(side.addr).await;
}

#[tokio::test]
async fn a_silent_request_body_is_cut_off_by_the_body_idle_timeout() {
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            limits: LimitsConfig {
                body_idle_timeout: Duration::from_millis(300),
                ..LimitsConfig::default()
            },
            ..InboundOptions::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(side.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // The client never sends the rest: the proxy answers or closes within the deadline.
    let text = read_to_close(&mut s).await;
    assert_ne!(status_of(&text), 200, "{text}");
    assert!(app.requests().iter().all(|r| r.body.len() != 100));
    still_serving(side.addr).await;
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_closed_and_counted() {
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            limits: LimitsConfig {
                max_connections_per_listener: 2,
                ..LimitsConfig::default()
            },
            ..InboundOptions::default()
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
    let side = start_inbound(
        app.addr,
        InboundOptions {
            limits: LimitsConfig {
                h2_max_concurrent_streams: 7,
                h2_max_pending_accept_reset_streams: 5,
                ..LimitsConfig::default()
            },
            ..InboundOptions::default()
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
