//! Observability: trace context on every hop, the JSON access log, and the per-pair metrics.
//!
//! - [`trace::propagate`]: called once per request where it enters the proxy; returns the
//!   [`TraceContext`] and rewrites the trace headers for the next hop.
//! - [`AccessLogger::log`]: one JSON line per request (per connection for opaque TCP), never
//!   blocking the data path.
//! - [`MeshMetrics`]: the Prometheus families, one method per event
//!   (e.g. [`MeshMetrics::request_finished`]), registered in the shared `crate::metrics`.

pub mod access_log;
pub mod b3;
pub mod hop;
pub mod ids;
pub mod metrics;
pub mod otlp;
pub mod record;
pub mod trace;

#[cfg(test)]
mod trace_tests;

pub use access_log::{AccessLogEntry, AccessLogger};
pub use hop::{request_trace_id, AuthzReason, HopAddrs, Tenant};
pub use ids::{SpanId, TraceId};
pub use metrics::{CircuitState, ConnectionGuard, MeshMetrics, ServicePair};
pub use otlp::SpanExporter;
pub use record::{ObservedBody, Outcome, RequestBytes};
pub use trace::{propagate, TraceContext, TraceOrigin, TraceParent};

use crate::config::observability::{ObservabilityConfig, TracingConfig};

/// Everything the data path needs for observability, built once at startup. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Observability {
    /// Trace propagation settings.
    pub tracing: TracingConfig,
    /// The access logger.
    pub log: AccessLogger,
    /// The metric families.
    pub metrics: MeshMetrics,
    /// The OTLP span exporter, when `[observability.otlp]` names a collector.
    pub otlp: Option<SpanExporter>,
    /// Our own SPIFFE ID (the source of outbound pairs, the destination of inbound ones).
    local_id: std::sync::Arc<arc_swap::ArcSwapOption<String>>,
}

impl Observability {
    /// Registers the metric families in `shared` and starts the access log writer on stdout.
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: &ObservabilityConfig, shared: &crate::metrics::Metrics) -> Self {
        Self::with_log_writer(cfg, shared, tokio::io::stdout())
    }

    /// Like [`Observability::new`] with the access log written to `writer` (tests).
    pub fn with_log_writer<W>(
        cfg: &ObservabilityConfig,
        shared: &crate::metrics::Metrics,
        writer: W,
    ) -> Self
    where
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let metrics = MeshMetrics::register(shared, &cfg.metrics);
        let log = AccessLogger::to_writer(&cfg.access_log, metrics.access_log_dropped(), writer);
        let local_id: std::sync::Arc<arc_swap::ArcSwapOption<String>> = Default::default();
        // An unusable endpoint is refused by config validation; here it just means no export.
        let otlp = match cfg.otlp.target() {
            Ok(Some(target)) => Some(SpanExporter::start(
                &cfg.otlp,
                target,
                shared,
                std::sync::Arc::clone(&local_id),
            )),
            _ => None,
        };
        Observability {
            tracing: cfg.tracing.clone(),
            log,
            metrics,
            otlp,
            local_id,
        }
    }

    /// Trace propagation only: metrics go to a private registry nobody scrapes and the access
    /// log is off. The data path's default until `run` installs the real one.
    pub fn noop() -> Self {
        let cfg = ObservabilityConfig::default();
        let mut registry = prometheus_client::registry::Registry::default();
        Observability {
            tracing: cfg.tracing,
            log: AccessLogger::disabled(),
            metrics: MeshMetrics::new(&mut registry, &cfg.metrics),
            otlp: None,
            local_id: Default::default(),
        }
    }

    /// Sets our own SPIFFE ID (call at startup and after every SVID rotation).
    pub fn set_local_id(&self, id: &str) {
        self.local_id
            .store(Some(std::sync::Arc::new(id.to_owned())));
    }

    /// Our own SPIFFE ID, once known.
    pub fn local_id(&self) -> Option<std::sync::Arc<String>> {
        self.local_id.load_full()
    }

    /// The once-per-request trace decision; rewrites `headers` for the next hop.
    pub fn trace(&self, headers: &mut http::HeaderMap) -> TraceContext {
        propagate(headers, &self.tracing)
    }

    /// Records a finished request (HTTP: metrics and access log) or connection (TCP: access
    /// log; connections are counted by [`MeshMetrics::connection_opened`]).
    pub fn finish(&self, pair: &ServicePair, entry: AccessLogEntry) {
        if entry.protocol == "http" {
            self.metrics
                .request_finished(pair, entry.status, entry.cause, entry.duration);
        }
        self.log.log(entry);
    }
}

/// Seconds since the Unix epoch (negative before it), for timestamp gauges.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Which side of the proxy a request or connection went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a peer proxy to the local app.
    Inbound,
    /// From the local app to another service.
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound` (log field and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Errors of the observability module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// An incoming `traceparent` broke the W3C Trace Context rules; the proxy starts a new
    /// trace instead. Check the caller's tracing library (ids must be lowercase hex, non-zero).
    #[error("invalid traceparent {value:?}: {why}; a new trace is started instead (check the caller's tracing library)")]
    InvalidTraceparent {
        /// The offending value (truncated).
        value: String,
        /// Which rule it broke.
        why: &'static str,
    },
}
