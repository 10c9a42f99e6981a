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
pub mod ids;
pub mod metrics;
pub mod trace;

#[cfg(test)]
mod trace_tests;

pub use access_log::{AccessLogEntry, AccessLogger};
pub use ids::{SpanId, TraceId};
pub use metrics::{CircuitState, ConnectionGuard, MeshMetrics, ServicePair};
pub use trace::{propagate, TraceContext, TraceOrigin, TraceParent};

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
