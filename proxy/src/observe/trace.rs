//! W3C Trace Context (`traceparent`, `tracestate`) and the per-hop trace decision.
//!
//! [`propagate`] is the one call the data path makes per request: it reads the incoming trace
//! headers, continues the trace (or starts one), gives this hop a fresh span id whose parent is
//! the caller's span, keeps or creates `x-request-id`, and rewrites the headers for the next
//! hop. The returned [`TraceContext`] is what the access log, the error bodies and the metrics
//! exemplars use.

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::b3;
use super::ids::{SpanId, TraceId};
use super::ObserveError;
use crate::config::observability::TracingConfig;

/// `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` header name.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `x-request-id` header name.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Length of a version-00 `traceparent` value.
const TRACEPARENT_LEN: usize = 55;
/// Most list members a `tracestate` may carry.
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Longest incoming `x-request-id` that is kept as is.
const REQUEST_ID_MAX_LEN: usize = 200;

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace this request belongs to.
    pub trace_id: TraceId,
    /// The caller's span (the parent of the span that receives this header).
    pub parent_id: SpanId,
    /// The trace flags; only bit 0 (`sampled`) is defined.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value strictly per W3C Trace Context: version `00` with exactly
    /// 55 characters, lowercase hex, non-zero ids; version `ff` is invalid; a higher, unknown
    /// version is parsed by the version-00 layout and may carry more fields after a `-`.
    pub fn parse(s: &str) -> Result<Self, ObserveError> {
        let bad = |why: &'static str| ObserveError::InvalidTraceparent {
            value: s.chars().take(80).collect(),
            why,
        };
        // Every field is ASCII; rejecting anything else first also keeps the slicing below on
        // character boundaries.
        if !s.is_ascii() {
            return Err(bad("contains non-ASCII characters"));
        }
        let b = s.as_bytes();
        if b.len() < 2 {
            return Err(bad("shorter than the version field"));
        }
        let mut version = [0u8; 1];
        super::ids::decode_lower_hex(&s[..2], &mut version)
            .ok_or_else(|| bad("version is not two lowercase hex digits"))?;
        match version[0] {
            0xff => return Err(bad("version ff is forbidden")),
            0x00 if b.len() != TRACEPARENT_LEN => {
                return Err(bad("version 00 must be exactly 55 characters"))
            }
            _ if b.len() < TRACEPARENT_LEN => return Err(bad("too short")),
            _ if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' => {
                return Err(bad("a future version's extra fields must follow a '-'"))
            }
            _ => {}
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad("fields must be separated by '-'"));
        }
        let trace_id = TraceId::parse_hex(&s[3..35])
            .ok_or_else(|| bad("trace-id must be 32 lowercase hex digits, not all zero"))?;
        let parent_id = SpanId::parse_hex(&s[36..52])
            .ok_or_else(|| bad("parent-id must be 16 lowercase hex digits, not all zero"))?;
        let mut flags = [0u8; 1];
        super::ids::decode_lower_hex(&s[53..55], &mut flags)
            .ok_or_else(|| bad("trace-flags must be two lowercase hex digits"))?;
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// Whether the caller recorded (sampled) this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

impl fmt::Display for TraceParent {
    /// Always written as version 00 with only the flags this version defines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags & 0x01
        )
    }
}

/// Validates a (combined) `tracestate` value; returns the normalized list, or `None` when the
/// value is empty or invalid (bad key or value, duplicate key, more than 32 members), in which
/// case the whole header is dropped as the specification allows.
pub fn parse_tracestate(combined: &str) -> Option<String> {
    let mut keys: Vec<&str> = Vec::new();
    let mut members: Vec<&str> = Vec::new();
    for member in combined.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_tracestate_key(key) || !valid_tracestate_value(value) || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        members.push(member);
    }
    if members.is_empty() || members.len() > TRACESTATE_MAX_MEMBERS {
        return None;
    }
    Some(members.join(","))
}

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

fn valid_tracestate_key(key: &str) -> bool {
    let b = key.as_bytes();
    match key.split_once('@') {
        None => {
            (1..=256).contains(&b.len())
                && b[0].is_ascii_lowercase()
                && b.iter().all(|&c| key_char(c))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&t.len())
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|&c| key_char(c))
                && (1..=14).contains(&s.len())
                && s[0].is_ascii_lowercase()
                && s.iter().all(|&c| key_char(c))
        }
    }
}

fn valid_tracestate_value(value: &str) -> bool {
    let b = value.as_bytes();
    (1..=256).contains(&b.len())
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b.last().is_some_and(|&c| c != b' ')
}

/// Where this hop's trace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOrigin {
    /// A valid incoming `traceparent`.
    W3c,
    /// Incoming B3 headers (only when B3 is enabled and no valid `traceparent` arrived).
    B3,
    /// No usable incoming context: this proxy started the trace.
    Started,
}

/// The trace context of one request at this hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (continued or new).
    pub trace_id: TraceId,
    /// This hop's own, fresh span id; it is the parent id the next hop receives.
    pub span_id: SpanId,
    /// The caller's span id, when the trace was continued.
    pub parent_span_id: Option<SpanId>,
    /// The sampling decision (the caller's, or ours for a new trace).
    pub sampled: bool,
    /// The validated `tracestate` forwarded unchanged (only with a valid `traceparent`).
    pub tracestate: Option<String>,
    /// The request id (`x-request-id`), kept or created.
    pub request_id: String,
    /// Where the trace came from.
    pub origin: TraceOrigin,
}

impl TraceContext {
    /// The `traceparent` value the next hop receives (our span as its parent).
    pub fn traceparent(&self) -> String {
        use std::fmt::Write as _;
        // 55 bytes: one allocation, no regrowth while formatting.
        let mut s = String::with_capacity(55);
        let _ = write!(
            s,
            "{}",
            TraceParent {
                trace_id: self.trace_id,
                parent_id: self.span_id,
                flags: u8::from(self.sampled),
            }
        );
        s
    }
}

/// Reads the incoming trace headers, decides this hop's [`TraceContext`] and rewrites the
/// headers for the next hop (`traceparent`, `tracestate`, `x-request-id`, and B3 when enabled).
///
/// Call it exactly once per request, where the request enters this proxy.
pub fn propagate(headers: &mut HeaderMap, cfg: &TracingConfig) -> TraceContext {
    let incoming = incoming_traceparent(headers);
    let (trace_id, parent, sampled, origin, tracestate) = match incoming {
        Some(tp) => {
            let state = combined(headers, &TRACESTATE).and_then(|s| parse_tracestate(&s));
            (
                tp.trace_id,
                Some(tp.parent_id),
                tp.sampled(),
                TraceOrigin::W3c,
                state,
            )
        }
        None => {
            let from_b3 = if cfg.b3 { b3::read(headers) } else { None };
            match from_b3 {
                Some(b3::B3 {
                    ids: Some((t, s)),
                    sampled,
                }) => (
                    t,
                    Some(s),
                    sampled.unwrap_or_else(|| sample_new(cfg)),
                    TraceOrigin::B3,
                    None,
                ),
                Some(b3::B3 { ids: None, sampled }) => (
                    TraceId::random(),
                    None,
                    sampled.unwrap_or_else(|| sample_new(cfg)),
                    TraceOrigin::Started,
                    None,
                ),
                None => (
                    TraceId::random(),
                    None,
                    sample_new(cfg),
                    TraceOrigin::Started,
                    None,
                ),
            }
        }
    };
    let request_id = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let ctx = TraceContext {
        trace_id,
        span_id: SpanId::random(),
        parent_span_id: parent,
        sampled,
        tracestate,
        request_id,
        origin,
    };
    write_headers(headers, &ctx, cfg);
    ctx
}

fn sample_new(cfg: &TracingConfig) -> bool {
    cfg.new_trace_sample_ratio >= 1.0 || fastrand::f64() < cfg.new_trace_sample_ratio
}

/// The incoming `traceparent`, if exactly one header is present and it is valid.
fn incoming_traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(first.to_str().ok()?).ok()
}

/// All values of a header joined with `,` (as HTTP list headers combine).
fn combined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    (!parts.is_empty()).then(|| parts.join(","))
}

fn valid_request_id(v: &str) -> bool {
    (1..=REQUEST_ID_MAX_LEN).contains(&v.len()) && v.bytes().all(|c| c.is_ascii_graphic())
}

/// A new request id in UUID v4 form.
fn new_request_id() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut hex = [0u8; 32];
    if hex::encode_to_slice(b, &mut hex).is_err() {
        return String::new(); // unreachable: 16 bytes always fit 32 hex digits
    }
    // 8-4-4-4-12 hex digits: one allocation of the final size.
    let mut id = String::with_capacity(36);
    for (i, range) in [0..8, 8..12, 12..16, 16..20, 20..32]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            id.push('-');
        }
        id.extend(hex[range].iter().map(|&c| char::from(c)));
    }
    id
}

fn write_headers(headers: &mut HeaderMap, ctx: &TraceContext, cfg: &TracingConfig) {
    insert(headers, TRACEPARENT, &ctx.traceparent());
    match &ctx.tracestate {
        Some(state) => insert(headers, TRACESTATE, state),
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    insert(headers, REQUEST_ID, &ctx.request_id);
    if cfg.b3 {
        b3::write(headers, ctx);
    }
}

/// Inserts a value we produced ourselves (always visible ASCII), replacing every old value.
pub(crate) fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
