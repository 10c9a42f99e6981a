//! The mesh metric families, rendered by the shared registry and read back with a real
//! Prometheus text-format parser: pair labels, counts of a known traffic mix, bounded
//! cardinality.

use std::time::Duration;

use docmesh_proxy::config::observability::MetricsConfig;
use docmesh_proxy::errors::Cause;
use docmesh_proxy::metrics::Metrics;
use docmesh_proxy::observe::{CircuitState, Direction, MeshMetrics, ServicePair};
use prometheus_parse::{Sample, Scrape, Value};

const DOCSERVICE: &str = "spiffe://example.org/ns/office/sa/docservice";
const CONVERTER: &str = "spiffe://example.org/ns/office/sa/converter";

fn scrape(shared: &Metrics) -> Vec<Sample> {
    let text = shared.encode().unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: not a single value: {other:?}"),
    }
}

/// The outbound pair of the document server calling the converter.
fn docservice_to_converter(m: &MeshMetrics) -> ServicePair {
    m.pair(
        Direction::Outbound,
        "converter",
        Some(DOCSERVICE),
        Some(CONVERTER),
    )
}

#[test]
fn known_traffic_mix_is_counted_by_pair_status_class_and_cause() {
    let shared = Metrics::new();
    let m = MeshMetrics::register(&shared, &MetricsConfig::default());
    let out = docservice_to_converter(&m);
    let inb = m.pair(
        Direction::Inbound,
        "docservice",
        Some(CONVERTER),
        Some(DOCSERVICE),
    );

    for _ in 0..7 {
        m.request_finished(&out, Some(200), None, Duration::from_millis(3));
    }
    for _ in 0..2 {
        m.request_finished(
            &out,
            Some(502),
            Some(Cause::ConnectRefused),
            Duration::from_millis(40),
        );
    }
    m.request_finished(&out, Some(503), None, Duration::from_secs(2));
    m.request_finished(
        &inb,
        Some(403),
        Some(Cause::Forbidden),
        Duration::from_micros(200),
    );
    m.retry(&out);
    m.retry(&out);
    m.retry_budget_exhausted(&out);
    let c1 = m.connection_opened(&out, "http");
    let c2 = m.connection_opened(&out, "http");
    drop(c1);
    m.tls_handshake(Direction::Outbound, "converter", Ok(()));
    m.tls_handshake(Direction::Outbound, "converter", Err("tls-untrusted-peer"));
    m.authz_decision(&inb, false, "spiffe-rule");
    m.circuit_transition("converter", "10.0.0.5:8000", CircuitState::Open);
    m.circuit_transition("converter", "10.0.0.5:8000", CircuitState::HalfOpen);
    m.svid_loaded(DOCSERVICE, 1_790_000_000);

    let s = scrape(&shared);
    let pair = [
        ("direction", "outbound"),
        ("service", "converter"),
        ("source", DOCSERVICE),
        ("destination", CONVERTER),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = pair.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let ok = with(&[("status_class", "2xx"), ("cause", "none")]);
    assert_eq!(value(&s, "docmesh_requests_total", &ok), 7.0);
    let refused = with(&[("status_class", "5xx"), ("cause", "connect-refused")]);
    assert_eq!(value(&s, "docmesh_requests_total", &refused), 2.0);
    let app_5xx = with(&[("status_class", "5xx"), ("cause", "none")]);
    assert_eq!(value(&s, "docmesh_requests_total", &app_5xx), 1.0);
    let forbidden = [
        ("direction", "inbound"),
        ("source", CONVERTER),
        ("destination", DOCSERVICE),
        ("status_class", "4xx"),
        ("cause", "forbidden"),
    ];
    assert_eq!(value(&s, "docmesh_requests_total", &forbidden), 1.0);

    // Latency histogram: 10 outbound observations, cumulative buckets.
    let hist = s
        .iter()
        .find(|x| {
            x.metric == "docmesh_request_duration_seconds"
                && x.labels.get("direction") == Some("outbound")
        })
        .expect("a latency histogram for the outbound pair");
    let Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram: {hist:?}")
    };
    let le = |bound: f64| {
        buckets
            .iter()
            .find(|b| b.less_than == bound || (b.less_than - bound).abs() < 1e-9)
            .map(|b| b.count)
    };
    assert_eq!(le(0.005), Some(7.0));
    assert_eq!(le(0.05), Some(9.0));
    assert_eq!(le(f64::INFINITY), Some(10.0));
    assert_eq!(
        value(&s, "docmesh_request_duration_seconds_count", &pair),
        10.0
    );

    assert_eq!(value(&s, "docmesh_retries_total", &pair), 2.0);
    assert_eq!(
        value(&s, "docmesh_retry_budget_exhausted_total", &pair),
        1.0
    );
    let http = with(&[("protocol", "http")]);
    assert_eq!(value(&s, "docmesh_open_connections", &http), 1.0);
    assert_eq!(value(&s, "docmesh_connections_total", &http), 2.0);
    drop(c2);
    assert_eq!(
        value(&scrape(&shared), "docmesh_open_connections", &http),
        0.0
    );

    let tls = |result, reason| {
        [
            ("direction", "outbound"),
            ("result", result),
            ("reason", reason),
        ]
    };
    assert_eq!(
        value(&s, "docmesh_tls_handshakes_total", &tls("ok", "none")),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "docmesh_tls_handshakes_total",
            &tls("failed", "tls-untrusted-peer")
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "docmesh_authz_decisions_total",
            &[("decision", "deny"), ("source", CONVERTER)]
        ),
        1.0
    );
    let circuit = |state| [("endpoint", "10.0.0.5:8000"), ("state", state)];
    assert_eq!(
        value(&s, "docmesh_circuit_state", &circuit("half-open")),
        1.0
    );
    assert_eq!(value(&s, "docmesh_circuit_state", &circuit("open")), 0.0);
    assert_eq!(value(&s, "docmesh_circuit_state", &circuit("closed")), 0.0);
    assert_eq!(
        value(&s, "docmesh_circuit_transitions_total", &circuit("open")),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "docmesh_svid_expiry_timestamp_seconds",
            &[("spiffe_id", DOCSERVICE)]
        ),
        1_790_000_000.0
    );

    // No label anywhere holds a path.
    let text = shared.encode().unwrap();
    assert!(!text.contains("/coauthoring"), "{text}");
}

#[test]
fn pair_cardinality_is_bounded() {
    let shared = Metrics::new();
    let m = MeshMetrics::register(
        &shared,
        &MetricsConfig {
            max_service_pairs: 2,
        },
    );
    for i in 0..10 {
        let src = format!("spiffe://example.org/client-{i}");
        let p = m.pair(
            Direction::Inbound,
            "docservice",
            Some(&src),
            Some(DOCSERVICE),
        );
        m.request_finished(&p, Some(200), None, Duration::from_millis(1));
    }
    // Pairs already seen keep their labels.
    let p = m.pair(
        Direction::Inbound,
        "docservice",
        Some("spiffe://example.org/client-0"),
        Some(DOCSERVICE),
    );
    m.request_finished(&p, Some(200), None, Duration::from_millis(1));
    let unknown = m.pair(Direction::Inbound, "docservice", None, Some(DOCSERVICE));
    assert_eq!(unknown.source.as_str(), "overflow");

    let s = scrape(&shared);
    let series: Vec<&Sample> = s
        .iter()
        .filter(|x| x.metric == "docmesh_requests_total")
        .collect();
    assert_eq!(series.len(), 3, "two pairs plus overflow: {series:?}");
    assert_eq!(
        value(
            &s,
            "docmesh_requests_total",
            &[("source", "spiffe://example.org/client-0")]
        ),
        2.0
    );
    assert_eq!(
        value(&s, "docmesh_requests_total", &[("source", "overflow")]),
        8.0
    );
}

#[test]
fn unknown_identities_are_labelled_unknown() {
    let shared = Metrics::new();
    let m = MeshMetrics::register(&shared, &MetricsConfig::default());
    let p = m.pair(Direction::Inbound, "docservice", None, Some(DOCSERVICE));
    m.request_finished(&p, None, Some(Cause::Unauthenticated), Duration::ZERO);
    let s = scrape(&shared);
    assert_eq!(
        value(
            &s,
            "docmesh_requests_total",
            &[
                ("source", "unknown"),
                ("status_class", "none"),
                ("cause", "unauthenticated")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn resilience_events_are_counted_per_outbound_pair() {
    use docmesh_proxy::config::observability::ObservabilityConfig;
    use docmesh_proxy::config::outbound::ServiceConfig;
    use docmesh_proxy::observe::Observability;
    use docmesh_proxy::resilience::breaker::CircuitState as Breaker;
    use docmesh_proxy::resilience::mesh_observer::MeshObserver;
    use docmesh_proxy::resilience::observer::Observer;

    let shared = Metrics::new();
    let obs =
        Observability::with_log_writer(&ObservabilityConfig::default(), &shared, tokio::io::sink());
    obs.set_local_id(DOCSERVICE);
    let svc = ServiceConfig {
        name: "converter".into(),
        spiffe_id: CONVERTER.into(),
        ..ServiceConfig::default()
    };
    let o = MeshObserver::new(obs, &[svc]);
    o.retry("converter");
    o.retry("converter");
    o.budget_exhausted("converter");
    let ep = "10.0.0.5:8000".parse().unwrap();
    o.circuit("converter", ep, Breaker::Open);
    o.circuit("converter", ep, Breaker::HalfOpen);
    o.circuit("converter", ep, Breaker::Closed);

    let s = scrape(&shared);
    let pair = [
        ("direction", "outbound"),
        ("service", "converter"),
        ("source", DOCSERVICE),
        ("destination", CONVERTER),
    ];
    assert_eq!(value(&s, "docmesh_retries_total", &pair), 2.0);
    assert_eq!(
        value(&s, "docmesh_retry_budget_exhausted_total", &pair),
        1.0
    );
    let circuit = |state| [("endpoint", "10.0.0.5:8000"), ("state", state)];
    assert_eq!(value(&s, "docmesh_circuit_state", &circuit("closed")), 1.0);
    assert_eq!(value(&s, "docmesh_circuit_state", &circuit("open")), 0.0);
    for state in ["open", "half-open", "closed"] {
        assert_eq!(
            value(&s, "docmesh_circuit_transitions_total", &circuit(state)),
            1.0
        );
    }
}

#[test]
fn cached_pair_handles_count_in_the_registry_that_records_them() {
    let shared = Metrics::new();
    let m = MeshMetrics::register(&shared, &MetricsConfig::default());
    let other_shared = Metrics::new();
    let other = MeshMetrics::register(&other_shared, &MetricsConfig::default());
    // Two connections of the same pair (each its own handles), and a pair made by another
    // set of families (e.g. before a reload) that `m` records.
    let first = docservice_to_converter(&m);
    let second = docservice_to_converter(&m);
    let foreign = docservice_to_converter(&other);
    // `other` records the foreign pair first, so its handles point at `other`'s families.
    other.request_finished(&foreign, Some(200), None, Duration::from_millis(2));
    for pair in [&first, &second, &foreign, &first, &second] {
        m.request_finished(pair, Some(200), None, Duration::from_millis(2));
    }
    m.request_finished(
        &first,
        Some(504),
        Some(Cause::ResponseTimeout),
        Duration::from_secs(1),
    );
    m.request_finished(&first, Some(200), None, Duration::from_millis(2));

    let samples = scrape(&shared);
    let pair = [("direction", "outbound"), ("service", "converter")];
    let ok = [pair[0], pair[1], ("status_class", "2xx"), ("cause", "none")];
    assert_eq!(value(&samples, "docmesh_requests_total", &ok), 6.0);
    let timeout = [
        pair[0],
        pair[1],
        ("status_class", "5xx"),
        ("cause", "response-timeout"),
    ];
    assert_eq!(value(&samples, "docmesh_requests_total", &timeout), 1.0);
    let count = samples
        .iter()
        .find(|s| s.metric == "docmesh_request_duration_seconds_count")
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) => v,
            _ => panic!("{s:?}"),
        });
    assert_eq!(count, Some(7.0));
    let others = scrape(&other_shared);
    assert_eq!(
        value(&others, "docmesh_requests_total", &ok),
        1.0,
        "only the other families' own request"
    );
}
