//! The data path with a plaintext mesh hop (explicit mode, real sockets on 127.0.0.1):
//! HTTP/1.1, HTTP/2, opaque TCP, WebSocket, protocol detection, error causes and the strict
//! inbound's refusal of plaintext. The mTLS variants are in `mtls_path.rs`.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use docmesh_proxy::config::inbound::InboundMode;
use docmesh_proxy::config::outbound::Protocol;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn http1_keeps_host_and_forwarded_headers_and_drops_hop_by_hop() {
    let app = start_http_app().await;
    let pair = Pair::start(app, PairOptions::default()).await;
    let mut c = h1_client(pair.outbound).await;
    for i in 0..3 {
        let req = http::Request::get(format!("/doc/{i}"))
            .header("host", "documentserver.example")
            .header("x-forwarded-host", "tenant1.example.com")
            .header("x-forwarded-proto", "https")
            .header("connection", "keep-alive, x-custom-hop")
            .header("keep-alive", "timeout=5")
            .header("x-custom-hop", "secret")
            .body(full(Bytes::new()))
            .unwrap();
        let resp = bounded(c.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-seen-host"], "documentserver.example");
        assert_eq!(h["x-seen-xfh"], "tenant1.example.com");
        assert_eq!(h["x-seen-xfp"], "https");
        assert_eq!(h["x-seen-path"], format!("/doc/{i}").as_str());
        assert_eq!(h["x-seen-version"], "HTTP/1.1");
        assert_eq!(h["x-seen-keepalive"], "", "keep-alive is hop-by-hop");
        assert_eq!(
            h["x-seen-custom-hop"], "",
            "headers named in Connection are hop-by-hop"
        );
        assert_eq!(text(resp).await, "hello from the app");
    }
    // A streamed POST body comes back intact.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post("/echo")
        .header("host", "documentserver.example")
        .body(full(body.clone()))
        .unwrap();
    let resp = bounded(c.send_request(req)).await.unwrap();
    let got = bounded(http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), body.len());
    assert!(got == body);
}

#[tokio::test]
async fn http2_prior_knowledge_with_concurrent_streams() {
    let app = start_http_app().await;
    let pair = Pair::start(app, PairOptions::default()).await;
    let c = h2_client(pair.outbound).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://docs.example:8080/echo?{i}"))
                .header("x-forwarded-host", "tenant.example")
                .body(full(format!("stream {i}")))
                .unwrap();
            let resp = bounded(c.send_request(req)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
            assert_eq!(resp.headers()["x-seen-host"], "docs.example:8080");
            assert_eq!(resp.headers()["x-seen-xfh"], "tenant.example");
            assert_eq!(text(resp).await, format!("stream {i}"));
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
}

#[tokio::test]
async fn opaque_tcp_with_half_close() {
    let app = start_tcp_echo().await;
    let pair = Pair::start(app, PairOptions::default()).await;
    let mut s = TcpStream::connect(pair.outbound).await.unwrap();
    // Not HTTP: detection decides opaque from the first bytes.
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&msg).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: we are done sending, still reading
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, n) = bounded(async { tokio::join!(write, read) }).await;
    n.unwrap();
    assert!(
        got == msg,
        "echo differs ({} of {} bytes)",
        got.len(),
        msg.len()
    );
}

#[tokio::test]
async fn server_speaks_first_is_not_stalled_past_the_detect_timeout() {
    let app = start_banner_server(b"220 smtp ready\r\n").await;
    // Detection on: the client waits for the banner and sends nothing.
    let opts = PairOptions {
        detect_timeout: Duration::from_millis(100),
        ..PairOptions::default()
    };
    let pair = Pair::start(app, opts).await;
    let mut s = TcpStream::connect(pair.outbound).await.unwrap();
    let mut banner = [0u8; 16];
    bounded(s.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"220 smtp ready\r\n");
    s.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    bounded(s.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"EHLO x\r\n");
    assert!(pair
        .metrics
        .encode()
        .unwrap()
        .contains("docmesh_outbound_detect_timeouts_total 1"));

    // Declared opaque: no detection at all, so even a long detect timeout never delays it.
    let opts = PairOptions {
        protocol: Protocol::Opaque,
        detect_timeout: Duration::from_secs(3600),
        ..PairOptions::default()
    };
    let pair = Pair::start(app, opts).await;
    let mut s = TcpStream::connect(pair.outbound).await.unwrap();
    bounded(s.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"220 smtp ready\r\n");
}

#[tokio::test]
async fn websocket_upgrade_passes_both_ways() {
    let app = start_http_app().await;
    let pair = Pair::start(app, PairOptions::default()).await;
    let mut c = h1_client(pair.outbound).await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut resp = bounded(c.send_request(ws_request("/ws", key)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        ws_accept(key).as_str()
    );
    let up = bounded(hyper::upgrade::on(&mut resp)).await.unwrap();
    let mut ws = hyper_util::rt::TokioIo::new(up);
    // Server to client first, then client to server and back.
    let (op, hello) = bounded(ws_read(&mut ws)).await.unwrap();
    assert_eq!((op, hello.as_slice()), (1, &b"hello"[..]));
    for msg in ["one", "two", "three"] {
        ws_write(&mut ws, msg.as_bytes(), true).await.unwrap();
        let (op, reply) = bounded(ws_read(&mut ws)).await.unwrap();
        assert_eq!(op, 1);
        assert_eq!(reply, format!("echo: {msg}").as_bytes());
    }
}

#[tokio::test]
async fn unreachable_and_unresolvable_services_answer_with_their_cause() {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let opts = PairOptions::default();
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let refused = start_outbound(vec![closed.to_string()], &opts, &lifecycle, &metrics).await;
    let mut c = h1_client(refused).await;
    let resp = bounded(c.send_request(get("/", "svc"))).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["docmesh-error"], "connect-refused");
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["cause"], "connect-refused");
    assert_eq!(body["status"], 502);
    assert_eq!(body["hop"], "outbound");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&closed.to_string()),
        "{body}"
    );

    let metrics2 = Metrics::new();
    let nodns = start_outbound(
        vec!["no-such-host.invalid:80".into()],
        &opts,
        &lifecycle,
        &metrics2,
    )
    .await;
    let mut c = h1_client(nodns).await;
    let resp = bounded(c.send_request(get("/", "svc"))).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["docmesh-error"], "dns-failure");
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no-such-host.invalid"),
        "{body}"
    );
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_and_counts_it() {
    let app = start_http_app().await;
    let opts = PairOptions {
        mode: InboundMode::Strict,
        ..PairOptions::default()
    };
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let inbound = start_inbound(app, &opts, &lifecycle, &metrics).await;
    assert_plaintext_unanswered(inbound, "connection must close without an answer").await;
    assert!(
        metrics
            .encode()
            .unwrap()
            .contains("docmesh_inbound_plaintext_refused_total 1"),
        "{}",
        metrics.encode().unwrap()
    );
}
