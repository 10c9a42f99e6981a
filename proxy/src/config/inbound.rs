//! `[inbound]`: traffic arriving for the local app.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// Whether plaintext (non-TLS) connections are accepted on inbound ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundMode {
    /// Only mTLS with a client SVID from the bundle; plaintext is closed, counted and logged.
    #[default]
    Strict,
    /// mTLS when the peer starts TLS; plaintext is forwarded to the app as is (migration aid).
    Permissive,
}

/// An explicit public inbound port mapped to an app port (no iptables needed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundPortConfig {
    /// Public address peers' sidecars connect to, e.g. `0.0.0.0:16080`.
    pub listen: SocketAddr,
    /// Port of the app on `inbound.app_host` that this port forwards to.
    pub app_port: u16,
}

impl Default for InboundPortConfig {
    fn default() -> Self {
        InboundPortConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            app_port: 0,
        }
    }
}

/// Settings of the inbound side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// Transparent inbound listener (default `0.0.0.0:15006`), fed by iptables; the original
    /// destination port of each connection is the app port.
    pub listen: SocketAddr,
    /// Run the transparent listener (turn off for explicit-only setups without iptables).
    pub transparent: bool,
    /// Also listen on `[::]` (IPv6 only) at the same port for IPv6 connections that ip6tables
    /// redirects (skipped with a log line when the namespace has no IPv6).
    pub ipv6: bool,
    /// `strict` (mTLS only) or `permissive` (plaintext forwarded as is).
    pub mode: InboundMode,
    /// Address of the app (default `127.0.0.1`).
    pub app_host: IpAddr,
    /// Explicit public ports mapped to app ports.
    pub ports: Vec<InboundPortConfig>,
    /// How long to wait for a peer's first byte (a TLS ClientHello from a sidecar). A peer
    /// that stays silent speaks a server-speaks-first protocol in plaintext: refused in strict
    /// mode, forwarded in permissive mode.
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// How long a peer may take to finish the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// TCP connect timeout towards the app.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Pooled connections to the app idle longer than this are closed, not reused; keep it
    /// below the app's keep-alive timeout (Node.js defaults to 5 s).
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Token buckets per route and per verified tenant (`[[inbound.rate_limits]]`).
    pub rate_limits: Vec<super::ratelimit::RateLimitConfig>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 15006)),
            transparent: true,
            ipv6: true,
            mode: InboundMode::Strict,
            app_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Vec::new(),
            detect_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(4),
            rate_limits: Vec::new(),
        }
    }
}

impl InboundConfig {
    /// Semantic checks that serde cannot express.
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.detect_timeout.is_zero() {
            p.push("inbound.detect_timeout", "must be greater than zero");
        }
        if self.handshake_timeout.is_zero() {
            p.push("inbound.handshake_timeout", "must be greater than zero");
        }
        if self.connect_timeout.is_zero() {
            p.push("inbound.connect_timeout", "must be greater than zero");
        }
        super::ratelimit::validate(&self.rate_limits, p);
        for (i, port) in self.ports.iter().enumerate() {
            if port.app_port == 0 {
                p.push(
                    format!("inbound.ports[{i}].app_port"),
                    "required: the app port this public port forwards to (1-65535)",
                );
            }
        }
    }
}
