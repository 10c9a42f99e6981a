//! The route's `timeouts.stream_idle` reaches the WebSocket splice of the outbound sidecar: an
//! upgraded connection that stays silent is closed on both sides. The timer itself (reset by
//! traffic either way, exact deadline) is tested on paused time in `http::upgrade`.

use std::time::{Duration, Instant};

use crate::support::*;
use docmesh_proxy::config::resilience::ResilienceConfig;
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use tokio::io::AsyncReadExt;

const IDLE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_silent_websocket_is_closed_after_the_routes_stream_idle() {
    let app = start_http_app().await;
    let opts = PairOptions::default();
    let (lifecycle, metrics) = (Lifecycle::new(), Metrics::new());
    let inbound = start_inbound(app, &opts, &lifecycle, &metrics).await;
    let res: ResilienceConfig = toml::from_str(
        r#"
        [[services.svc.routes]]
        path_prefix = "/ws"
        timeouts = { stream_idle = "300ms" }
        "#,
    )
    .unwrap();
    let outbound = start_outbound_with(
        vec![inbound.to_string()],
        &opts,
        &lifecycle,
        &metrics,
        Some(&res),
    )
    .await;

    let mut c = h1_client(outbound).await;
    let req = ws_request("/ws", "dGhlIHNhbXBsZSBub25jZQ==");
    let mut resp = bounded(c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 101);
    let up = bounded(hyper::upgrade::on(&mut resp)).await.unwrap();
    let mut ws = hyper_util::rt::TokioIo::new(up);
    let (op, hello) = bounded(ws_read(&mut ws)).await.unwrap();
    assert_eq!((op, hello.as_slice()), (1, &b"hello"[..]));
    // Taken before the last exchange: the sidecar's last byte (the echo) comes after it.
    let last_traffic = Instant::now();
    ws_write(&mut ws, b"one", true).await.unwrap();
    let (_, reply) = bounded(ws_read(&mut ws)).await.unwrap();
    assert_eq!(reply, b"echo: one");

    // Nobody sends anything more: the outbound sidecar closes the connection (an EOF, or a
    // reset), never before the idle limit has passed since the last exchange.
    let mut buf = [0u8; 16];
    let end = bounded(ws.read(&mut buf)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(
        last_traffic.elapsed() >= IDLE,
        "closed after {:?}",
        last_traffic.elapsed()
    );
}
