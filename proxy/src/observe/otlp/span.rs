//! From finished requests to OTLP spans and the resource that produced them. Runs on the
//! exporter task only: the data path never builds attributes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::proto::{self, span_kind, KeyValue};
use crate::config::otlp::OtlpConfig;
use crate::observe::{AccessLogEntry, Direction, Outcome, SpanId, TraceId};

/// Instrumentation scope name of docmesh's spans.
const SCOPE: &str = "docmesh-proxy";

/// The resource attributes: configured ones over those derived from the SPIFFE ID and the Pod.
pub(super) struct ResourceSource {
    service_name: String,
    configured: BTreeMap<String, String>,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
    host_name: Option<String>,
    local_id: Arc<ArcSwapOption<String>>,
}

impl ResourceSource {
    pub(super) fn new(cfg: &OtlpConfig, local_id: Arc<ArcSwapOption<String>>) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ResourceSource {
            service_name: cfg.service_name.clone(),
            configured: cfg.resource_attributes.clone(),
            pod_name: env("POD_NAME"),
            pod_namespace: env("POD_NAMESPACE"),
            host_name: env("HOSTNAME"),
            local_id,
        }
    }

    /// The resource as of now (the SPIFFE ID can arrive after the first spans).
    pub(super) fn current(&self) -> proto::Resource {
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        let id = self.local_id.load_full();
        let (namespace, workload) = id.as_deref().map_or((None, None), |i| spiffe_parts(i));
        let name = if !self.service_name.is_empty() {
            self.service_name.clone()
        } else {
            workload.unwrap_or("docmesh-proxy").to_owned()
        };
        attrs.insert("service.name".into(), name);
        if let Some(ns) = namespace {
            attrs.insert("service.namespace".into(), ns.to_owned());
        }
        if let Some(id) = id.as_deref() {
            attrs.insert("docmesh.spiffe_id".into(), id.clone());
        }
        if let Some(p) = &self.pod_name {
            attrs.insert("k8s.pod.name".into(), p.clone());
        }
        if let Some(n) = &self.pod_namespace {
            attrs.insert("k8s.namespace.name".into(), n.clone());
        }
        if let Some(h) = &self.host_name {
            attrs.insert("host.name".into(), h.clone());
        }
        attrs.insert("telemetry.sdk.name".into(), "docmesh".into());
        attrs.insert("telemetry.sdk.language".into(), "rust".into());
        attrs.insert(
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        for (k, v) in &self.configured {
            attrs.insert(k.clone(), v.clone());
        }
        proto::Resource {
            attributes: attrs
                .into_iter()
                .map(|(k, v)| KeyValue::str(&k, v))
                .collect(),
        }
    }
}

/// (namespace, workload) of `spiffe://td/ns/<ns>/sa/<sa>`; other paths give their last
/// segment as the workload.
fn spiffe_parts(id: &str) -> (Option<&str>, Option<&str>) {
    let path = id
        .strip_prefix("spiffe://")
        .and_then(|r| r.split_once('/'))
        .map_or("", |(_, p)| p);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["ns", ns, "sa", sa, ..] => (Some(ns), Some(sa)),
        [.., last] => (None, Some(last)),
        [] => (None, None),
    }
}

/// One `ExportTraceServiceRequest` with `entries` as spans of `resource`.
pub(super) fn encode_request(
    entries: impl Iterator<Item = AccessLogEntry>,
    resource: &proto::Resource,
) -> Vec<u8> {
    let spans = entries.map(to_span).collect();
    let req = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    };
    prost::Message::encode_to_vec(&req)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span of one finished request (or opaque TCP connection, which carries no trace
/// context and gets a trace of its own).
pub(super) fn to_span(e: AccessLogEntry) -> proto::Span {
    let client = e.direction == Direction::Outbound;
    let http = e.protocol == "http";
    let (trace_id, span_id, parent, sampled, trace_state) = match &e.trace {
        Some(t) => (
            t.trace_id,
            t.span_id,
            t.parent_span_id,
            t.sampled,
            t.tracestate.clone().unwrap_or_default(),
        ),
        None => (
            TraceId::random(),
            SpanId::random(),
            None,
            true,
            String::new(),
        ),
    };
    let mut a = Vec::with_capacity(20);
    a.push(KeyValue::str("docmesh.direction", e.direction.as_str()));
    a.push(KeyValue::str("docmesh.protocol", e.protocol));
    if let Some(m) = &e.method {
        a.push(KeyValue::str("http.request.method", m.as_str()));
    }
    if let Some(p) = &e.path {
        a.push(KeyValue::str("url.path", p.as_str()));
    }
    if let Some(s) = e.status {
        a.push(KeyValue::int("http.response.status_code", i64::from(s)));
    }
    if let Some(svc) = &e.service {
        a.push(KeyValue::str("docmesh.service", svc.as_str()));
        if client {
            a.push(KeyValue::str("server.address", svc.as_str()));
        }
    }
    if let Some(up) = e.upstream_addr {
        if client {
            a.push(KeyValue::int("server.port", i64::from(up.port())));
            a.push(KeyValue::str("network.peer.address", up.ip().to_string()));
            a.push(KeyValue::int("network.peer.port", i64::from(up.port())));
        }
    }
    if let Some(peer) = e.peer_addr {
        if !client {
            a.push(KeyValue::str("client.address", peer.ip().to_string()));
            a.push(KeyValue::str("network.peer.address", peer.ip().to_string()));
            a.push(KeyValue::int("network.peer.port", i64::from(peer.port())));
        }
    }
    if let Some(s) = &e.source {
        a.push(KeyValue::str("docmesh.source", s.as_str()));
    }
    if let Some(d) = &e.destination {
        a.push(KeyValue::str("docmesh.destination", d.as_str()));
    }
    if let Some(t) = &e.trace {
        a.push(KeyValue::str("docmesh.request_id", t.request_id.as_str()));
    }
    if let Some(t) = &e.tenant {
        a.push(KeyValue::str("docmesh.tenant", t.as_str()));
    }
    a.push(KeyValue::int("docmesh.attempts", i64::from(e.attempts)));
    a.push(KeyValue::int(
        "docmesh.bytes_received",
        e.bytes_received as i64,
    ));
    a.push(KeyValue::int("docmesh.bytes_sent", e.bytes_sent as i64));
    a.push(KeyValue::str("docmesh.outcome", e.outcome.as_str()));
    if let Some(c) = e.cause {
        a.push(KeyValue::str("docmesh.cause", c.as_str()));
        a.push(KeyValue::str("error.type", c.as_str()));
    }
    if let Some(d) = &e.detail {
        a.push(KeyValue::str("docmesh.detail", d.as_str()));
    }
    let error = if let Some(c) = e.cause {
        Some(c.as_str().to_owned())
    } else if e.outcome != Outcome::Complete {
        Some(e.outcome.as_str().to_owned())
    } else if http && e.status.is_none_or(|s| s >= 500 || (client && s >= 400)) {
        Some(e.status.map_or("no response".to_owned(), |s| s.to_string()))
    } else {
        None
    };
    let name = match (&e.method, http) {
        (Some(m), true) => m.clone(),
        (None, true) => "HTTP".to_owned(),
        (_, false) => format!("tcp {}", e.service.as_deref().unwrap_or_default()),
    };
    let start = unix_nanos(e.start);
    let end = start.saturating_add(u64::try_from(e.duration.as_nanos()).unwrap_or(u64::MAX));
    proto::Span {
        trace_id: trace_id.as_bytes().to_vec(),
        span_id: span_id.as_bytes().to_vec(),
        trace_state,
        parent_span_id: parent.map(|p| p.as_bytes().to_vec()).unwrap_or_default(),
        name,
        kind: if client {
            span_kind::CLIENT
        } else {
            span_kind::SERVER
        },
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: a,
        status: error.map(|message| proto::Status {
            message,
            code: proto::STATUS_ERROR,
        }),
        flags: u32::from(sampled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(s: &'a proto::Span, key: &str) -> Option<&'a proto::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn an_inbound_request_becomes_a_server_span_with_its_context_and_attributes() {
        let ctx = crate::observe::TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: Some(SpanId::random()),
            sampled: false,
            tracestate: Some("k=v".into()),
            request_id: "r-1".into(),
            origin: crate::observe::TraceOrigin::W3c,
        };
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        let mut e =
            AccessLogEntry::http(start, Direction::Inbound, ctx.clone(), "POST", "/x".into());
        e.duration = std::time::Duration::from_millis(5);
        e.status = Some(200);
        e.tenant = Some("acme".into());
        e.outcome = Outcome::ClientCancelled;
        let s = to_span(e);
        assert_eq!(s.kind, span_kind::SERVER);
        assert_eq!(s.trace_id, ctx.trace_id.as_bytes());
        assert_eq!(s.span_id, ctx.span_id.as_bytes());
        assert_eq!(s.parent_span_id, ctx.parent_span_id.unwrap().as_bytes());
        assert_eq!((s.flags, s.trace_state.as_str()), (0, "k=v"));
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 5_000_000);
        assert_eq!(s.start_time_unix_nano, 10_000_000_000);
        assert_eq!(
            attr(&s, "docmesh.tenant"),
            Some(&proto::Value::String("acme".into()))
        );
        assert_eq!(
            attr(&s, "http.response.status_code"),
            Some(&proto::Value::Int(200))
        );
        let status = s.status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (proto::STATUS_ERROR, "client-cancelled")
        );
    }

    #[test]
    fn spiffe_ids_name_the_service() {
        assert_eq!(
            spiffe_parts("spiffe://example.org/ns/oo/sa/documentserver"),
            (Some("oo"), Some("documentserver"))
        );
        assert_eq!(
            spiffe_parts("spiffe://td/web/frontend"),
            (None, Some("frontend"))
        );
        assert_eq!(spiffe_parts("spiffe://td"), (None, None));
    }
}
