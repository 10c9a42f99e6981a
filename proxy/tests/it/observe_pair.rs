//! Observability through a real sidecar pair (two `docmesh-proxy run` processes, mTLS between
//! them): the trace id reaches the app and both proxies' access logs with a fresh span per
//! hop, with and without an incoming `traceparent`; error bodies carry it; and both admin
//! `/metrics` endpoints, read with a Prometheus text-format parser, count a known traffic mix
//! by service pair, status class and cause.

use std::convert::Infallible;
use std::net::SocketAddr;

use crate::support::*;
use http_body_util::Full;
use prometheus_parse::{Sample, Value};
use serde_json::Value as Json;

const BROKEN_ID: &str = "spiffe://example.org/ns/oo/sa/broken";

/// An app that answers with the trace headers it received, and `/status/N` with status N.
async fn trace_app(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<bytes::Bytes>>, Infallible> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let body = serde_json::json!({
        "traceparent": h("traceparent"),
        "tracestate": h("tracestate"),
        "x-request-id": h("x-request-id"),
    });
    let status = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u16);
    Ok(http::Response::builder()
        .status(status)
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap())
}

/// GET `path` through `outbound`: (status, `docmesh-error`, the body as JSON or null).
async fn send(
    outbound: SocketAddr,
    path: &str,
    traceparent: Option<&str>,
) -> (u16, Option<String>, Json) {
    let (head, body) = get_through(outbound, path, traceparent).await;
    let cause = head
        .headers
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        head.status.as_u16(),
        cause,
        serde_json::from_slice(&body).unwrap_or(Json::Null),
    )
}

/// `traceparent` fields: (trace id, parent id).
fn tp_fields(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn count(samples: &[Sample], labels: &[(&str, &str)]) -> f64 {
    value(samples, "docmesh_requests_total", labels)
}

/// The value of the one series of `metric` with `labels` (0 when there is none).
fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(
        found.len() <= 1,
        "{labels:?} matches several series: {found:?}"
    );
    found.first().map_or(0.0, |s| match s.value {
        Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_ids_access_logs_and_metrics_through_a_sidecar_pair() {
    let app = serve_app(trace_app).await;
    let echo = start_tcp_echo().await;
    let closed = closed_port();
    let mesh = ProcessMesh::new();
    let second_port = format!(
        "[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {}\n",
        echo.port()
    );
    let mut server = mesh.start_server(app.port(), &second_port).await;
    let inbound_echo = &server.listening["inbound.ports[1].listen"];
    let broken_and_echo = format!(
        "[[outbound.services]]\nname = \"broken\"\naddresses = [\"{closed}\"]\nspiffe_id = \"{BROKEN_ID}\"\n\
         [[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"broken\"\n\
         [[outbound.services]]\nname = \"echo\"\naddresses = [\"{inbound_echo}\"]\nspiffe_id = \"{SERVER_ID}\"\nprotocol = \"opaque\"\n\
         [[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n\
         [resilience.services.broken.retry]\nmax_attempts = 2\nbackoff_base = \"1ms\"\n"
    );
    let mut client = mesh.start_client(&server, &broken_and_echo).await;
    let to_docs = client.addr(FIRST_OUTBOUND);
    let to_broken = client.addr("outbound.listeners[1].listen");

    // 1. No incoming traceparent: the client proxy starts the trace.
    let (status, _, seen) = send(to_docs, "/started", None).await;
    assert_eq!(status, 200);
    let (trace, app_parent) = tp_fields(seen["traceparent"].as_str().unwrap());
    let out = client.access_line(|v| v["path"] == "/started").await;
    let inb = server.access_line(|v| v["path"] == "/started").await;
    assert_eq!(out["trace_id"], trace.as_str());
    assert_eq!(inb["trace_id"], trace.as_str());
    assert_eq!(
        out["parent_span_id"],
        Json::Null,
        "the client proxy started the trace"
    );
    assert_eq!(
        inb["parent_span_id"], out["span_id"],
        "inbound's parent is outbound's span"
    );
    assert_eq!(
        inb["span_id"],
        app_parent.as_str(),
        "the app's parent is the inbound's span"
    );
    assert_ne!(out["span_id"], inb["span_id"]);
    assert_eq!(out["request_id"], inb["request_id"]);
    assert_eq!(seen["x-request-id"], out["request_id"]);
    assert_eq!(
        (out["direction"].as_str(), inb["direction"].as_str()),
        (Some("outbound"), Some("inbound"))
    );
    assert_eq!(out["source"], CLIENT_ID);
    assert_eq!(out["destination"], SERVER_ID);
    assert_eq!(inb["source"], CLIENT_ID, "authenticated peer");
    assert_eq!(inb["destination"], SERVER_ID);
    assert_eq!(out["service"], "documentserver");
    assert_eq!(inb["status"], 200);

    // 2. An incoming traceparent is continued (and its sampled flag kept).
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let tp = format!("00-{caller_trace}-{caller_span}-00");
    let (status, _, seen) = send(to_docs, "/continued", Some(&tp)).await;
    assert_eq!(status, 200);
    let app_tp = seen["traceparent"].as_str().unwrap();
    assert!(
        app_tp.ends_with("-00"),
        "not sampled stays not sampled: {app_tp}"
    );
    let (trace, app_parent) = tp_fields(app_tp);
    assert_eq!(trace, caller_trace);
    let out = client.access_line(|v| v["path"] == "/continued").await;
    let inb = server.access_line(|v| v["path"] == "/continued").await;
    assert_eq!(out["trace_id"], caller_trace);
    assert_eq!(inb["trace_id"], caller_trace);
    assert_eq!(out["parent_span_id"], caller_span);
    assert_eq!(inb["parent_span_id"], out["span_id"]);
    assert_eq!(inb["span_id"], app_parent.as_str());
    let spans = [
        caller_span,
        out["span_id"].as_str().unwrap(),
        inb["span_id"].as_str().unwrap(),
    ];
    assert!(
        spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2],
        "{spans:?}"
    );

    // 3. The rest of a known traffic mix: one more 200, two app 500s, one app 404, and two
    //    requests to a service whose address is closed.
    assert_eq!(send(to_docs, "/ok", None).await.0, 200);
    assert_eq!(send(to_docs, "/status/500", None).await.0, 500);
    assert_eq!(send(to_docs, "/status/500", None).await.0, 500);
    assert_eq!(send(to_docs, "/status/404", None).await.0, 404);
    let tp = format!("00-{caller_trace}-{caller_span}-01");
    for _ in 0..2 {
        let (status, cause, body) = send(to_broken, "/x", Some(&tp)).await;
        assert_eq!((status, cause.as_deref()), (502, Some("connect-refused")));
        assert_eq!(
            body["trace_id"], caller_trace,
            "the error body names the trace: {body}"
        );
    }
    let failed = client.access_line(|v| v["service"] == "broken").await;
    assert_eq!(failed["cause"], "connect-refused");
    assert_eq!(failed["trace_id"], caller_trace);
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains(&closed.to_string()),
        "{failed}"
    );
    assert_eq!(
        failed["attempts"], 2,
        "a refused connect is retried once: {failed}"
    );

    // 4. Opaque TCP: one access line per connection on each side, with the bytes copied.
    let to_echo = client.addr("outbound.listeners[2].listen");
    let mut tcp = tokio::net::TcpStream::connect(to_echo).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"ping")
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut tcp).await.unwrap();
    let mut back = Vec::new();
    bounded(tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut back))
        .await
        .unwrap();
    assert_eq!(back, b"ping");
    drop(tcp);
    let out = client.access_line(|v| v["protocol"] == "tcp").await;
    let inb = server.access_line(|v| v["protocol"] == "tcp").await;
    assert_eq!(out["service"], "echo");
    assert_eq!(
        (out["bytes_received"].as_u64(), out["bytes_sent"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(inb["source"], CLIENT_ID);
    assert_eq!(inb["service"], format!("app:{}", echo.port()));
    assert_eq!(
        (inb["bytes_received"].as_u64(), inb["bytes_sent"].as_u64()),
        (Some(4), Some(4))
    );

    // Metrics of both proxies, by pair, status class and cause.
    let c = admin_samples(&client.admin).await;
    let docs = [
        ("direction", "outbound"),
        ("service", "documentserver"),
        ("source", CLIENT_ID),
        ("destination", SERVER_ID),
    ];
    let with = |base: &[(&'static str, &'static str)], class, cause| {
        let mut v = base.to_vec();
        v.push(("status_class", class));
        v.push(("cause", cause));
        v
    };
    assert_eq!(count(&c, &with(&docs, "2xx", "none")), 3.0);
    assert_eq!(count(&c, &with(&docs, "5xx", "none")), 2.0);
    assert_eq!(count(&c, &with(&docs, "4xx", "none")), 1.0);
    let broken = [
        ("direction", "outbound"),
        ("service", "broken"),
        ("source", CLIENT_ID),
        ("destination", BROKEN_ID),
    ];
    assert_eq!(count(&c, &with(&broken, "5xx", "connect-refused")), 2.0);
    assert_eq!(value(&c, "docmesh_retries_total", &broken), 2.0);
    assert_eq!(value(&c, "docmesh_retries_total", &docs), 0.0);

    let s = admin_samples(&server.admin).await;
    let app_service = format!("app:{}", app.port());
    let app_service: &'static str = Box::leak(app_service.into_boxed_str());
    let inb = [
        ("direction", "inbound"),
        ("service", app_service),
        ("source", CLIENT_ID),
        ("destination", SERVER_ID),
    ];
    assert_eq!(count(&s, &with(&inb, "2xx", "none")), 3.0);
    assert_eq!(count(&s, &with(&inb, "5xx", "none")), 2.0);
    assert_eq!(count(&s, &with(&inb, "4xx", "none")), 1.0);
    let mut allowed = inb.to_vec();
    allowed.push(("decision", "allow"));
    assert_eq!(value(&s, "docmesh_authz_decisions_total", &allowed), 6.0);
    let tls_ok = s
        .iter()
        .find(|x| {
            x.metric == "docmesh_tls_handshakes_total"
                && x.labels.get("direction") == Some("inbound")
                && x.labels.get("result") == Some("ok")
        })
        .expect("inbound handshakes are counted");
    assert!(matches!(tls_ok.value, Value::Counter(v) | Value::Untyped(v) if v >= 1.0));
    let expiry = s
        .iter()
        .find(|x| x.metric == "docmesh_svid_expiry_timestamp_seconds")
        .expect("SVID expiry is exported");
    assert_eq!(expiry.labels.get("spiffe_id"), Some(SERVER_ID));

    for p in [&mut client, &mut server] {
        p.terminate().await;
    }
}
