//! App probes against real servers on loopback, through a real admin server.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;
use crate::admin::{AdminServer, AdminState};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// An HTTP/1 app: `/ok` answers 200, `/moved` 302, anything else 500; it also checks the
/// probe header when one is sent.
async fn http_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let header_ok = req
                        .headers()
                        .get("x-probe")
                        .is_none_or(|v| v.as_bytes() == b"yes");
                    let status = match req.uri().path() {
                        "/ok" if header_ok => StatusCode::OK,
                        "/moved" => StatusCode::FOUND,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

/// A gRPC server (HTTP/2 cleartext) answering `grpc.health.v1.Health/Check` as the published
/// health protocol says: SERVING for the whole server and `docs`, NOT_SERVING for `conv`,
/// grpc-status 5 (NOT_FOUND) for any other service.
async fn grpc_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let service = String::from_utf8(body.get(7..).unwrap_or_default().to_vec())
                        .unwrap_or_default();
                    let (code, status) = match service.as_str() {
                        "" | "docs" => ("0", Some(1u8)),
                        "conv" => ("0", Some(2)),
                        _ => ("5", None),
                    };
                    let frame = match status {
                        Some(s) => vec![0, 0, 0, 0, 2, 0x08, s],
                        None => vec![],
                    };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    let body = http_body_util::StreamBody::new(futures::stream::iter(vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(frame))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ]));
                    let mut r = Response::new(body);
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

/// A loopback port with nothing listening.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn admin(probes: &str) -> AdminServer {
    let state = AdminState {
        lifecycle: Lifecycle::new(),
        metrics: Metrics::new(),
        identity: None,
    };
    let probes = AppProbes::from_json(probes).unwrap();
    AdminServer::bind_with_probes(SocketAddr::from(([127, 0, 0, 1], 0)), state, probes)
        .await
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "pod")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_tcp_and_grpc_probes_pass_and_fail_as_the_app_answers() {
    let http = http_app().await;
    let grpc = grpc_app().await;
    let closed = closed_port().await;
    let probes = serde_json::json!({
        "web/readiness": {"httpGet": {"path": "/ok", "port": http,
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}},
        "web/startup": {"httpGet": {"path": "/moved", "port": http}, "timeoutSeconds": 3},
        "web/liveness": {"httpGet": {"path": "/broken", "port": http}},
        "web/badheader": {"httpGet": {"path": "/ok", "port": http,
            "httpHeaders": [{"name": "X-Probe", "value": "no"}]}},
        "tcp/liveness": {"tcpSocket": {"port": http}},
        "tcp/readiness": {"tcpSocket": {"port": closed}},
        "g/liveness": {"grpc": {"port": grpc}},
        "g/readiness": {"grpc": {"port": grpc, "service": "docs"}},
        "g/startup": {"grpc": {"port": grpc, "service": "conv"}},
        "g/other": {"grpc": {"port": grpc, "service": "nope"}},
    });
    let server = admin(&probes.to_string()).await;
    let addr = server.local_addr();
    for (path, want) in [
        ("web/readiness", StatusCode::OK),
        ("web/startup", StatusCode::OK),
        ("web/liveness", StatusCode::SERVICE_UNAVAILABLE),
        ("web/badheader", StatusCode::SERVICE_UNAVAILABLE),
        ("tcp/liveness", StatusCode::OK),
        ("tcp/readiness", StatusCode::SERVICE_UNAVAILABLE),
        ("g/liveness", StatusCode::OK),
        ("g/readiness", StatusCode::OK),
        ("g/startup", StatusCode::SERVICE_UNAVAILABLE),
        ("g/other", StatusCode::SERVICE_UNAVAILABLE),
        ("web/unknown", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = get(addr, &format!("/app-health/{path}")).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (_, body) = get(addr, "/app-health/web/liveness").await;
    assert!(body.contains("500"), "{body}");
    let (_, body) = get(addr, "/app-health/g/startup").await;
    assert!(body.contains("NOT_SERVING"), "{body}");
    // The other admin endpoints still answer.
    assert_eq!(get(addr, "/live").await.0, StatusCode::OK);
}

#[test]
fn bad_probe_configs_are_refused_with_the_reason() {
    for (json, want) in [
        ("not json", "not a JSON object"),
        (r#"{"a/b": {}}"#, "exactly one of"),
        (
            r#"{"ab": {"tcpSocket": {"port": 1}}}"#,
            "<container>/<probe>",
        ),
        (
            r#"{"a/b": {"httpGet": {"port": 1, "scheme": "HTTPS"}}}"#,
            "scheme: HTTP",
        ),
        (
            r#"{"a/b": {"httpGet": {"port": 1, "path": "x"}}}"#,
            "absolute path",
        ),
        (
            r#"{"a/b": {"tcpSocket": {"port": 70000}}}"#,
            "not a JSON object",
        ),
    ] {
        let err = AppProbes::from_json(json).unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
    assert_eq!(
        AppProbes::from_json(r#"{"a/b": {"tcpSocket": {"port": 8000}}}"#)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn health_messages_round_trip_the_wire_format() {
    assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
    assert_eq!(
        &health_request("ab")[..],
        &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
    );
    assert_eq!(
        health_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])),
        Some(1)
    );
    assert_eq!(health_status(Bytes::from_static(&[0, 0, 0, 0, 0])), Some(0));
    assert_eq!(
        health_status(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])),
        None
    );
    assert_eq!(health_status(Bytes::from_static(&[1, 0])), None);
}
