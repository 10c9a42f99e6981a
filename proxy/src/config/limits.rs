//! `[limits]`: what one client may hold or send, so that a broken or hostile client (or a
//! flood) cannot take the sidecar or the app down. Every limit has a safe default.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// A body size limit for requests whose path starts with `path_prefix` (every listener).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyLimitRoute {
    /// Path prefix, e.g. `/upload` (the longest matching prefix wins).
    pub path_prefix: String,
    /// Largest request body in bytes; larger ones get `413 payload-too-large`.
    pub max_body_bytes: u64,
}

/// Settings of the `[limits]` section (inbound and outbound listeners alike).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers) in bytes: `431
    /// request-header-too-large`, for a head of any size (HTTP/1: the head guard answers and
    /// closes after reading at most this plus 16 KiB). HTTP/2: a header list over it gets the
    /// same 431; twice this is the advertised header list size (bounds CONTINUATION floods).
    pub max_header_bytes: usize,
    /// Most request headers: `431 request-header-too-large` (bare 431 from hyper's parser past
    /// twice this or 100, whichever is lower, but never below this).
    pub max_headers: usize,
    /// Longest request target (path and query) in bytes: `414 uri-too-long`.
    pub max_uri_bytes: usize,
    /// How long a client may take to send a complete request head (slowloris); the
    /// connection is closed after it. Also closes idle HTTP/1.1 keep-alive connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest silence while a request body is being received (every listener); the request
    /// to the upstream is aborted and the client gets `408 request-body-timeout`.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Body size limits per path prefix (every listener); no limit where none matches.
    pub body: Vec<BodyLimitRoute>,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: streams a client may open and reset before they are accepted ("rapid
    /// reset", CVE-2023-44487); the connection gets GOAWAY past it.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the proxy may reset because of client protocol errors before the
    /// connection gets GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// Open client connections on all listeners together; more are closed at once
    /// (`docmesh_connections_refused_total{reason="total"}`).
    pub max_connections: usize,
    /// Open client connections per listener (`reason="listener"`).
    pub max_connections_per_listener: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 64 * 1024,
            max_headers: 64,
            max_uri_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            body: Vec::new(),
            h2_max_concurrent_streams: 256,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
            max_connections: 16384,
            max_connections_per_listener: 8192,
        }
    }
}

impl LimitsConfig {
    /// Semantic checks that serde cannot express.
    pub(super) fn validate(&self, p: &mut Problems) {
        let positive = [
            ("limits.max_header_bytes", self.max_header_bytes),
            ("limits.max_headers", self.max_headers),
            ("limits.max_uri_bytes", self.max_uri_bytes),
            (
                "limits.h2_max_concurrent_streams",
                self.h2_max_concurrent_streams as usize,
            ),
            ("limits.max_connections", self.max_connections),
            (
                "limits.max_connections_per_listener",
                self.max_connections_per_listener,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                p.push(field, "must be greater than zero");
            }
        }
        if self.max_header_bytes > 16 * 1024 * 1024 {
            p.push("limits.max_header_bytes", "must be at most 16 MiB");
        }
        if self.header_read_timeout.is_zero() {
            p.push("limits.header_read_timeout", "must be greater than zero");
        }
        if self.body_idle_timeout.is_zero() {
            p.push("limits.body_idle_timeout", "must be greater than zero");
        }
        for (i, r) in self.body.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                p.push(
                    format!("limits.body[{i}].path_prefix"),
                    format!("`{}` must start with `/`", r.path_prefix),
                );
            }
        }
    }
}

#[cfg(test)]
mod idle_tests {
    use super::LimitsConfig;
    use crate::config::outbound::OutboundConfig;

    /// The classic cause of sporadic resets: a pooled connection outliving the upstream's
    /// keep-alive. A peer docmesh inbound closes idle keep-alive connections after
    /// `header_read_timeout`; our outbound pool must give them up well before that.
    #[test]
    fn outbound_pool_idles_out_before_the_peer_inbound_closes() {
        let peer_closes_after = LimitsConfig::default().header_read_timeout;
        let pool_idle = OutboundConfig::default().pool_idle_timeout;
        assert!(
            pool_idle * 4 <= peer_closes_after * 3,
            "outbound.pool_idle_timeout {pool_idle:?} must stay well below the peer's \
             limits.header_read_timeout {peer_closes_after:?}"
        );
    }
}
