//! OTLP span export through a real sidecar pair (two `docmesh-proxy run` processes, mTLS
//! between them) to an independent receiver built on the published OpenTelemetry protos
//! (`otlp_support/receiver.py`): both hops' spans arrive over gRPC and over HTTP/protobuf
//! with the outbound CLIENT span as the parent of the inbound SERVER span, the ids of the
//! access logs and `traceparent`, the semantic-convention and docmesh attributes; unsampled
//! requests are not exported unless they end in a docmesh cause; and a collector that is
//! down, slow or answering errors fails no request (every lost span is counted).

use std::net::SocketAddr;
use std::time::Duration;

use crate::otlp_support::{openmetrics_exemplars, otlp_toml, Receiver};
use crate::support::*;
use prometheus_parse::Value;
use serde_json::Value as Json;

const BROKEN_ID: &str = "spiffe://example.org/ns/oo/sa/broken";

/// Client config for a second service, `broken`, at `addr`, with its own outbound listener
/// (`outbound.listeners[1].listen`).
fn broken_service(addr: SocketAddr) -> String {
    format!(
        "[[outbound.services]]\nname = \"broken\"\naddresses = [\"{addr}\"]\nspiffe_id = \"{BROKEN_ID}\"\n\
         [[outbound.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"broken\"\n"
    )
}

/// GET `path` through `outbound`; (status, body).
async fn get_via(outbound: SocketAddr, path: &str, traceparent: Option<&str>) -> (u16, String) {
    let (head, body) = get_through(outbound, path, traceparent).await;
    (
        head.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn attr<'a>(span: &'a Json, key: &str) -> &'a Json {
    &span["attributes"][key]
}

/// The trace id exemplars of `service`'s latency histogram.
fn latency_exemplars(text: &str, service: &str) -> Vec<String> {
    openmetrics_exemplars(text)
        .iter()
        .filter(|s| s["name"] == "docmesh_request_duration_seconds_bucket")
        .filter(|s| s["labels"]["service"] == service)
        .map(|s| s["exemplar"]["trace_id"].as_str().unwrap().to_owned())
        .collect()
}

fn counter(samples: &[prometheus_parse::Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.metric == name)
        .map_or(0.0, |s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
}

async fn spans_form_one_tree(protocol: &str, mode: &str) {
    let mut rx = Receiver::start(mode, "ok").await;
    let app = start_http_app().await;
    let otlp = otlp_toml(protocol, rx.port, "5s");
    let client_extra = broken_service(closed_port()) + &otlp;
    let mut pair = ProcessPair::start_with(app.port(), &otlp, &client_extra).await;
    let to_docs = pair.outbound;
    let to_broken = pair.client.addr("outbound.listeners[1].listen");

    // 1. A sampled request (the client sidecar starts the trace): one span per hop.
    let (status, body) = get_via(to_docs, "/traced", None).await;
    assert_eq!((status, body.as_str()), (200, "hello from the app"));
    let (out_log, in_log) = pair.path_lines("/traced").await;
    let out = rx
        .span(|s| s["kind"] == 3 && s["attributes"]["url.path"] == "/traced")
        .await;
    let inb = rx
        .span(|s| s["kind"] == 2 && s["attributes"]["url.path"] == "/traced")
        .await;
    assert_eq!(out["transport"], mode);
    assert_eq!(out["trace_id"], out_log["trace_id"], "{out}");
    assert_eq!(inb["trace_id"], out_log["trace_id"], "{inb}");
    assert_eq!(out["span_id"], out_log["span_id"]);
    assert_eq!(inb["span_id"], in_log["span_id"]);
    assert_eq!(
        out["parent_span_id"], "",
        "the client sidecar started the trace"
    );
    assert_eq!(
        inb["parent_span_id"], out["span_id"],
        "the outbound CLIENT span is the parent of the inbound SERVER span"
    );
    assert_eq!(out["name"], "GET");
    assert_eq!(out["flags"], 1, "sampled");
    for s in [&out, &inb] {
        assert_eq!(attr(s, "http.request.method"), "GET", "{s}");
        assert_eq!(attr(s, "http.response.status_code"), 200, "{s}");
        assert_eq!(attr(s, "docmesh.source"), CLIENT_ID, "{s}");
        assert_eq!(attr(s, "docmesh.destination"), SERVER_ID, "{s}");
        assert_eq!(attr(s, "docmesh.outcome"), "complete", "{s}");
        assert_eq!(attr(s, "docmesh.attempts"), 1, "{s}");
        assert_eq!(s["status_code"], 0, "unset: no error {s}");
        assert_eq!(s["scope"], "docmesh-proxy");
        assert_eq!(s["resource"]["service.namespace"], "oo", "{s}");
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
    }
    assert_eq!(attr(&out, "server.address"), "documentserver");
    assert_eq!(attr(&out, "docmesh.request_id"), &out_log["request_id"]);
    assert_eq!(
        attr(&out, "docmesh.bytes_sent"),
        &out_log["bytes_sent"],
        "the span and the access log count the same bytes"
    );
    assert_eq!(attr(&out, "docmesh.bytes_sent"), "hello from the app".len());
    assert_eq!(attr(&inb, "client.address"), "127.0.0.1");
    assert_eq!(out["resource"]["service.name"], "integrator");
    assert_eq!(inb["resource"]["service.name"], "documentserver");
    assert_eq!(out["resource"]["docmesh.spiffe_id"], CLIENT_ID);
    // The latency histogram (served as OpenMetrics, read by a real OpenMetrics parser) leads
    // to the trace: its bucket's exemplar is this request's trace id.
    let text = admin_metrics(&pair.client.admin).await;
    assert_eq!(
        latency_exemplars(&text, "documentserver"),
        [out_log["trace_id"].as_str().unwrap()],
        "{text}"
    );

    // 2. An app's unsampled trace is continued unsampled and not exported...
    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{caller}-00f067aa0ba902b7-00");
    let (status, _) = get_via(to_docs, "/unsampled", Some(&tp)).await;
    assert_eq!(status, 200);
    // ...unless it ends in a docmesh cause: those spans are always exported.
    let (status, _) = get_via(to_broken, "/fails", Some(&tp)).await;
    assert_eq!(status, 502);
    let failed = rx.span(|s| s["attributes"]["url.path"] == "/fails").await;
    assert_eq!(failed["trace_id"], caller);
    assert_eq!(failed["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(failed["flags"], 0, "exported although unsampled");
    assert_eq!(attr(&failed, "docmesh.cause"), "connect-refused");
    assert_eq!(attr(&failed, "error.type"), "connect-refused");
    assert_eq!(failed["status_code"], 2, "error status: {failed}");
    assert_eq!(failed["status_message"], "connect-refused");
    assert_eq!(attr(&failed, "docmesh.destination"), BROKEN_ID);
    let text = admin_metrics(&pair.client.admin).await;
    assert_eq!(
        latency_exemplars(&text, "broken"),
        [caller],
        "a failed request's trace is an exemplar although unsampled"
    );
    let rest = rx.drain(Duration::from_millis(500)).await;
    assert!(
        rest.iter()
            .all(|s| s["attributes"]["url.path"] != "/unsampled"),
        "an unsampled request was exported: {rest:?}"
    );
    pair.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_sidecar_pair_reach_an_otlp_grpc_receiver_as_one_tree() {
    spans_form_one_tree("grpc", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_sidecar_pair_reach_an_otlp_http_protobuf_receiver_as_one_tree() {
    spans_form_one_tree("http/protobuf", "http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_slow_or_failing_fails_no_request() {
    const REQUESTS: usize = 30;
    let app = start_http_app().await;
    let mesh = ProcessMesh::new();
    let mut server = mesh.start_server(app.port(), "").await;
    let inbound = server.listening[FIRST_INBOUND].clone();
    let error_rx = Receiver::start("http", "error").await;
    let slow_rx = Receiver::start("grpc", "slow").await;
    let collectors = [
        ("down", "grpc", closed_port().port()),
        ("error", "http/protobuf", error_rx.port),
        ("slow", "grpc", slow_rx.port),
    ];
    for (name, protocol, port) in collectors {
        // A small queue, so that a slow collector also makes spans overflow it.
        let otlp = otlp_toml(protocol, port, "300ms") + "queue_capacity = 4\nmax_batch = 2\n";
        let cfg = mesh.client_toml(name, &inbound) + &broken_service(closed_port()) + &otlp;
        let mut client = mesh.start(name, &cfg).await;
        let to_docs = client.addr(FIRST_OUTBOUND);
        for i in 0..REQUESTS {
            let (status, body) = get_via(to_docs, &format!("/r{i}"), None).await;
            assert_eq!(
                (status, body.as_str()),
                (200, "hello from the app"),
                "collector {name}: request {i}"
            );
        }
        // Every span is accounted for as lost (failed export or full queue), none exported.
        bounded(async {
            loop {
                let m = admin_samples(&client.admin).await;
                let lost = counter(&m, "docmesh_otlp_spans_failed_total")
                    + counter(&m, "docmesh_otlp_spans_dropped_total");
                assert_eq!(counter(&m, "docmesh_otlp_spans_exported_total"), 0.0);
                if lost == REQUESTS as f64 {
                    break;
                }
                assert!(lost < REQUESTS as f64, "collector {name}: {lost} lost");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if name == "slow" {
            let m = admin_samples(&client.admin).await;
            assert!(
                counter(&m, "docmesh_otlp_spans_dropped_total") > 0.0,
                "a collector slower than the traffic fills the queue"
            );
        }
        client.terminate().await;
    }
    server.terminate().await;
}
