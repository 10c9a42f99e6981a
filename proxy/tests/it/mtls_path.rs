//! The data path over real mTLS (TLS 1.3, SPIFFE IDs, dev CA): HTTP/1.1, HTTP/2, opaque TCP
//! and WebSocket through an explicit-mode sidecar pair, and refusals with a clear cause for a
//! plaintext peer, an untrusted CA, a wrong SPIFFE ID and expired SVIDs.

use crate::support::*;
use bytes::Bytes;
use docmesh_proxy::config::inbound::InboundMode;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one GET through `outbound` and returns (status, docmesh-error, body).
async fn call(outbound: std::net::SocketAddr) -> (u16, String, String) {
    let mut c = h1_client(outbound).await;
    let resp = bounded(c.send_request(get("/", "documentserver")))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cause = resp
        .headers()
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cause, text(resp).await)
}

/// `per_conn` sequential HTTP/1.1 GETs on each of `conns` new app connections to `outbound`
/// (one after the other); returns each answer's `x-seen-version` (as the app saw the request)
/// and body.
async fn sequential_h1(
    outbound: std::net::SocketAddr,
    conns: usize,
    per_conn: usize,
) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    for _ in 0..conns {
        let mut c = h1_client(outbound).await;
        for _ in 0..per_conn {
            let resp = bounded(c.send_request(get("/", "documentserver")))
                .await
                .unwrap();
            let version = resp.headers()["x-seen-version"]
                .to_str()
                .unwrap()
                .to_owned();
            answers.push((version, text(resp).await));
        }
    }
    assert_eq!(answers.len(), conns * per_conn);
    answers
}

/// An HTTP/2 GET of `http://documentserver/`.
fn h2_get() -> http::Request<TestBody> {
    http::Request::get("http://documentserver/")
        .body(full(Bytes::new()))
        .unwrap()
}

/// Sends one GET through `outbound` (see [`call`]) and asserts it is refused with `502` and
/// `docmesh-error: cause`; returns the answer's body.
async fn expect_refusal(outbound: std::net::SocketAddr, cause: &str) -> String {
    let (status, got, body) = call(outbound).await;
    assert_eq!((status, got.as_str()), (502, cause), "{body}");
    body
}

fn detail(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn http1_http2_and_opaque_over_mtls() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let pair = Pair::start(app, healthy_mtls(&ca)).await;

    let mut c = h1_client(pair.outbound).await;
    for _ in 0..3 {
        let req = http::Request::post("/echo")
            .header("host", "documentserver.example")
            .header("x-forwarded-host", "tenant.example")
            .body(full("over mTLS"))
            .unwrap();
        let resp = bounded(c.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-seen-host"], "documentserver.example");
        assert_eq!(resp.headers()["x-seen-xfh"], "tenant.example");
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
        assert_eq!(text(resp).await, "over mTLS");
    }

    let h2 = h2_client(pair.outbound).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post("http://documentserver:80/echo")
                .body(full(format!("h2 {i}")))
                .unwrap();
            let resp = bounded(h2.send_request(req)).await.unwrap();
            assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
            assert_eq!(text(resp).await, format!("h2 {i}"));
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }

    // The inbound is strict: the requests above can only have arrived over mTLS.
    let echo = start_tcp_echo().await;
    let pair = Pair::start(echo, healthy_mtls(&ca)).await;
    let mut s = TcpStream::connect(pair.outbound).await.unwrap();
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&msg).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let (_, n) = bounded(async { tokio::join!(write, r.read_to_end(&mut got)) }).await;
    n.unwrap();
    assert!(
        got == msg,
        "opaque echo over mTLS differs ({} bytes)",
        got.len()
    );
}

#[tokio::test]
async fn websocket_over_mtls() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let pair = Pair::start(app, healthy_mtls(&ca)).await;
    let mut c = h1_client(pair.outbound).await;
    let req = http::Request::get("/ws")
        .header("host", "documentserver")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "x3JJHMbDL1EzLkh9GBhXDw==")
        .body(full(Bytes::new()))
        .unwrap();
    let mut resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut ws =
        hyper_util::rt::TokioIo::new(bounded(hyper::upgrade::on(&mut resp)).await.unwrap());
    assert_eq!(bounded(ws_read(&mut ws)).await.unwrap().1, b"hello");
    ws_write(&mut ws, b"ping", true).await.unwrap();
    assert_eq!(bounded(ws_read(&mut ws)).await.unwrap().1, b"echo: ping");
}

#[tokio::test]
async fn plaintext_peer_is_tls_plaintext_peer() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await; // no sidecar in front of it
    let opts = healthy_mtls(&ca);
    let outbound = start_outbound(
        vec![app.to_string()],
        &opts,
        &Lifecycle::new(),
        &Metrics::new(),
    )
    .await;
    let body = expect_refusal(outbound, "tls-plaintext-peer").await;
    assert!(detail(&body).contains(&app.to_string()), "{body}");
}

#[tokio::test]
async fn untrusted_ca_is_tls_untrusted_peer() {
    let ca = dev_ca("example.org");
    let rogue = dev_ca("example.org");
    let app = start_http_app().await;
    // The server's own bundle holds both roots, so its identity loads; ours holds only `ca`.
    let opts = mtls_options(
        identity(&svid(&ca, CLIENT_ID), &[&ca]),
        identity(&svid(&rogue, SERVER_ID), &[&ca, &rogue]),
    );
    let pair = Pair::start(app, opts).await;
    let body = expect_refusal(pair.outbound, "tls-untrusted-peer").await;
    assert!(detail(&body).contains("chain-to-bundle"), "{body}");
}

#[tokio::test]
async fn wrong_spiffe_id_is_identity_mismatch() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let impostor = "spiffe://example.org/ns/oo/sa/impostor";
    let opts = mtls_options(
        identity(&svid(&ca, CLIENT_ID), &[&ca]),
        identity(&svid(&ca, impostor), &[&ca]),
    );
    let pair = Pair::start(app, opts).await;
    let body = expect_refusal(pair.outbound, "identity-mismatch").await;
    let d = detail(&body);
    assert!(d.contains(impostor) && d.contains(SERVER_ID), "{d}");
}

#[tokio::test]
async fn expired_server_svid_is_untrusted_and_expired_client_svid_is_rejected() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    // The identity module refuses to load an expired SVID, so the expired side is TestTls.
    let opts = mtls_options(
        identity(&svid(&ca, CLIENT_ID), &[&ca]),
        TestTls::new(expired_svid(&ca, SERVER_ID), &[&ca]),
    );
    let pair = Pair::start(app, opts).await;
    let body = expect_refusal(pair.outbound, "tls-untrusted-peer").await;
    assert!(detail(&body).contains("expired"), "{body}");

    let opts = mtls_options(
        TestTls::new(expired_svid(&ca, CLIENT_ID), &[&ca]),
        identity(&svid(&ca, SERVER_ID), &[&ca]),
    );
    let pair = Pair::start(app, opts).await;
    expect_refusal(pair.outbound, "tls-rejected-by-peer").await;
    let metrics = pair.metrics.encode().unwrap();
    assert!(
        metrics.contains("docmesh_inbound_tls_handshake_failures_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn permissive_inbound_takes_mtls_and_plaintext_strict_only_mtls() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let mut opts = healthy_mtls(&ca);
    opts.mode = InboundMode::Permissive;
    let pair = Pair::start(app, opts).await;
    assert_eq!(call(pair.outbound).await.0, 200);
    // A client without a sidecar, straight to the inbound port.
    let resp = bounded(h1_client(pair.inbound).await.send_request(get("/", "x")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let pair = Pair::start(app, healthy_mtls(&ca)).await;
    assert_eq!(call(pair.outbound).await.0, 200);
    assert_plaintext_unanswered(pair.inbound, "strict port answered plaintext").await;
    let metrics = pair.metrics.encode().unwrap();
    assert!(
        metrics.contains("docmesh_inbound_plaintext_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled_on_both_hops() {
    use std::sync::atomic::Ordering;
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let (app_relay, app_conns) = start_counting_relay(app).await;
    let opts = healthy_mtls(&ca);
    let (lifecycle, metrics) = (Lifecycle::new(), Metrics::new());
    let inbound = start_inbound(app_relay, &opts, &lifecycle, &metrics).await;
    let (mesh_relay, mesh_conns) = start_counting_relay(inbound).await;
    let outbound = start_outbound(vec![mesh_relay.to_string()], &opts, &lifecycle, &metrics).await;

    // 30 sequential HTTP/1.1 requests from 3 app connections ride one HTTP/2 mesh connection.
    for (_, body) in sequential_h1(outbound, 3, 10).await {
        assert_eq!(body, "hello from the app");
    }
    // Without pooling the app side would see 30; a pooled connection can at most be missed
    // while its previous response is still being finished.
    let (mesh, app_side) = (
        mesh_conns.load(Ordering::SeqCst),
        app_conns.load(Ordering::SeqCst),
    );
    assert_eq!(
        mesh, 1,
        "HTTP/1.1 requests share one HTTP/2 mesh connection"
    );
    assert!(app_side <= 2, "app connections {app_side}");

    // 20 concurrent HTTP/2 streams ride the same mesh connection.
    let h2 = h2_client(outbound).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move { bounded(h2.send_request(h2_get())).await.unwrap().status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(bounded(t).await.unwrap(), 200);
    }
    // 20 concurrent HTTP/1.1 requests on 20 app connections: still the one mesh connection.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = h1_client(outbound).await;
                text(
                    bounded(c.send_request(get("/", "documentserver")))
                        .await
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(bounded(t).await.unwrap(), "hello from the app");
    }
    assert_eq!(
        mesh_conns.load(Ordering::SeqCst),
        1,
        "HTTP/1.1 and HTTP/2 requests share one mesh connection"
    );
}

#[tokio::test]
async fn without_mesh_http2_each_protocol_keeps_its_own_pooled_mesh_connections() {
    use std::sync::atomic::Ordering;
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let opts = PairOptions {
        mesh_http2: false,
        ..healthy_mtls(&ca)
    };
    let (lifecycle, metrics) = (Lifecycle::new(), Metrics::new());
    let inbound = start_inbound(app, &opts, &lifecycle, &metrics).await;
    let (mesh_relay, mesh_conns) = start_counting_relay(inbound).await;
    let outbound = start_outbound(vec![mesh_relay.to_string()], &opts, &lifecycle, &metrics).await;
    for (version, body) in sequential_h1(outbound, 3, 10).await {
        assert_eq!(version, "HTTP/1.1");
        assert_eq!(body, "hello from the app");
    }
    let mesh = mesh_conns.load(Ordering::SeqCst);
    assert!(mesh <= 2, "pooled HTTP/1.1 mesh connections: {mesh}");
    let mut h2 = h2_client(outbound).await;
    let resp = bounded(h2.send_request(h2_get())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mesh_conns.load(Ordering::SeqCst) - mesh,
        1,
        "HTTP/2 gets its own mesh connection"
    );
}

#[tokio::test]
async fn http1_requests_cross_the_mesh_as_http2_and_reach_the_app_as_they_were_sent() {
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let pair = Pair::start(app, healthy_mtls(&ca)).await;

    // HTTP/1.1 with a forged mark: the app sees HTTP/1.1, its Host, and no mark at all.
    let mut c = h1_client(pair.outbound).await;
    let mut req = get("/p?q=1", "documentserver:8080");
    req.headers_mut()
        .insert("docmesh-orig-proto", "HTTP/1.0".parse().unwrap());
    let resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(resp.headers()["x-seen-host"], "documentserver:8080");
    assert_eq!(resp.headers()["x-seen-path"], "/p");
    assert_eq!(resp.headers()["x-seen-orig-proto"], "");
    assert_eq!(text(resp).await, "hello from the app");

    // A chunked request body streams through and comes back whole.
    let body = vec![b'z'; 300_000];
    let req = http::Request::post("/echo")
        .header("host", "documentserver")
        .header("transfer-encoding", "chunked")
        .body(full(body.clone()))
        .unwrap();
    let resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await.into_bytes(), body);

    // HTTP/1.0 reaches the app as HTTP/1.0.
    let mut s = TcpStream::connect(pair.outbound).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: documentserver\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    bounded(s.read_to_end(&mut buf)).await.unwrap();
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(head.contains("x-seen-version: http/1.0"), "{head}");
    assert!(head.contains("x-seen-orig-proto: \r\n"), "{head}");
}

#[tokio::test]
async fn an_app_that_is_down_is_reported_by_the_inbound_hop() {
    let ca = dev_ca("example.org");
    let down = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let pair = Pair::start(down, healthy_mtls(&ca)).await;
    let body = expect_refusal(pair.outbound, "connect-refused").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hop"], "inbound", "{body}");
    assert!(v["detail"].as_str().unwrap().contains("the app"), "{body}");
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    use futures::SinkExt;
    use http_body_util::BodyExt;
    let ca = dev_ca("example.org");
    let app = start_http_app().await;
    let pair = Pair::start(app, healthy_mtls(&ca)).await;

    // A request whose body the test is still sending when the drain starts.
    let (mut tx, rx) = futures::channel::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(4);
    let body = http_body_util::StreamBody::new(rx).boxed();
    let mut c = h1_client(pair.outbound).await;
    let req = http::Request::post("/echo")
        .header("host", "documentserver")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move {
        let resp = c.send_request(req).await.unwrap();
        text(resp).await
    });
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
        b"first half, ",
    ))))
    .await
    .unwrap();
    // Wait until the request is in flight on both sidecars (one tracked connection each).
    bounded(async {
        while pair.lifecycle.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    pair.lifecycle.start_drain_because("test");
    let drained = tokio::spawn({
        let l = pair.lifecycle.clone();
        async move { l.drain_with_grace(WAIT).await }
    });
    // New connections are no longer accepted.
    bounded(async {
        while TcpStream::connect(pair.outbound).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        !drained.is_finished(),
        "drain must wait for the in-flight request"
    );

    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
        b"second half",
    ))))
    .await
    .unwrap();
    drop(tx);
    assert_eq!(bounded(pending).await.unwrap(), "first half, second half");
    assert_eq!(
        bounded(drained).await.unwrap(),
        docmesh_proxy::lifecycle::DrainOutcome::Clean
    );
}
