//! B3 propagation (Zipkin): the single `b3` header and the `x-b3-*` headers.
//!
//! Read only when enabled and no valid `traceparent` arrived; written (both forms) when enabled
//! so that apps with Zipkin-style tracers see the same trace as W3C ones.

use http::header::{HeaderMap, HeaderName};

use super::ids::{SpanId, TraceId};
use super::trace::{insert, TraceContext};

/// `b3` (single header).
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1` = debug, which implies sampled).
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What incoming B3 headers said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3 {
    /// The caller's trace and span, when present and valid.
    pub ids: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision, when it made one (`d`/debug counts as sampled).
    pub sampled: Option<bool>,
}

/// Reads B3 context: the single `b3` header first, else the `x-b3-*` headers. `None` when
/// neither is present or they are malformed.
pub fn read(headers: &HeaderMap) -> Option<B3> {
    if let Some(v) = headers.get(&B3).and_then(|v| v.to_str().ok()) {
        return parse_single(v);
    }
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let sampled = match get(&X_B3_FLAGS) {
        Some("1") => Some(true),
        _ => match get(&X_B3_SAMPLED) {
            Some("1") | Some("true") | Some("d") => Some(true),
            Some("0") | Some("false") => Some(false),
            None => None,
            Some(_) => return None,
        },
    };
    let ids = match (get(&X_B3_TRACEID), get(&X_B3_SPANID)) {
        (Some(t), Some(s)) => Some((parse_trace_id(t)?, SpanId::parse_hex(s)?)),
        (None, None) => None,
        _ => return None,
    };
    (ids.is_some() || sampled.is_some()).then_some(B3 { ids, sampled })
}

/// Parses the single-header form `{trace}-{span}[-{sampling}[-{parent}]]`, or a lone
/// sampling state `0`, `1` or `d`.
pub fn parse_single(v: &str) -> Option<B3> {
    let sampling = |s: &str| match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    let parts: Vec<&str> = v.trim().split('-').collect();
    match parts.as_slice() {
        [s] => Some(B3 {
            ids: None,
            sampled: Some(sampling(s)?),
        }),
        [t, s, rest @ ..] if rest.len() <= 2 => {
            let sampled = match rest.first() {
                Some(x) => Some(sampling(x)?),
                None => None,
            };
            if let Some(p) = rest.get(1) {
                SpanId::parse_hex(p)?;
            }
            Some(B3 {
                ids: Some((parse_trace_id(t)?, SpanId::parse_hex(s)?)),
                sampled,
            })
        }
        _ => None,
    }
}

/// A B3 trace id: 32 hex digits, or 16 (64-bit ids, left-padded with zeros).
fn parse_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        32 => TraceId::parse_hex(s),
        16 => TraceId::parse_hex(&format!("{:0>32}", s)),
        _ => None,
    }
}

/// Writes both B3 forms for the next hop from this hop's context.
pub fn write(headers: &mut HeaderMap, ctx: &TraceContext) {
    let sampled = if ctx.sampled { "1" } else { "0" };
    let (trace, span) = (ctx.trace_id.to_string(), ctx.span_id.to_string());
    let single = match ctx.parent_span_id {
        Some(p) => format!("{trace}-{span}-{sampled}-{p}"),
        None => format!("{trace}-{span}-{sampled}"),
    };
    insert(headers, B3, &single);
    insert(headers, X_B3_TRACEID, &trace);
    insert(headers, X_B3_SPANID, &span);
    insert(headers, X_B3_SAMPLED, sampled);
    headers.remove(&X_B3_FLAGS);
    match ctx.parent_span_id {
        Some(p) => insert(headers, X_B3_PARENTSPANID, &p.to_string()),
        None => {
            headers.remove(&X_B3_PARENTSPANID);
        }
    }
}
