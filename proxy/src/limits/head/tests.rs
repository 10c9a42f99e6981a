use super::*;
use crate::config::limits::LimitsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn guard(
    io: tokio::io::DuplexStream,
    limit: usize,
) -> (HeadGuard<tokio::io::DuplexStream>, Arc<HeadWatch>, Limits) {
    guard_uri(io, limit, 1 << 20)
}

fn guard_uri(
    io: tokio::io::DuplexStream,
    limit: usize,
    max_uri: usize,
) -> (HeadGuard<tokio::io::DuplexStream>, Arc<HeadWatch>, Limits) {
    let limits = Limits::new(&LimitsConfig {
        max_header_bytes: limit,
        ..LimitsConfig::default()
    });
    let watch = Arc::new(HeadWatch::default());
    let g = HeadGuard::new(
        io,
        Arc::clone(&watch),
        HeadParams::new(limit, max_uri),
        limits.clone(),
        Hop::Inbound,
    );
    (g, watch, limits)
}

fn request(body: &'static str, upgrade: bool) -> http::Request<http_body_util::Full<Bytes>> {
    let mut b = http::Request::post("/");
    if upgrade {
        b = b.extension(hyper::upgrade::on(http::Request::new(())));
    }
    b.body(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    )))
    .unwrap()
}

/// Reads until `total` bytes came through, each read returning data (see [`read_some`]).
async fn read_through(g: &mut HeadGuard<tokio::io::DuplexStream>, buf: &mut [u8], total: usize) {
    let mut n = 0;
    while n < total {
        n += read_some(g, buf).await;
    }
}

/// Reads until the guard ends the stream; returns how many bytes came through before.
async fn read_to_end(g: &mut HeadGuard<tokio::io::DuplexStream>, buf: &mut [u8]) -> usize {
    let mut seen = 0;
    loop {
        let n = g.read(buf).await.unwrap();
        if n == 0 {
            return seen;
        }
        seen += n;
    }
}

/// One read that must return data (never end of stream: the guard did not answer).
async fn read_some(g: &mut HeadGuard<tokio::io::DuplexStream>, buf: &mut [u8]) -> usize {
    let n = tokio::time::timeout(Duration::from_secs(10), g.read(buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "the guard ended the stream");
    n
}

#[test]
fn sizes_keep_the_guard_between_the_limit_and_the_parser() {
    for limit in [1, 4096, 10_000, 65_536, 1 << 24] {
        let p = HeadParams::new(limit, 1024);
        // One read of overcount can never make a head within the limit look too large.
        assert!(p.cut_off >= limit + p.read_cap, "{p:?}");
        // A few reads of undercount can never let hyper's cut-off come first.
        assert!(p.parser_max >= p.cut_off + 4 * p.read_cap, "{p:?}");
        assert!(p.read_cap <= 16 * 1024);
    }
}

#[tokio::test]
async fn reads_are_capped_and_small_heads_pass_untouched() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, _, _) = guard(server, 4096);
    let data = vec![b'a'; 3000];
    client.write_all(&data).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = g.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &data[..n]);
    assert!(n <= 4096, "{n}");
}

#[tokio::test]
async fn a_head_past_the_cut_off_gets_the_proxys_431_and_is_counted() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, _, limits) = guard(server, 4096);
    let head = vec![b'x'; 20_000];
    client.write_all(&head).await.unwrap();
    client.shutdown().await.unwrap();
    let seen = read_to_end(&mut g, &mut vec![0u8; 64 * 1024]).await;
    assert!(
        seen <= HeadParams::new(4096, 1024).cut_off,
        "hyper saw {seen} bytes"
    );
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        answer.contains("docmesh-error: request-header-too-large"),
        "{answer}"
    );
    assert!(
        answer.contains("limits.max_header_bytes (4096)"),
        "{answer}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    let json = answer.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["status"], 431);
    assert_eq!(v["hop"], "inbound");
    let metrics = crate::metrics::Metrics::new();
    limits.register_metrics(&metrics);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("docmesh_limit_rejections_total{cause=\"request-header-too-large\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn bodies_are_not_counted_and_the_next_head_is() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, watch, _) = guard(server, 4096);
    let mut buf = vec![0u8; 64 * 1024];
    // A request with a body: passive until the body ends.
    let mut req = request("body", false);
    assert_eq!(watch.on_request(&mut req), None);
    let end = req.extensions_mut().remove::<BodyEnd>().unwrap();
    client.write_all(&vec![b'b'; 100_000]).await.unwrap();
    read_through(&mut g, &mut buf, 100_000).await;
    drop(end);
    // Back in head state: a head past the cut-off is refused.
    client.write_all(&vec![b'h'; 10_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let head = read_to_end(&mut g, &mut buf).await;
    assert!(head < 10_000, "{head}");
}

#[tokio::test]
async fn requests_without_body_restart_the_count_and_101_turns_the_guard_off() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, watch, _) = guard(server, 4096);
    let mut buf = vec![0u8; 64 * 1024];
    // Many heads of 3000 bytes on one connection, each under the limit.
    for _ in 0..10 {
        client.write_all(&[b'g'; 3000]).await.unwrap();
        read_through(&mut g, &mut buf, 3000).await;
        watch.on_request(&mut request("", false));
    }
    // An upgrade answered with 101: whatever follows is not a head.
    let epoch = watch.on_request(&mut request("", true)).unwrap();
    watch.on_response(epoch, http::StatusCode::SWITCHING_PROTOCOLS);
    client.write_all(&vec![b'w'; 100_000]).await.unwrap();
    read_through(&mut g, &mut buf, 100_000).await;
    // A later request cannot turn it back on.
    watch.on_request(&mut request("", false));
    client.write_all(&vec![b'w'; 100_000]).await.unwrap();
    read_through(&mut g, &mut buf, 100_000).await;
}

#[tokio::test]
async fn an_upgrade_refused_by_the_app_counts_the_next_head() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, watch, _) = guard(server, 4096);
    let mut buf = vec![0u8; 64 * 1024];
    let epoch = watch.on_request(&mut request("", true)).unwrap();
    watch.on_response(epoch, http::StatusCode::OK);
    client.write_all(&vec![b'h'; 10_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let head = read_to_end(&mut g, &mut buf).await;
    assert!(head < 10_000, "{head}");
}

#[tokio::test]
async fn the_answer_waits_until_the_previous_response_is_flushed() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, _, _) = guard(server, 4096);
    // hyper wrote part of a response and has not flushed yet.
    g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        .await
        .unwrap();
    assert!(!g.clean);
    client.write_all(&vec![b'x'; 20_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0;
    // The guard trips, but must not answer before the flush: reads stall.
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(50), g.read(&mut buf)).await {
            Ok(r) => {
                assert!(r.unwrap() > 0);
                reads += 1;
            }
            Err(_) => break true,
        }
        if reads > 10 {
            break false;
        }
    };
    assert!(stalled);
    g.write_all(b"ok").await.unwrap();
    g.flush().await.unwrap();
    read_to_end(&mut g, &mut buf).await;
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 431 "),
        "{answer}"
    );
}

#[tokio::test]
async fn a_first_request_line_past_the_uri_limit_gets_the_proxys_414() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, _, _) = guard_uri(server, 65_536, 1024);
    // Empty lines first (skipped), then a request line longer than the URI limit (1024).
    client.write_all(b"\r\n\r\nGET /").await.unwrap();
    client.write_all(&[b'a'; 1100]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    read_to_end(&mut g, &mut buf).await;
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    assert!(answer.contains("docmesh-error: uri-too-long"), "{answer}");
    assert!(answer.contains("limits.max_uri_bytes (1024)"), "{answer}");
}

#[tokio::test]
async fn only_the_first_request_line_is_measured() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (mut g, watch, _) = guard_uri(server, 65_536, 1024);
    // A short request line, then a header line far longer than the URI limit: fine.
    let mut head = b"GET / HTTP/1.1\r\nx-long: ".to_vec();
    head.extend(std::iter::repeat_n(b'v', 20_000));
    client.write_all(&head).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    read_through(&mut g, &mut buf, head.len()).await;
    // After a parsed request, a later long line is not measured either (its start is not
    // known for sure); the parser and the limits check answer for it.
    watch.on_request(&mut request("", false));
    client.write_all(&[b'u'; 5000]).await.unwrap();
    read_through(&mut g, &mut buf, 5000).await;
}
