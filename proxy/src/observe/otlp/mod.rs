//! OpenTelemetry span export over OTLP (gRPC or HTTP/protobuf), off the data path.
//!
//! The data path hands a finished request's [`AccessLogEntry`] to [`SpanExporter::export`],
//! which never waits: entries go through a bounded queue to the exporter task, which turns
//! them into OTLP spans (attributes are built there, not on the request path), batches them
//! and sends each batch with a timeout. A full queue drops the span and counts it
//! (`docmesh_otlp_spans_dropped_total`); a collector that is down, slow or answering errors
//! only costs the spans of the failed batches (`docmesh_otlp_spans_failed_total`).
//!
//! The span ids are this hop's trace context, the ones written into `traceparent`: the
//! outbound (CLIENT) span is the parent of the peer's inbound (SERVER) span, which is the
//! parent of the app's own spans.

mod export;
pub mod proto;
mod span;
mod transport;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::AccessLogEntry;
use crate::config::otlp::{OtlpConfig, OtlpTarget};

/// Hands finished spans to the exporter task without blocking. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanExporter {
    tx: mpsc::Sender<AccessLogEntry>,
    dropped: Counter,
}

/// The exporter's counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExportCounters {
    pub(crate) exported: Counter,
    pub(crate) failed: Counter,
}

impl SpanExporter {
    /// Registers the exporter's counters in `shared` and spawns the exporter task (must be
    /// called inside a tokio runtime). `local_id` is the proxy's SPIFFE ID once known, from
    /// which the resource's `service.name` is derived.
    pub fn start(
        cfg: &OtlpConfig,
        target: OtlpTarget,
        shared: &crate::metrics::Metrics,
        local_id: Arc<ArcSwapOption<String>>,
    ) -> Self {
        let dropped = Counter::default();
        let counters = ExportCounters::default();
        shared.register(
            "otlp_spans_dropped",
            "Spans dropped because the OTLP export queue was full (observability.otlp.queue_capacity)",
            dropped.clone(),
        );
        shared.register(
            "otlp_spans_exported",
            "Spans the OTLP collector accepted",
            counters.exported.clone(),
        );
        shared.register(
            "otlp_spans_failed",
            "Spans lost because their export failed (collector down, slow or answering an error)",
            counters.failed.clone(),
        );
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let resource = span::ResourceSource::new(cfg, local_id);
        let batch = export::Batching {
            max_batch: cfg.max_batch.max(1),
            delay: cfg.batch_delay,
            timeout: cfg.timeout,
        };
        tracing::info!(
            collector = %target.authority,
            path = %target.path,
            protocol = ?target.protocol,
            "exporting spans over OTLP"
        );
        tokio::spawn(export::run(rx, target, batch, resource, counters));
        SpanExporter { tx, dropped }
    }

    /// Queues the span of a finished request (or connection); never waits. Returns whether
    /// it was queued (a full queue drops it and counts it).
    pub fn export(&self, entry: AccessLogEntry) -> bool {
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.inc();
                false
            }
        }
    }

    /// Spans dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}
