//! The access log: one JSON line per request (per connection for opaque TCP) on stdout.
//!
//! The data path only builds an [`AccessLogEntry`] and hands it to [`AccessLogger::log`], which
//! never blocks: entries go through a bounded channel to a writer task that formats and writes
//! them; when the channel is full the entry is dropped and counted
//! (`docmesh_access_log_dropped_total`). Successful requests are sampled by
//! `success_sample_ratio` on the trace id (so both proxies of a pair keep the same requests);
//! errors are always logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::record::Outcome;
use super::trace::TraceContext;
use super::Direction;
use super::TraceId;
use crate::config::observability::AccessLogConfig;
use crate::errors::Cause;

/// What one access log line records. Build it at the end of a request (or connection).
#[derive(Debug, Clone)]
pub struct AccessLogEntry {
    /// When the request (or connection) started; written as RFC 3339 UTC.
    pub start: SystemTime,
    /// The trace context of this hop (`None` for opaque TCP, which carries no headers).
    pub trace: Option<TraceContext>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// SPIFFE ID of the caller, when authenticated (inbound) or our own (outbound).
    pub source: Option<Arc<String>>,
    /// SPIFFE ID of the callee, when known (configured for outbound, our own for inbound).
    pub destination: Option<Arc<String>>,
    /// The configured service name.
    pub service: Option<String>,
    /// The configured route name, when routes are used.
    pub route: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Request path, without the query string (queries often carry tokens).
    pub path: Option<String>,
    /// Response status sent to the client; `None` when none was sent.
    pub status: Option<u16>,
    /// Body bytes received from the client (request body, or client-to-server TCP bytes).
    pub bytes_received: u64,
    /// Body bytes sent to the client (response body, or server-to-client TCP bytes).
    pub bytes_sent: u64,
    /// Total time until the response (or connection) ended.
    pub duration: Duration,
    /// Upstream attempts made (1 without retries, 0 when none could be made).
    pub attempts: u32,
    /// Why the proxy answered itself, when it did.
    pub cause: Option<Cause>,
    /// The operator-facing detail of a proxy error.
    pub detail: Option<String>,
    /// The downstream peer's address.
    pub peer_addr: Option<SocketAddr>,
    /// The upstream address finally used.
    pub upstream_addr: Option<SocketAddr>,
    /// How the request ended (HTTP): completed, or cut short by the client or the upstream.
    pub outcome: Outcome,
    /// The tenant the inbound authorization established (`docmesh-tenant`), when any.
    pub tenant: Option<String>,
}

impl AccessLogEntry {
    /// An entry for an HTTP request at this hop, with every other field empty.
    pub fn http(
        start: SystemTime,
        direction: Direction,
        trace: TraceContext,
        method: &str,
        path: String,
    ) -> Self {
        AccessLogEntry {
            trace: Some(trace),
            method: Some(method.to_owned()),
            path: Some(path),
            protocol: "http",
            ..Self::tcp(start, direction)
        }
    }

    /// An entry for an opaque TCP connection, with every other field empty.
    pub fn tcp(start: SystemTime, direction: Direction) -> Self {
        AccessLogEntry {
            start,
            trace: None,
            direction,
            protocol: "tcp",
            source: None,
            destination: None,
            service: None,
            route: None,
            method: None,
            path: None,
            status: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            attempts: 1,
            cause: None,
            detail: None,
            peer_addr: None,
            upstream_addr: None,
            outcome: Outcome::Complete,
            tenant: None,
        }
    }

    /// Whether this entry records an error (always logged): a proxy cause, a status of 400
    /// or more, or an HTTP request that got no response.
    pub fn is_error(&self) -> bool {
        self.outcome != Outcome::Complete
            || Self::is_error_outcome(self.status, self.cause, self.protocol == "http")
    }

    /// [`AccessLogEntry::is_error`] before an entry exists: `http` for a request (no status
    /// then means no response), not an opaque connection.
    pub fn is_error_outcome(status: Option<u16>, cause: Option<Cause>, http: bool) -> bool {
        cause.is_some()
            || match status {
                Some(s) => s >= 400,
                None => http,
            }
    }

    /// The JSON line (without the trailing newline).
    pub fn to_json(&self) -> String {
        let time = time::OffsetDateTime::from(self.start)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let trace = self.trace.as_ref();
        let line = Line {
            log: "access",
            time,
            trace_id: trace.map(|t| t.trace_id.to_string()),
            span_id: trace.map(|t| t.span_id.to_string()),
            parent_span_id: trace.and_then(|t| t.parent_span_id.map(|p| p.to_string())),
            sampled: trace.map(|t| t.sampled),
            request_id: trace.map(|t| t.request_id.as_str()),
            direction: self.direction.as_str(),
            protocol: self.protocol,
            source: self.source.as_deref().map(String::as_str),
            destination: self.destination.as_deref().map(String::as_str),
            service: self.service.as_deref(),
            route: self.route.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            status: self.status,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            attempts: self.attempts,
            cause: self.cause.map(Cause::as_str),
            detail: self.detail.as_deref(),
            peer_addr: self.peer_addr.map(|a| a.to_string()),
            upstream_addr: self.upstream_addr.map(|a| a.to_string()),
            outcome: (self.outcome != Outcome::Complete).then(|| self.outcome.as_str()),
            tenant: self.tenant.as_deref(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// The serialized form; field order is the line's column order.
#[derive(Serialize)]
struct Line<'a> {
    log: &'static str,
    time: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    direction: &'static str,
    protocol: &'static str,
    source: Option<&'a str>,
    destination: Option<&'a str>,
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    status: Option<u16>,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: f64,
    attempts: u32,
    cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
}

/// Hands entries to the writer task without blocking. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    tx: Option<mpsc::Sender<AccessLogEntry>>,
    success_ratio: f64,
    dropped: Counter,
}

impl AccessLogger {
    /// A logger that discards everything (access log disabled).
    pub fn disabled() -> Self {
        AccessLogger {
            tx: None,
            success_ratio: 0.0,
            dropped: Counter::default(),
        }
    }

    /// Logs to stdout. Must be called inside a tokio runtime (it spawns the writer task).
    pub fn stdout(cfg: &AccessLogConfig, dropped: Counter) -> Self {
        Self::to_writer(cfg, dropped, tokio::io::stdout())
    }

    /// Logs to any writer (tests inject a pipe here). Spawns the writer task.
    pub fn to_writer<W>(cfg: &AccessLogConfig, dropped: Counter, writer: W) -> Self
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        if !cfg.enabled {
            return Self::disabled();
        }
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        tokio::spawn(write_lines(rx, writer));
        AccessLogger {
            tx: Some(tx),
            success_ratio: cfg.success_sample_ratio,
            dropped,
        }
    }

    /// Whether the access log is on at all.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether a request with this outcome and trace would be logged: errors always, others
    /// when their trace is sampled in (so an entry need not be built to be dropped).
    pub fn wants(&self, is_error: bool, trace_id: TraceId) -> bool {
        self.tx.is_some() && (is_error || self.keeps(trace_id.sample_position()))
    }

    /// Logs `entry` if it is an error or sampled in; never waits. Returns whether it was
    /// queued (a full queue drops it and bumps the dropped counter).
    pub fn log(&self, entry: AccessLogEntry) -> bool {
        let Some(tx) = &self.tx else { return false };
        if !entry.is_error() && !self.sampled_in(&entry) {
            return false;
        }
        match tx.try_send(entry) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.inc();
                false
            }
        }
    }

    /// Lines dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    fn sampled_in(&self, entry: &AccessLogEntry) -> bool {
        let position = match &entry.trace {
            Some(t) => t.trace_id.sample_position(),
            None => fastrand::f64(),
        };
        self.keeps(position)
    }

    /// Whether a success at `position` (in 0..1, from its trace id) is sampled in.
    fn keeps(&self, position: f64) -> bool {
        self.success_ratio >= 1.0 || position < self.success_ratio
    }
}

/// The writer task: formats entries and writes them, flushing whenever the queue is empty.
/// Ends when every logger is dropped or the writer fails (e.g. stdout closed).
async fn write_lines<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<AccessLogEntry>, mut w: W) {
    while let Some(entry) = rx.recv().await {
        let mut buf = entry.to_json();
        buf.push('\n');
        while let Ok(more) = rx.try_recv() {
            buf.push_str(&more.to_json());
            buf.push('\n');
            if buf.len() > 64 * 1024 {
                break;
            }
        }
        if w.write_all(buf.as_bytes()).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}
