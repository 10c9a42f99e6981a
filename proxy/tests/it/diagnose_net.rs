//! `diagnose` against real sockets on loopback: unresolvable name, closed port, dropped SYNs
//! (a listener whose accept queue is full), a plaintext peer, a silent peer, and the HTTP
//! verdicts (401/403 from the peer's docmesh or from the app, 5xx, health body).

use std::sync::Arc;
use std::time::Duration;

use docmesh_proxy::diagnose::{diagnose, StepStatus, Target, Timeouts, TlsClient};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn statuses(r: &docmesh_proxy::diagnose::Report) -> Vec<(&'static str, StepStatus)> {
    r.steps.iter().map(|s| (s.name, s.status)).collect()
}

fn cause(r: &docmesh_proxy::diagnose::Report) -> String {
    r.finding
        .as_ref()
        .map(|f| f.cause.clone())
        .unwrap_or_default()
}

/// A server that answers every connection with `response` once it has read a request head.
async fn fixed_http(response: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn plain(port: u16, path: &str) -> Target {
    Target::from_url(&format!("http://127.0.0.1:{port}{path}")).unwrap()
}

fn any_tls_client() -> TlsClient {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    TlsClient {
        config: Arc::new(config),
        our_id: None,
    }
}

#[tokio::test]
async fn unresolvable_name() {
    let t = Target::from_url("https://nonexistent.invalid:8443/healthcheck").unwrap();
    let r = diagnose(&t, None, &Timeouts::default()).await;
    assert_eq!(cause(&r), "dns-failure");
    assert_eq!(
        statuses(&r),
        vec![
            ("dns", StepStatus::Failed),
            ("tcp", StepStatus::Skipped),
            ("tls", StepStatus::Skipped),
            ("identity", StepStatus::Skipped),
            ("http", StepStatus::Skipped),
        ]
    );
    assert!(
        r.to_text().contains("nonexistent.invalid"),
        "{}",
        r.to_text()
    );
}

#[tokio::test]
async fn closed_port() {
    let port = crate::support::closed_port().port();
    let r = diagnose(&plain(port, "/"), None, &Timeouts::default()).await;
    assert_eq!(cause(&r), "connect-refused", "{}", r.to_text());
    assert_eq!(r.steps[1].status, StepStatus::Failed);
    assert!(r.finding.unwrap().summary.contains(&port.to_string()));
}

#[tokio::test(start_paused = true)]
async fn dropped_packets_are_a_connect_timeout() {
    // A listener with a zero backlog whose one queue slot is taken and never accepted: the
    // kernel drops every further SYN, exactly like a firewall DROP rule.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let _filler = TcpStream::connect(addr).await.unwrap();

    let t = Timeouts {
        connect: Duration::from_secs(3),
        ..Timeouts::default()
    };
    let r = diagnose(&plain(addr.port(), "/"), None, &t).await;
    assert_eq!(cause(&r), "connect-timeout", "{}", r.to_text());
    assert!(r.finding.unwrap().summary.contains("dropped"));
    drop(sock);
}

#[tokio::test]
async fn plaintext_peer() {
    // Like nginx or any HTTP server: garbage in (our ClientHello), 400 out.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let t = Target::from_url(&format!("https://127.0.0.1:{port}/")).unwrap();
    let r = diagnose(&t, Some(&any_tls_client()), &Timeouts::default()).await;
    assert_eq!(cause(&r), "tls-plaintext-peer", "{}", r.to_text());
    assert_eq!(r.steps[2].name, "tls");
    assert_eq!(r.steps[2].status, StepStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn silent_peer_is_a_response_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let r = diagnose(&plain(port, "/"), None, &Timeouts::default()).await;
    assert_eq!(cause(&r), "response-timeout", "{}", r.to_text());
    drop(l);
}

#[tokio::test]
async fn http_verdicts() {
    let cases: [(&'static str, Option<&str>, &str, &str); 7] = [
        (
            "HTTP/1.1 403 Forbidden\r\ndocmesh-error: forbidden\r\ncontent-length: 101\r\n\r\n{\"cause\":\"forbidden\",\"status\":403,\"hop\":\"inbound\",\"detail\":\"no rule allows the caller\",\"trace_id\":\"x\"}",
            None,
            "forbidden",
            "no rule allows the caller",
        ),
        (
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
            None,
            "unauthenticated",
            "app behind the peer answered 401",
        ),
        (
            "HTTP/1.1 502 Bad Gateway\r\ndocmesh-error: connect-refused\r\ncontent-length: 36\r\n\r\n{\"detail\":\"app port 8000 is closed\"}",
            None,
            "connect-refused",
            "app port 8000 is closed",
        ),
        (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
            None,
            "upstream-5xx",
            "answered 503",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfalse",
            Some("true"),
            "unexpected-response",
            "unhealthy",
        ),
        (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            None,
            "unexpected-response",
            "404",
        ),
        ("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue", Some("true"), "", ""),
    ];
    for (response, expect_body, want_cause, want_text) in cases {
        let port = fixed_http(response).await;
        let mut t = plain(port, "/healthcheck");
        t.expect_body = expect_body.map(str::to_owned);
        let r = diagnose(&t, None, &Timeouts::default()).await;
        assert_eq!(cause(&r), want_cause, "{}", r.to_text());
        if want_cause.is_empty() {
            assert!(r.ok);
            assert!(r.steps.iter().all(|s| s.status != StepStatus::Failed));
            continue;
        }
        let f = r.finding.clone().unwrap();
        assert!(f.summary.contains(want_text), "{}", r.to_text());
        assert!(!f.checks.is_empty());
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["finding"]["cause"], want_cause);
        assert_eq!(json["steps"][4]["name"], "http");
        assert_eq!(json["steps"][4]["status"], "failed");
    }
}

#[tokio::test]
async fn the_request_carries_a_trace_id_to_look_up() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    });
    let r = diagnose(&plain(port, "/"), None, &Timeouts::default()).await;
    let head = server.await.unwrap();
    assert!(r.ok, "{}", r.to_text());
    assert!(
        head.contains(&format!("traceparent: 00-{}-", r.trace_id)),
        "{head}"
    );
}
