//! Unit tests of W3C trace context parsing, B3, and the per-hop decision.

use http::HeaderMap;

use super::b3;
use super::trace::{parse_tracestate, propagate, TraceOrigin, TraceParent};
use super::{SpanId, TraceId};
use crate::config::observability::TracingConfig;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn tp(version: &str, flags: &str) -> String {
    format!("{version}-{TRACE}-{PARENT}-{flags}")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn cfg() -> TracingConfig {
    TracingConfig::default()
}

fn b3_cfg() -> TracingConfig {
    TracingConfig {
        b3: true,
        ..TracingConfig::default()
    }
}

#[test]
fn valid_traceparents_parse() {
    let p = TraceParent::parse(&tp("00", "01")).unwrap();
    assert_eq!(p.trace_id, TraceId::parse_hex(TRACE).unwrap());
    assert_eq!(p.parent_id, SpanId::parse_hex(PARENT).unwrap());
    assert!(p.sampled());
    assert!(!TraceParent::parse(&tp("00", "00")).unwrap().sampled());
    // Unknown flag bits are ignored on input and never written back.
    let p = TraceParent::parse(&tp("00", "09")).unwrap();
    assert!(p.sampled());
    assert_eq!(p.to_string(), tp("00", "01"));
    assert_eq!(
        TraceParent::parse(&tp("00", "01")).unwrap().to_string(),
        tp("00", "01")
    );
}

#[test]
fn future_versions_are_parsed_by_the_version_00_layout() {
    let p = TraceParent::parse(&tp("01", "01")).unwrap();
    assert!(p.sampled());
    // Extra fields are allowed after a dash, and we answer with version 00.
    let p =
        TraceParent::parse(&format!("{}-what-the-future-will-be-like", tp("cc", "01"))).unwrap();
    assert_eq!(p.to_string(), tp("00", "01"));
    // ... but not glued to the flags.
    assert!(TraceParent::parse(&format!("{}what", tp("cc", "01"))).is_err());
    // A future version still needs all four fields.
    assert!(TraceParent::parse(&tp("cc", "01")[..54]).is_err());
}

#[test]
fn invalid_traceparents_are_rejected_with_the_rule_broken() {
    let zero_trace = format!("00-{}-{PARENT}-01", "0".repeat(32));
    let zero_parent = format!("00-{TRACE}-{}-01", "0".repeat(16));
    let upper_trace = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let upper_parent = format!("00-{TRACE}-{}-01", PARENT.to_uppercase());
    let cases: Vec<(String, &str)> = vec![
        (tp("ff", "01"), "version ff"),
        (tp("0A", "01"), "version"),
        (tp("0x", "01"), "version"),
        (format!("{}-extra", tp("00", "01")), "exactly 55"),
        (tp("00", "01")[..54].to_owned(), "exactly 55"),
        (tp("00", "01").replace('-', "_"), "separated"),
        (zero_trace, "trace-id"),
        (zero_parent, "parent-id"),
        (upper_trace, "trace-id"),
        (upper_parent, "parent-id"),
        (tp("00", "0g"), "trace-flags"),
        (tp("00", "0F"), "trace-flags"),
        (String::new(), "shorter"),
        (format!("00-{TRACE}x-{PARENT}-1"), "separated"),
        // A multi-byte character across the version field's end used to panic on slicing.
        (format!("0\u{e9}{}", &tp("00", "01")[3..]), "non-ASCII"),
        (format!("00-{TRACE}-{PARENT}-\u{e9}"), "non-ASCII"),
    ];
    for (value, rule) in cases {
        let err = TraceParent::parse(&value).unwrap_err().to_string();
        assert!(err.contains(rule), "{value:?}: {err}");
    }
}

#[test]
fn no_incoming_context_starts_a_sampled_trace_and_a_request_id() {
    let mut h = HeaderMap::new();
    let ctx = propagate(&mut h, &cfg());
    assert_eq!(ctx.origin, TraceOrigin::Started);
    assert_eq!(ctx.parent_span_id, None);
    assert!(ctx.sampled);
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!("00-{}-{}-01", ctx.trace_id, ctx.span_id)
    );
    let rid = get(&h, "x-request-id").unwrap();
    assert_eq!(rid, ctx.request_id);
    assert_eq!(rid.len(), 36);
    assert_eq!(&rid[14..15], "4", "UUID v4 form: {rid}");
    let groups: Vec<usize> = rid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "UUID form: {rid}");
    assert!(
        rid.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()),
        "{rid}"
    );
    // The ids print as lower-case hex of their bytes.
    assert_eq!(
        ctx.trace_id.to_string(),
        hex::encode(ctx.trace_id.as_bytes())
    );
    let span = SpanId::from_bytes([0xab, 0, 1, 2, 3, 4, 5, 0xff]).unwrap();
    assert_eq!(span.to_string(), "ab000102030405ff");
    assert!(h.get("b3").is_none(), "B3 is off by default");
    // Another request starts another trace.
    let other = propagate(&mut HeaderMap::new(), &cfg());
    assert_ne!(other.trace_id, ctx.trace_id);
}

#[test]
fn new_trace_sampling_ratio_is_honoured() {
    let never = TracingConfig {
        new_trace_sample_ratio: 0.0,
        ..cfg()
    };
    let mut h = HeaderMap::new();
    let ctx = propagate(&mut h, &never);
    assert!(!ctx.sampled);
    assert!(get(&h, "traceparent").unwrap().ends_with("-00"));
    // A continued trace keeps the caller's decision whatever our ratio is.
    let mut h = headers(&[("traceparent", &tp("00", "01"))]);
    assert!(propagate(&mut h, &never).sampled);
}

#[test]
fn incoming_trace_is_continued_with_a_new_span_per_hop() {
    let mut h = headers(&[
        ("traceparent", &tp("00", "00")),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("x-request-id", "req-42"),
    ]);
    let hop1 = propagate(&mut h, &cfg());
    assert_eq!(hop1.origin, TraceOrigin::W3c);
    assert_eq!(hop1.trace_id.to_string(), TRACE);
    assert_eq!(hop1.parent_span_id.unwrap().to_string(), PARENT);
    assert_ne!(hop1.span_id.to_string(), PARENT);
    assert!(!hop1.sampled, "the caller's 'not sampled' is honoured");
    assert_eq!(hop1.request_id, "req-42");
    assert_eq!(
        get(&h, "tracestate"),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!("00-{TRACE}-{}-00", hop1.span_id)
    );
    // The next proxy continues from our span.
    let hop2 = propagate(&mut h, &cfg());
    assert_eq!(hop2.trace_id, hop1.trace_id);
    assert_eq!(hop2.parent_span_id, Some(hop1.span_id));
    assert_ne!(hop2.span_id, hop1.span_id);
    assert_eq!(hop2.request_id, "req-42");
}

#[test]
fn invalid_or_repeated_traceparent_starts_a_new_trace_and_drops_tracestate() {
    for h in [
        headers(&[("traceparent", &tp("ff", "01")), ("tracestate", "a=b")]),
        headers(&[
            ("traceparent", &tp("00", "01")),
            ("traceparent", &tp("00", "01")),
            ("tracestate", "a=b"),
        ]),
    ] {
        let mut h = h;
        let ctx = propagate(&mut h, &cfg());
        assert_eq!(ctx.origin, TraceOrigin::Started);
        assert_ne!(ctx.trace_id.to_string(), TRACE);
        assert_eq!(h.get_all("traceparent").iter().count(), 1);
        assert!(h.get("tracestate").is_none());
    }
}

#[test]
fn tracestate_rules() {
    assert_eq!(
        parse_tracestate("a=1, b=2 ,,c=3"),
        Some("a=1,b=2,c=3".into())
    );
    assert_eq!(
        parse_tracestate("tenant@vendor=x,1t@v=y"),
        Some("tenant@vendor=x,1t@v=y".into())
    );
    assert_eq!(parse_tracestate("a=1,a=2"), None, "duplicate keys");
    assert_eq!(parse_tracestate("A=1"), None, "uppercase key");
    assert_eq!(
        parse_tracestate("1a=1"),
        None,
        "simple key must start with a letter"
    );
    assert_eq!(parse_tracestate("a=x=y"), None, "'=' in value");
    assert_eq!(parse_tracestate("a"), None, "no '='");
    assert_eq!(
        parse_tracestate("a=1 x"),
        Some("a=1 x".into()),
        "inner space ok"
    );
    assert_eq!(parse_tracestate(""), None);
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert_eq!(
        parse_tracestate(&many.join(",")),
        None,
        "more than 32 members"
    );
    assert!(parse_tracestate(&many[..32].join(",")).is_some());
}

#[test]
fn bad_request_id_is_replaced() {
    let too_long = "x".repeat(300);
    for bad in ["has space", too_long.as_str()] {
        let mut h = headers(&[("x-request-id", bad)]);
        let ctx = propagate(&mut h, &cfg());
        assert_ne!(ctx.request_id, bad);
        assert_eq!(get(&h, "x-request-id"), Some(ctx.request_id.as_str()));
    }
}

#[test]
fn b3_is_ignored_when_disabled() {
    let mut h = headers(&[("b3", &format!("{TRACE}-{PARENT}-1"))]);
    let ctx = propagate(&mut h, &cfg());
    assert_eq!(ctx.origin, TraceOrigin::Started);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!("{TRACE}-{PARENT}-1"),
        "left untouched"
    );
}

#[test]
fn b3_single_header_is_read_and_both_forms_written() {
    let mut h = headers(&[("b3", &format!("{TRACE}-{PARENT}-0-00f067aa0ba90200"))]);
    let ctx = propagate(&mut h, &b3_cfg());
    assert_eq!(ctx.origin, TraceOrigin::B3);
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert_eq!(ctx.parent_span_id.unwrap().to_string(), PARENT);
    assert!(!ctx.sampled);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!("{TRACE}-{}-0-{PARENT}", ctx.span_id)
    );
    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&h, "x-b3-spanid").unwrap(), ctx.span_id.to_string());
    assert_eq!(get(&h, "x-b3-parentspanid"), Some(PARENT));
    assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    assert!(get(&h, "traceparent")
        .unwrap()
        .starts_with(&format!("00-{TRACE}-")));
}

#[test]
fn b3_multi_headers_and_64_bit_ids() {
    let mut h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", PARENT),
        ("x-b3-flags", "1"),
    ]);
    let ctx = propagate(&mut h, &b3_cfg());
    assert_eq!(ctx.origin, TraceOrigin::B3);
    assert_eq!(ctx.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
    assert!(ctx.sampled, "debug flag implies sampled");
    // A lone sampling decision starts a new trace with that decision.
    let mut h = headers(&[("b3", "0")]);
    let ctx = propagate(&mut h, &b3_cfg());
    assert_eq!(ctx.origin, TraceOrigin::Started);
    assert!(!ctx.sampled);
    // Malformed B3 is ignored.
    assert!(b3::parse_single("xyz-abc").is_none());
    assert!(b3::parse_single(&format!("{TRACE}-{PARENT}-2")).is_none());
    let mut h = headers(&[("x-b3-traceid", TRACE)]);
    assert_eq!(propagate(&mut h, &b3_cfg()).origin, TraceOrigin::Started);
}

#[test]
fn traceparent_wins_over_b3() {
    let mut h = headers(&[
        ("traceparent", &tp("00", "01")),
        ("b3", "11111111111111111111111111111111-2222222222222222-1"),
    ]);
    let ctx = propagate(&mut h, &b3_cfg());
    assert_eq!(ctx.origin, TraceOrigin::W3c);
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert!(get(&h, "b3").unwrap().starts_with(TRACE));
}
