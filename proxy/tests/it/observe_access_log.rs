//! The access logger: JSON lines with every field, sampling of successes (errors always), and
//! drop-and-count instead of blocking when the writer cannot keep up.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use docmesh_proxy::config::observability::AccessLogConfig;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::observe::{propagate, AccessLogEntry, AccessLogger, Direction};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

fn cfg(ratio: f64, capacity: usize) -> AccessLogConfig {
    AccessLogConfig {
        enabled: true,
        success_sample_ratio: ratio,
        queue_capacity: capacity,
    }
}

fn http_entry(status: u16, cause: Option<Cause>) -> AccessLogEntry {
    let mut headers = http::HeaderMap::new();
    let ctx = propagate(&mut headers, &Default::default());
    let mut e = AccessLogEntry::http(
        UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        Direction::Outbound,
        ctx,
        "POST",
        "/coauthoring/CommandService.ashx".into(),
    );
    e.status = Some(status);
    e.cause = cause;
    e
}

async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("an access log line within 5 s")
        .unwrap()
        .expect("the log stream is open");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn a_line_carries_every_field() {
    let (w, r) = tokio::io::duplex(64 * 1024);
    let log = AccessLogger::to_writer(&cfg(1.0, 16), Counter::default(), w);
    let mut e = http_entry(502, Some(Cause::IdentityMismatch));
    e.source = Some(Arc::new(
        "spiffe://example.org/ns/office/sa/docservice".into(),
    ));
    e.destination = Some(Arc::new(
        "spiffe://example.org/ns/office/sa/converter".into(),
    ));
    e.service = Some("converter".into());
    e.bytes_received = 12;
    e.bytes_sent = 150;
    e.duration = Duration::from_micros(12_500);
    e.attempts = 3;
    e.detail = Some("expected spiffe://a got spiffe://b".into());
    let trace = e.trace.clone().unwrap();
    assert!(log.log(e));

    let mut lines = BufReader::new(r).lines();
    let v = next_json(&mut lines).await;
    assert_eq!(v["log"], "access");
    assert_eq!(v["time"], "2026-09-21T14:13:20Z");
    assert_eq!(v["trace_id"], trace.trace_id.to_string());
    assert_eq!(v["span_id"], trace.span_id.to_string());
    assert_eq!(v["request_id"], trace.request_id);
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["protocol"], "http");
    assert_eq!(v["source"], "spiffe://example.org/ns/office/sa/docservice");
    assert_eq!(
        v["destination"],
        "spiffe://example.org/ns/office/sa/converter"
    );
    assert_eq!(v["service"], "converter");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/coauthoring/CommandService.ashx");
    assert_eq!(v["status"], 502);
    assert_eq!(v["bytes_received"], 12);
    assert_eq!(v["bytes_sent"], 150);
    assert_eq!(v["duration_ms"], 12.5);
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["cause"], "identity-mismatch");
    assert_eq!(v["detail"], "expected spiffe://a got spiffe://b");
}

#[tokio::test]
async fn opaque_tcp_connections_get_a_line_too() {
    let (w, r) = tokio::io::duplex(64 * 1024);
    let log = AccessLogger::to_writer(&cfg(1.0, 16), Counter::default(), w);
    let mut e = AccessLogEntry::tcp(SystemTime::now(), Direction::Inbound);
    e.bytes_received = 10;
    e.bytes_sent = 20;
    e.peer_addr = Some("10.0.0.7:40000".parse().unwrap());
    assert!(log.log(e));
    let v = next_json(&mut BufReader::new(r).lines()).await;
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["direction"], "inbound");
    assert_eq!(v["trace_id"], Value::Null);
    assert_eq!(v["method"], Value::Null);
    assert_eq!(v["bytes_sent"], 20);
    assert_eq!(v["peer_addr"], "10.0.0.7:40000");
}

#[tokio::test]
async fn successes_are_sampled_but_errors_always_logged() {
    let (w, r) = tokio::io::duplex(64 * 1024);
    let log = AccessLogger::to_writer(&cfg(0.0, 64), Counter::default(), w);
    assert!(!log.log(http_entry(200, None)), "ratio 0 drops successes");
    assert!(log.log(http_entry(503, Some(Cause::CircuitOpen))));
    assert!(!log.log(http_entry(204, None)));
    assert!(log.log(http_entry(404, None)), "client errors are errors");
    let mut lines = BufReader::new(r).lines();
    assert_eq!(next_json(&mut lines).await["status"], 503);
    assert_eq!(next_json(&mut lines).await["status"], 404);

    // A ratio keeps the same requests on every hop: the decision follows the trace id.
    let half = AccessLogger::to_writer(&cfg(0.5, 1024), Counter::default(), tokio::io::sink());
    let (mut kept, mut total) = (0, 0);
    for _ in 0..400 {
        let e = http_entry(200, None);
        let first = half.log(e.clone());
        assert_eq!(half.log(e), first, "same trace, same decision");
        kept += usize::from(first);
        total += 1;
    }
    assert!(kept > 0 && kept < total, "kept {kept} of {total}");
}

#[tokio::test]
async fn wants_agrees_with_log_so_the_data_path_skips_entries_that_would_be_dropped() {
    let off = AccessLogger::disabled();
    assert!(!off.is_enabled());
    let e = http_entry(500, None);
    assert!(!off.wants(true, e.trace.as_ref().unwrap().trace_id));
    for ratio in [0.0, 0.3, 1.0] {
        let log = AccessLogger::to_writer(&cfg(ratio, 4096), Counter::default(), tokio::io::sink());
        assert!(log.is_enabled());
        for status in [200, 204, 404, 503] {
            for _ in 0..50 {
                let e = http_entry(status, None);
                let id = e.trace.as_ref().unwrap().trace_id;
                assert_eq!(
                    log.wants(status >= 400, id),
                    log.log(e),
                    "ratio {ratio} status {status}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_stalled_writer_drops_and_counts_instead_of_blocking() {
    // A pipe nobody reads: the writer task blocks on its first write.
    let (w, _r) = tokio::io::duplex(16);
    let dropped = Counter::default();
    let log = AccessLogger::to_writer(&cfg(1.0, 4), dropped.clone(), w);
    let mut queued = 0;
    for _ in 0..100 {
        queued += usize::from(log.log(http_entry(500, None)));
    }
    // At most the queue plus the batch in the writer's hands got through.
    assert!(queued < 100, "queued {queued}");
    assert_eq!(log.dropped(), (100 - queued) as u64);
    assert_eq!(dropped.get(), log.dropped());
}

#[tokio::test]
async fn disabled_logger_logs_nothing() {
    let mut c = cfg(1.0, 4);
    c.enabled = false;
    let log = AccessLogger::to_writer(&c, Counter::default(), tokio::io::sink());
    assert!(!log.log(http_entry(500, None)));
}

#[tokio::test]
async fn observability_finish_logs_and_counts_http_but_only_logs_tcp() {
    use docmesh_proxy::config::observability::ObservabilityConfig;
    use docmesh_proxy::observe::Observability;

    let shared = docmesh_proxy::metrics::Metrics::new();
    let (w, r) = tokio::io::duplex(64 * 1024);
    let obs = Observability::with_log_writer(&ObservabilityConfig::default(), &shared, w);
    let mut headers = http::HeaderMap::new();
    let ctx = obs.trace(&mut headers);
    assert!(headers.contains_key("traceparent"));
    let pair = obs
        .metrics
        .pair(Direction::Inbound, "docservice", None, None);
    let mut e = AccessLogEntry::http(
        SystemTime::now(),
        Direction::Inbound,
        ctx.clone(),
        "GET",
        "/".into(),
    );
    e.status = Some(200);
    obs.finish(&pair, e);
    obs.finish(
        &pair,
        AccessLogEntry::tcp(SystemTime::now(), Direction::Inbound),
    );

    let mut lines = BufReader::new(r).lines();
    assert_eq!(
        next_json(&mut lines).await["trace_id"],
        ctx.trace_id.to_string()
    );
    assert_eq!(next_json(&mut lines).await["protocol"], "tcp");
    let text = shared.encode().unwrap();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("docmesh_requests_total{"))
        .collect();
    assert_eq!(requests.len(), 1, "{text}");
    assert!(requests[0].ends_with(" 1"), "{text}");
}
