//! The exporter task: batches queued spans and sends each batch with a timeout.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::span::{encode_request, ResourceSource};
use super::transport::Transport;
use super::ExportCounters;
use crate::config::otlp::OtlpTarget;
use crate::observe::AccessLogEntry;

/// How the exporter batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    pub(super) max_batch: usize,
    pub(super) delay: Duration,
    pub(super) timeout: Duration,
}

/// Least time between two warnings about failed exports.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Runs until every [`super::SpanExporter`] is dropped: collects up to `max_batch` spans (or
/// what arrived within `delay` of the first), encodes and sends them. While a send is in
/// flight, new spans wait in the bounded queue (and are dropped when it is full).
pub(super) async fn run(
    mut rx: mpsc::Receiver<AccessLogEntry>,
    target: OtlpTarget,
    b: Batching,
    resource: ResourceSource,
    counters: ExportCounters,
) {
    let mut transport = Transport::new(target);
    let mut batch: Vec<AccessLogEntry> = Vec::with_capacity(b.max_batch);
    let mut last_warning: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = Instant::now() + b.delay;
        while batch.len() < b.max_batch {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let n = batch.len() as u64;
        let payload = encode_request(batch.drain(..), &resource.current());
        let result = match tokio::time::timeout(b.timeout, transport.send(payload)).await {
            Ok(r) => r,
            Err(_) => {
                transport.reset();
                Err(format!(
                    "no answer within {:?} (observability.otlp.timeout)",
                    b.timeout
                ))
            }
        };
        match result {
            Ok(()) => {
                counters.exported.inc_by(n);
            }
            Err(why) => {
                counters.failed.inc_by(n);
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        collector = %transport.target().authority,
                        spans = n,
                        error = %why,
                        "OTLP span export failed; the spans are dropped (requests are not \
                         affected; further failures are counted in docmesh_otlp_spans_failed_total \
                         and logged at most once a minute)"
                    );
                }
            }
        }
    }
}
