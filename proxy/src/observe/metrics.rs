//! The proxy's Prometheus metric families and the small typed API the data path calls.
//!
//! Every request-level family is labelled with the *service pair*: direction, configured
//! service, source and destination SPIFFE IDs. IDs come only from authenticated peers or from
//! configuration (never from a header or an unauthenticated peer), and the number of distinct
//! pairs is capped (`observability.metrics.max_service_pairs`): beyond it, new pairs are counted
//! under `overflow`. No label ever holds a path or a raw client-supplied value.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{Direction, TraceId};
use crate::config::observability::MetricsConfig;
use crate::errors::Cause;

/// Label value for an identity that is not known (e.g. a plaintext or failed peer).
pub const UNKNOWN: &str = "unknown";
/// Label value used once `max_service_pairs` distinct pairs have been seen.
pub const OVERFLOW: &str = "overflow";

/// Latency buckets in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The service pair labels shared by every request-level family.
#[derive(Debug, Clone)]
pub struct ServicePair {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The configured service (outbound) or inbound listener/service name.
    pub service: Arc<String>,
    /// SPIFFE ID of the calling workload.
    pub source: Arc<String>,
    /// SPIFFE ID of the called workload.
    pub destination: Arc<String>,
    /// The pair's per-request metrics once looked up (not a label).
    handles: Arc<PairHandles>,
}

/// The metrics every request of a pair updates, looked up on its first request so that the
/// later ones skip hashing the label set (service and two SPIFFE IDs) twice per request. They
/// belong to the [`MeshMetrics`] that made the pair (`owner`); any other records by labels.
#[derive(Debug, Default)]
struct PairHandles {
    owner: usize,
    /// `requests{status_class="2xx", cause="none"}`: the common outcome.
    succeeded: OnceLock<Counter>,
    duration: OnceLock<LatencyHistogram>,
}

impl ServicePair {
    fn label_values(&self) -> (&'static str, &str, &str, &str) {
        (
            self.direction,
            self.service.as_str(),
            self.source.as_str(),
            self.destination.as_str(),
        )
    }
}

impl PartialEq for ServicePair {
    fn eq(&self, other: &Self) -> bool {
        self.label_values() == other.label_values()
    }
}

impl Eq for ServicePair {}

impl std::hash::Hash for ServicePair {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.label_values().hash(state);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct RequestLabels {
    pair: ServicePair,
    status_class: &'static str,
    cause: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ConnectionLabels {
    pair: ServicePair,
    protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct AuthzLabels {
    pair: ServicePair,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    direction: &'static str,
    service: String,
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CircuitLabels {
    service: String,
    endpoint: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SvidLabels {
    spiffe_id: String,
}

impl ServicePair {
    fn labels(&self) -> [(&'static str, &str); 4] {
        [
            ("direction", self.direction),
            ("service", self.service.as_str()),
            ("source", self.source.as_str()),
            ("destination", self.destination.as_str()),
        ]
    }
}

// The derive's `flatten` does not compile in this prometheus-client version, so the label sets
// that embed the pair are encoded by hand.
impl EncodeLabelSet for ServicePair {
    fn encode(&self, encoder: LabelSetEncoder) -> std::fmt::Result {
        self.labels().encode(encoder)
    }
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> std::fmt::Result {
        let [a, b, c, d] = self.pair.labels();
        [
            a,
            b,
            c,
            d,
            ("status_class", self.status_class),
            ("cause", self.cause),
        ]
        .encode(encoder)
    }
}

impl EncodeLabelSet for ConnectionLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> std::fmt::Result {
        let [a, b, c, d] = self.pair.labels();
        [a, b, c, d, ("protocol", self.protocol)].encode(encoder)
    }
}

impl EncodeLabelSet for AuthzLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> std::fmt::Result {
        let [a, b, c, d] = self.pair.labels();
        [
            a,
            b,
            c,
            d,
            ("decision", self.decision),
            ("reason", self.reason),
        ]
        .encode(encoder)
    }
}

/// The state of an endpoint's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are refused (`circuit-open`).
    Open,
    /// One probe request decides whether to close again.
    HalfOpen,
}

impl CircuitState {
    const ALL: [CircuitState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// The mesh's metric families (requests, latency, retries, circuits, connections, TLS,
/// authorization, SVID expiry). Cheap to clone (every family is shared).
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<ServicePair, LatencyHistogram>,
    retries: Family<ServicePair, Counter>,
    budget_exhausted: Family<ServicePair, Counter>,
    open_connections: Family<ConnectionLabels, Gauge>,
    connections: Family<ConnectionLabels, Counter>,
    tls: Family<TlsLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    circuit_state: Family<CircuitLabels, Gauge>,
    circuit_transitions: Family<CircuitLabels, Counter>,
    endpoint_requests: Family<EndpointLabels, Counter>,
    svid_expiry: Family<SvidLabels, Gauge>,
    access_log_dropped: Counter,
    pairs: Arc<Mutex<HashSet<ServicePair>>>,
    max_pairs: usize,
}

impl MeshMetrics {
    /// Creates every family and registers it in the shared registry that `/metrics` serves
    /// (which adds the `docmesh_` prefix).
    pub fn register(shared: &crate::metrics::Metrics, cfg: &MetricsConfig) -> Self {
        shared.with_registry(|r| Self::new(r, cfg))
    }

    /// Creates every family and registers it in `registry`; names get the registry's prefix
    /// (the shared registry's is `docmesh`).
    pub fn new(registry: &mut Registry, cfg: &MetricsConfig) -> Self {
        let m = MeshMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                LatencyHistogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            open_connections: Family::default(),
            connections: Family::default(),
            tls: Family::default(),
            authz: Family::default(),
            circuit_state: Family::default(),
            circuit_transitions: Family::default(),
            endpoint_requests: Family::default(),
            svid_expiry: Family::default(),
            access_log_dropped: Counter::default(),
            pairs: Arc::default(),
            max_pairs: cfg.max_service_pairs.max(1),
        };
        registry.register(
            "requests",
            "Requests finished, by service pair, status class (2xx..5xx, or none when no status was sent) and cause (none, or the docmesh-error cause)",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request start to the end of the response, by service pair",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "retries",
            "Retry attempts made, by service pair",
            m.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the retry budget was exhausted, by service pair",
            m.budget_exhausted.clone(),
        );
        registry.register(
            "open_connections",
            "Connections currently open, by service pair and protocol (http or tcp)",
            m.open_connections.clone(),
        );
        registry.register(
            "connections",
            "Connections accepted or opened, by service pair and protocol",
            m.connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by direction, service, result (ok or failed) and failure reason",
            m.tls.clone(),
        );
        registry.register(
            "authz_decisions",
            "Authorization decisions, by service pair, decision (allow or deny) and reason",
            m.authz.clone(),
        );
        registry.register(
            "circuit_state",
            "1 for the current circuit breaker state of each endpoint, 0 for the others",
            m.circuit_state.clone(),
        );
        registry.register(
            "circuit_transitions",
            "Circuit breaker transitions, by endpoint and the state entered",
            m.circuit_transitions.clone(),
        );
        registry.register(
            "endpoint_requests",
            "Outbound HTTP request attempts sent to each endpoint (Pod) of a service, retries included",
            m.endpoint_requests.clone(),
        );
        registry.register(
            "svid_expiry_timestamp_seconds",
            "Unix time at which the proxy's current X.509-SVID expires",
            m.svid_expiry.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            m.access_log_dropped.clone(),
        );
        m
    }

    /// The labels for one service pair; call once per connection (or per route) and reuse.
    ///
    /// `source` and `destination` must be authenticated or configured SPIFFE IDs (`None` when
    /// unknown); `service` must come from configuration. Past `max_service_pairs` distinct
    /// pairs, the service, source and destination are all reported as `overflow`.
    pub fn pair(
        &self,
        direction: Direction,
        service: &str,
        source: Option<&str>,
        destination: Option<&str>,
    ) -> ServicePair {
        let handles = Arc::new(PairHandles {
            owner: self.id(),
            ..PairHandles::default()
        });
        let pair = ServicePair {
            direction: direction.as_str(),
            service: Arc::new(service.to_owned()),
            source: Arc::new(source.unwrap_or(UNKNOWN).to_owned()),
            destination: Arc::new(destination.unwrap_or(UNKNOWN).to_owned()),
            handles: handles.clone(),
        };
        let mut seen = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&pair) {
            return pair;
        }
        if seen.len() < self.max_pairs {
            seen.insert(pair.clone());
            return pair;
        }
        let overflow = Arc::new(OVERFLOW.to_owned());
        ServicePair {
            direction: pair.direction,
            service: overflow.clone(),
            source: overflow.clone(),
            destination: overflow,
            handles,
        }
    }

    /// Identifies this set of families (clones share it) for [`PairHandles::owner`].
    fn id(&self) -> usize {
        Arc::as_ptr(&self.pairs) as usize
    }

    /// One request finished: counts it by status class and cause and records its latency.
    /// `status` is `None` when no response was sent (e.g. the client went away).
    pub fn request_finished(
        &self,
        pair: &ServicePair,
        status: Option<u16>,
        cause: Option<Cause>,
        duration: Duration,
    ) {
        self.request_finished_traced(pair, status, cause, duration, None);
    }

    /// [`MeshMetrics::request_finished`] with the trace of the request as the latency
    /// bucket's exemplar (OpenMetrics `# {trace_id="..."}`): each bucket keeps the most
    /// recent one, so a slow bucket leads to the trace of a recent slow request.
    pub fn request_finished_traced(
        &self,
        pair: &ServicePair,
        status: Option<u16>,
        cause: Option<Cause>,
        duration: Duration,
        trace: Option<TraceId>,
    ) {
        let exemplar = trace.map(TraceExemplar);
        let labels = |status_class| RequestLabels {
            pair: pair.clone(),
            status_class,
            cause: cause.map_or("none", Cause::as_str),
        };
        let class = status_class(status);
        let seconds = duration.as_secs_f64();
        let cached = &pair.handles;
        if cached.owner != self.id() {
            self.requests.get_or_create(&labels(class)).inc();
            self.duration.get_or_create(pair).observe(seconds, exemplar);
            return;
        }
        if class == "2xx" && cause.is_none() {
            cached
                .succeeded
                .get_or_init(|| self.requests.get_or_create(&labels(class)).clone())
                .inc();
        } else {
            self.requests.get_or_create(&labels(class)).inc();
        }
        cached
            .duration
            .get_or_init(|| self.duration.get_or_create(pair).clone())
            .observe(seconds, exemplar);
    }

    /// A retry attempt was made.
    pub fn retry(&self, pair: &ServicePair) {
        self.retries.get_or_create(pair).inc();
    }

    /// A retry was wanted but the retry budget was exhausted.
    pub fn retry_budget_exhausted(&self, pair: &ServicePair) {
        self.budget_exhausted.get_or_create(pair).inc();
    }

    /// A connection opened; the open-connections gauge drops again when the guard drops.
    /// `protocol` is `http` or `tcp`.
    pub fn connection_opened(&self, pair: &ServicePair, protocol: &'static str) -> ConnectionGuard {
        let labels = ConnectionLabels {
            pair: pair.clone(),
            protocol,
        };
        self.connections.get_or_create(&labels).inc();
        self.open_connections.get_or_create(&labels).inc();
        ConnectionGuard {
            family: self.open_connections.clone(),
            labels,
        }
    }

    /// A TLS handshake finished: `Ok(())`, or `Err(reason)` with a stable reason (a cause
    /// name such as `tls-untrusted-peer`, or e.g. `plaintext-client`, `no-client-cert`).
    pub fn tls_handshake(
        &self,
        direction: Direction,
        service: &str,
        result: Result<(), &'static str>,
    ) {
        let (result, reason) = match result {
            Ok(()) => ("ok", "none"),
            Err(reason) => ("failed", reason),
        };
        self.tls
            .get_or_create(&TlsLabels {
                direction: direction.as_str(),
                service: service.to_owned(),
                result,
                reason,
            })
            .inc();
    }

    /// An authorization decision; `reason` is a stable name (e.g. `spiffe-rule`, `jwt-expired`).
    pub fn authz_decision(&self, pair: &ServicePair, allowed: bool, reason: &'static str) {
        self.authz
            .get_or_create(&AuthzLabels {
                pair: pair.clone(),
                decision: if allowed { "allow" } else { "deny" },
                reason,
            })
            .inc();
    }

    /// An endpoint's circuit moved to `to` (endpoints come from configuration or DNS).
    pub fn circuit_transition(&self, service: &str, endpoint: &str, to: CircuitState) {
        for state in CircuitState::ALL {
            let labels = CircuitLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                state: state.as_str(),
            };
            self.circuit_state
                .get_or_create(&labels)
                .set(i64::from(state == to));
            if state == to {
                self.circuit_transitions.get_or_create(&labels).inc();
            }
        }
    }

    /// The request counter of one endpoint of a service (kept by the balancer's endpoint slot,
    /// so counting a request is one atomic add).
    pub fn endpoint_requests(&self, service: &str, endpoint: &str) -> Counter {
        self.endpoint_requests
            .get_or_create(&EndpointLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }

    /// The current SVID (a new one replaces the old series) and its expiry as Unix seconds.
    pub fn svid_loaded(&self, spiffe_id: &str, not_after_unix: i64) {
        self.svid_expiry.clear();
        self.svid_expiry
            .get_or_create(&SvidLabels {
                spiffe_id: spiffe_id.to_owned(),
            })
            .set(not_after_unix);
    }

    /// The counter the access logger bumps when it drops a line.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }
}

/// Keeps a connection counted in `docmesh_open_connections` until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    family: Family<ConnectionLabels, Gauge>,
    labels: ConnectionLabels,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.family.get_or_create(&self.labels).dec();
    }
}

/// `2xx`, `4xx`, ... for a status; `none` when no response was sent.
fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

/// The latency histogram, with a trace id exemplar per bucket.
type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

/// The exemplar label set `{trace_id="<32 hex digits>"}`; a fixed-size value, so recording
/// one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceExemplar(pub TraceId);

impl prometheus_client::encoding::EncodeLabelSet for TraceExemplar {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("trace_id", self.0.to_string()).encode(encoder.encode_label())
    }
}
