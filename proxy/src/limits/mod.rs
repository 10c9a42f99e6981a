//! Limits against hostile or broken clients (`[limits]`): connection slots per listener and in
//! total, request head checks (431/414), body size per route (413) and body idle timeout, and
//! the HTTP server settings (header read timeout, HTTP/2 stream and reset limits) that
//! [`crate::http::serve`] applies.

pub mod body;
pub mod head;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::limits::LimitsConfig;
use crate::errors::{Cause, Hop, ProxyError};
use crate::metrics::Metrics;

pub use body::{BodyFaults, GuardedBody};
pub use head::{HeadGuard, HeadParams, HeadWatch};

/// HTTP server settings for one connection (hyper's builders), and what the HTTP/1 head
/// guard ([`head`]) needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// HTTP/1: time for a complete request head.
    pub header_read_timeout: Duration,
    /// The head guard's sizes; hyper's own head cut-off is `head.parser_max`, which the
    /// guard's 431 always comes before.
    pub head: HeadParams,
    /// The limits (for the rejection counter) and the side the HTTP/1 head guard answers
    /// for; `None`: no guard (hyper's bare 431 past `head.parser_max`).
    pub guard: Option<(Limits, Hop)>,
    /// Hard cut-off of the HTTP/1 parser for the header count (bare 431 past it).
    pub parser_max_headers: usize,
    /// HTTP/2 header list size (SETTINGS_MAX_HEADER_LIST_SIZE; CONTINUATION floods).
    pub h2_max_header_list_size: u32,
    /// HTTP/2 concurrent streams.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 rapid-reset protection.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 locally reset streams before GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
}

/// hyper parses a head into two arrays of this many headers on the stack; a larger parser
/// cut-off makes it allocate (and free) both arrays on the heap for every request it parses,
/// which the benchmark profile showed as several percent of the sidecar's CPU.
pub const HYPER_INLINE_HEADERS: usize = 100;

/// The HTTP/1 parser's header count cut-off for the limit `max_headers`: room above the limit
/// for the proxy's own 431, within hyper's inline arrays.
fn parser_max_headers(max_headers: usize) -> usize {
    max_headers.max(max_headers.saturating_mul(2).min(HYPER_INLINE_HEADERS))
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::from_config(&LimitsConfig::default())
    }
}

impl ServerLimits {
    /// The server settings of `cfg` (without the head guard). The parser's header count
    /// cut-off sits above `max_headers` (twice it, but no higher than hyper's inline header
    /// array, [`HYPER_INLINE_HEADERS`], unless the limit itself is higher), so requests just
    /// over the limit get the proxy's 431 with a `docmesh-error` cause; so does the HTTP/2
    /// header list size, at twice `max_header_bytes`.
    pub fn from_config(cfg: &LimitsConfig) -> Self {
        ServerLimits {
            header_read_timeout: cfg.header_read_timeout,
            head: HeadParams::new(cfg.max_header_bytes, cfg.max_uri_bytes),
            guard: None,
            parser_max_headers: parser_max_headers(cfg.max_headers),
            h2_max_header_list_size: u32::try_from(cfg.max_header_bytes.saturating_mul(2))
                .unwrap_or(u32::MAX),
            h2_max_concurrent_streams: cfg.h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: cfg.h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: cfg.h2_max_local_error_reset_streams,
        }
    }
}

/// The limits in force, shared by every listener (cheap to clone).
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: LimitsConfig,
    server: ServerLimits,
    total: Arc<Semaphore>,
    refused: Family<Vec<(String, String)>, Counter>,
    rejected: Family<Vec<(String, String)>, Counter>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&LimitsConfig::default())
    }
}

/// A connection slot; dropping it frees the slot (on the listener and in the total).
#[derive(Debug)]
pub struct ConnPermit {
    _total: OwnedSemaphorePermit,
    _listener: OwnedSemaphorePermit,
}

/// The connection slots of one listener.
#[derive(Clone)]
pub struct ListenerSlots {
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl ListenerSlots {
    /// A slot for a just-accepted connection, or `None` (counted and logged) when the
    /// listener or the whole proxy is at its limit: the caller closes the connection.
    pub fn admit(&self) -> Option<ConnPermit> {
        let inner = &self.limits.inner;
        let listener = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.limits
                    .refuse("listener", inner.cfg.max_connections_per_listener);
                return None;
            }
        };
        let total = match Arc::clone(&inner.total).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.limits.refuse("total", inner.cfg.max_connections);
                return None;
            }
        };
        Some(ConnPermit {
            _total: total,
            _listener: listener,
        })
    }
}

impl Limits {
    /// Limits from `[limits]` (counters unregistered until [`Limits::register_metrics`]).
    pub fn new(cfg: &LimitsConfig) -> Self {
        Limits {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                server: ServerLimits::from_config(cfg),
                total: Arc::new(Semaphore::new(cfg.max_connections)),
                refused: Family::default(),
                rejected: Family::default(),
            }),
        }
    }

    /// Registers `docmesh_connections_refused_total{reason}` and
    /// `docmesh_limit_rejections_total{cause}`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(
            "connections_refused",
            "Client connections closed at once because a connection limit was reached ([limits])",
            self.inner.refused.clone(),
        );
        metrics.register(
            "limit_rejections",
            "Requests refused by a [limits] check, by cause",
            self.inner.rejected.clone(),
        );
    }

    /// The connection slots of a new listener.
    pub fn listener(&self) -> ListenerSlots {
        ListenerSlots {
            limits: self.clone(),
            slots: Arc::new(Semaphore::new(self.inner.cfg.max_connections_per_listener)),
        }
    }

    /// The HTTP server settings for a listener of side `hop` (with the HTTP/1 head guard).
    pub fn server(&self, hop: Hop) -> ServerLimits {
        ServerLimits {
            guard: Some((self.clone(), hop)),
            ..self.inner.server.clone()
        }
    }

    /// The body idle timeout.
    pub fn body_idle_timeout(&self) -> Duration {
        self.inner.cfg.body_idle_timeout
    }

    fn refuse(&self, reason: &str, limit: usize) {
        self.inner
            .refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
        tracing::warn!(
            reason,
            limit,
            "connection closed: connection limit reached (raise limits.max_connections / \
             limits.max_connections_per_listener if this load is legitimate)"
        );
    }

    /// Wraps a request body (after [`Limits::check_request`], with the limit it returned):
    /// idle timeout, size limit, and the record of a failure of the client's body, which
    /// [`BodyFaults::settle`] turns into the client's answer. Takes the head guard's
    /// [`head::BodyEnd`] out of `parts`.
    pub fn guard_body<B: http_body::Body>(
        &self,
        parts: &mut http::request::Parts,
        body: B,
        max: Option<u64>,
    ) -> (GuardedBody<B>, BodyFaults) {
        let end = parts.extensions.remove::<head::BodyEnd>();
        let counted = parts
            .extensions
            .get::<crate::observe::RequestBytes>()
            .cloned();
        let (mut body, faults) = GuardedBody::new(body, self, max, end);
        body.count_into(counted);
        (body, faults)
    }

    /// Counts `e` as a `[limits]` rejection (by cause) and hands it back.
    pub(crate) fn reject(&self, e: ProxyError) -> ProxyError {
        self.inner
            .rejected
            .get_or_create(&vec![("cause".into(), e.cause.as_str().into())])
            .inc();
        e
    }

    /// Checks a request head against the header and URI limits, and its declared
    /// `Content-Length` against the route's body limit, after normalising it (see
    /// [`normalize`]). Returns the route's body limit.
    pub fn check_request(
        &self,
        parts: &mut http::request::Parts,
    ) -> Result<Option<u64>, ProxyError> {
        normalize(parts).map_err(|e| self.reject(e))?;
        let cfg = &self.inner.cfg;
        let uri_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + parts.uri.authority().map_or(0, |a| a.as_str().len());
        if uri_len > cfg.max_uri_bytes {
            return Err(self.reject(ProxyError::new(
                Cause::UriTooLong,
                format!(
                    "the request target is longer than {} bytes (limits.max_uri_bytes)",
                    cfg.max_uri_bytes
                ),
            )));
        }
        let count = parts.headers.len();
        if count > cfg.max_headers {
            return Err(self.reject(ProxyError::new(
                Cause::RequestHeaderTooLarge,
                format!(
                    "the request has {count} headers, more than limits.max_headers ({})",
                    cfg.max_headers
                ),
            )));
        }
        let size = head_size(parts);
        if size > cfg.max_header_bytes {
            return Err(self.reject(ProxyError::new(
                Cause::RequestHeaderTooLarge,
                format!(
                    "the request head is {size} bytes, more than limits.max_header_bytes ({})",
                    cfg.max_header_bytes
                ),
            )));
        }
        let limit = self.body_limit(parts.uri.path());
        if let Some(max) = limit {
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Err(self.reject(ProxyError::new(
                    Cause::PayloadTooLarge,
                    format!(
                        "the request body is larger than {max} bytes, the limit for this path \
                         (limits.body)"
                    ),
                )));
            }
        }
        Ok(limit)
    }

    /// The body limit of the longest `limits.body` prefix matching `path`.
    pub fn body_limit(&self, path: &str) -> Option<u64> {
        self.inner
            .cfg
            .body
            .iter()
            .filter(|r| path.starts_with(&r.path_prefix))
            .max_by_key(|r| r.path_prefix.len())
            .map(|r| r.max_body_bytes)
    }
}

/// Makes a request unambiguous before it is forwarded, or refuses it (`400 bad-request`):
/// - `CONNECT` is refused (the data path proxies requests, not tunnels);
/// - several `Host` headers are refused (RFC 9112 §3.2);
/// - a `Transfer-Encoding` other than `chunked` is refused (the coding would be lost when the
///   body is re-framed towards the upstream);
/// - HTTP/1 absolute-form (`GET http://host/path`) becomes origin-form with `Host` set to the
///   target's authority, which is what RFC 9112 §3.2.2 tells a server to use.
///
/// `Content-Length` next to `Transfer-Encoding` was already dropped by the HTTP parser (the
/// body is framed by the chunked coding, and the connection closes after the response).
pub fn normalize(parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    use http::header::{HOST, TRANSFER_ENCODING};
    let bad = |detail: &str| Err(ProxyError::new(Cause::BadRequest, detail));
    if parts.method == http::Method::CONNECT {
        return bad("CONNECT is not proxied: the mesh carries requests, not tunnels");
    }
    if parts.headers.get_all(HOST).iter().count() > 1 {
        return bad("the request has several Host headers");
    }
    for v in parts.headers.get_all(TRANSFER_ENCODING) {
        let chunked_only = v
            .to_str()
            .map(|s| s.trim().eq_ignore_ascii_case("chunked"))
            .unwrap_or(false);
        if !chunked_only {
            return bad("only `Transfer-Encoding: chunked` is accepted");
        }
    }
    if parts.version <= http::Version::HTTP_11 {
        if let Some(authority) = parts.uri.authority().cloned() {
            let origin = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let Ok(uri) = origin.parse::<http::Uri>() else {
                return bad("the request target cannot be put in origin form");
            };
            let Ok(host) = http::HeaderValue::from_str(authority.as_str()) else {
                return bad("the request target's authority is not a valid Host");
            };
            parts.uri = uri;
            parts.headers.insert(HOST, host);
        }
    }
    Ok(())
}

/// Approximate size of the request head as sent: request line and `name: value\r\n` lines.
fn head_size(parts: &http::request::Parts) -> usize {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    parts
        .headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests;
