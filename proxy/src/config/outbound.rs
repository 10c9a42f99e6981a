//! `[outbound]`: traffic the local app sends to other services.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use crate::protocol::WireProtocol;

/// What the configuration says runs on a connection to a service: a choice, not a wire
/// protocol, since `detect` (the default) leaves it to the first bytes; the other choices
/// declare a [`WireProtocol`] ([`Protocol::declared`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Sniff the first bytes: HTTP/2 preface, HTTP/1.x request line, else opaque TCP.
    #[default]
    Detect,
    /// HTTP/1.1 (no detection).
    Http1,
    /// HTTP/2 with prior knowledge (h2c from the app; no detection).
    Http2,
    /// Opaque TCP (no detection): for server-speaks-first protocols and anything not HTTP.
    Opaque,
}

impl Protocol {
    /// The wire protocol this choice declares, or `None` for `detect`.
    pub const fn declared(self) -> Option<WireProtocol> {
        match self {
            Protocol::Detect => None,
            Protocol::Http1 => Some(WireProtocol::Http1),
            Protocol::Http2 => Some(WireProtocol::Http2),
            Protocol::Opaque => Some(WireProtocol::Opaque),
        }
    }
}

/// What to do with a connection whose original destination is not a configured service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownDestinations {
    /// Relay it as plain TCP to its original destination (no mTLS).
    #[default]
    Passthrough,
    /// Close it and log the destination.
    Deny,
}

/// A service in the mesh that the local app calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Unique name, used by explicit listeners, logs and metrics (e.g. `documentserver`).
    pub name: String,
    /// Where the service listens, as `ip:port` or `dns-name:port`; DNS names are re-resolved
    /// every `outbound.resolve_interval`. Transparent mode matches original destinations
    /// against these; explicit listeners connect to them (round robin).
    pub addresses: Vec<String>,
    /// The SPIFFE ID the service must present (e.g. `spiffe://example.org/ns/oo/sa/docs`).
    pub spiffe_id: String,
    /// `detect`, `http1`, `http2` or `opaque`.
    pub protocol: Protocol,
    /// Virtual IPs of the service as `ip:port` (a Kubernetes ClusterIP and port, e.g.
    /// `10.96.0.12:8000`): in transparent mode a connection to one of them belongs to this
    /// service and its requests are balanced over the endpoints of `addresses` (the Pods,
    /// from a headless service name), not handed to kube-proxy's one-connection-one-Pod choice.
    pub vips: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: String::new(),
            addresses: Vec::new(),
            spiffe_id: String::new(),
            protocol: Protocol::Detect,
            vips: Vec::new(),
        }
    }
}

/// An explicit outbound listener: the app connects here instead of to the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Local address the app connects to, e.g. `127.0.0.1:18000`.
    pub listen: SocketAddr,
    /// Name of the service (in `outbound.services`) this listener leads to.
    pub service: String,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service: String::new(),
        }
    }
}

/// Settings of the outbound side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Transparent outbound listener (default `127.0.0.1:15001`), fed by iptables.
    pub listen: SocketAddr,
    /// Run the transparent listener (turn off for explicit-only setups without iptables).
    pub transparent: bool,
    /// Also listen on `[::1]` at the same port for IPv6 connections that ip6tables redirects
    /// (skipped with a log line when the namespace has no IPv6).
    pub ipv6: bool,
    /// `passthrough` (plain TCP to the original destination) or `deny` for destinations that
    /// are not a configured service.
    pub unknown_destinations: UnknownDestinations,
    /// How long protocol detection waits for the app's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols never send first).
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Destination ports that skip detection and are always opaque TCP (PostgreSQL, MySQL,
    /// Redis, RabbitMQ, SMTP, MongoDB, memcached, ...).
    pub opaque_ports: Vec<u16>,
    /// TCP connect timeout towards a service.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS handshake timeout towards a service.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often DNS names in service addresses are re-resolved.
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
    /// Pooled mesh connections idle longer than this are closed, not reused. Keep it below the
    /// peer inbound's `limits.header_read_timeout` (default 30 s), which closes idle keep-alive
    /// connections: a connection reused just as the peer closes it is a sporadic reset.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// HTTP/2 mesh connections send a keep-alive PING this often, also while idle, so that a
    /// flow a NAT or conntrack dropped silently is noticed and replaced before a request is
    /// sent into it; every mesh connection (HTTP/1.1 and opaque TCP too) also gets TCP
    /// keep-alive probes after this much idle time (`0s`: neither).
    #[serde(with = "humantime_serde")]
    pub h2_keep_alive_interval: Duration,
    /// A PING unanswered this long closes the HTTP/2 mesh connection, and TCP keep-alive
    /// probes unanswered this long close any mesh connection; the next request opens a new one.
    #[serde(with = "humantime_serde")]
    pub h2_keep_alive_timeout: Duration,
    /// Carry the app's HTTP/1.x requests to peer sidecars as HTTP/2 streams over one mTLS
    /// connection per endpoint (the peer inbound speaks HTTP/1.x to its app again): fewer mesh
    /// connections and handshakes, keep-alive PINGs. Off (the default since the sixth
    /// performance session): each request rides a pooled HTTP/1.1 mTLS connection, one per
    /// concurrent request, which in the benchmark costs 20% less CPU per request at 1000 req/s
    /// with 20-30% lower added latency and more throughput (docs/benchmark.md, docs/config.md).
    /// Upgrades (WebSocket) keep HTTP/1.1 and HTTP/2 callers (gRPC) HTTP/2 either way.
    pub mesh_http2: bool,
    /// Services in the mesh.
    pub services: Vec<ServiceConfig>,
    /// Explicit listeners (`127.0.0.1:18000 -> documentserver`).
    pub listeners: Vec<ListenerConfig>,
    /// Traffic split, header/query routes and failover (`[[outbound.routes]]`).
    pub routes: Vec<super::routing::TrafficRoute>,
}

/// Ports of well-known server-speaks-first or binary protocols that are never sniffed.
pub const DEFAULT_OPAQUE_PORTS: [u16; 9] = [25, 587, 3306, 5432, 5672, 6379, 11211, 27017, 4369];

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15001)),
            transparent: true,
            ipv6: true,
            unknown_destinations: UnknownDestinations::Passthrough,
            detect_timeout: Duration::from_millis(300),
            opaque_ports: DEFAULT_OPAQUE_PORTS.to_vec(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            resolve_interval: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(20),
            h2_keep_alive_interval: Duration::from_secs(10),
            h2_keep_alive_timeout: Duration::from_secs(5),
            mesh_http2: false,
            services: Vec::new(),
            listeners: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// A virtual IP `ip:port` (`[v6]:port`); `None` when it is not one (names are refused).
pub fn parse_vip(v: &str) -> Option<std::net::SocketAddr> {
    let (host, port) = split_host_port(v)?;
    let ip: std::net::IpAddr = host.parse().ok()?;
    (!ip.is_unspecified()).then_some(std::net::SocketAddr::new(ip, port))
}

/// Splits `host:port` (or `[v6]:port`) into its parts; `None` when malformed.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !address.starts_with('[') {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some((host, port))
}

impl OutboundConfig {
    /// The HTTP/2 keep-alive of the mesh pool (`None`: no PINGs).
    pub fn h2_keep_alive(&self) -> Option<(Duration, Duration)> {
        (!self.h2_keep_alive_interval.is_zero())
            .then_some((self.h2_keep_alive_interval, self.h2_keep_alive_timeout))
    }

    /// Semantic checks that serde cannot express.
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.pool_idle_timeout.is_zero() {
            p.push("outbound.pool_idle_timeout", "must be greater than zero");
        }
        if !self.h2_keep_alive_interval.is_zero() && self.h2_keep_alive_timeout.is_zero() {
            p.push(
                "outbound.h2_keep_alive_timeout",
                "must be greater than zero while h2_keep_alive_interval is on",
            );
        }
        if self.detect_timeout.is_zero() {
            p.push("outbound.detect_timeout", "must be greater than zero");
        }
        if self.connect_timeout.is_zero() {
            p.push("outbound.connect_timeout", "must be greater than zero");
        }
        if self.handshake_timeout.is_zero() {
            p.push("outbound.handshake_timeout", "must be greater than zero");
        }
        if self.resolve_interval.is_zero() {
            p.push("outbound.resolve_interval", "must be greater than zero");
        }
        for (i, port) in self.opaque_ports.iter().enumerate() {
            if *port == 0 {
                p.push(
                    format!("outbound.opaque_ports[{i}]"),
                    "port 0 is not a port",
                );
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("outbound.services[{i}]");
            if s.name.is_empty() {
                p.push(format!("{at}.name"), "every service needs a name");
            } else if let Some(j) = self.services[..i].iter().position(|o| o.name == s.name) {
                p.push(
                    format!("{at}.name"),
                    format!(
                        "duplicate service name `{}` (also outbound.services[{j}])",
                        s.name
                    ),
                );
            }
            if s.addresses.is_empty() {
                p.push(
                    format!("{at}.addresses"),
                    "a service needs at least one address (`host:port`)",
                );
            }
            for (k, v) in s.vips.iter().enumerate() {
                if parse_vip(v).is_none() {
                    p.push(
                        format!("{at}.vips[{k}]"),
                        format!(
                            "`{v}` is not `ip:port` (a virtual IP is an address, not a name; \
                             IPv6 as `[fd00::1]:port`, port 1-65535)"
                        ),
                    );
                }
            }
            for (k, a) in s.addresses.iter().enumerate() {
                if split_host_port(a).is_none() {
                    p.push(
                        format!("{at}.addresses[{k}]"),
                        format!("`{a}` is not `host:port` (IPv6 as `[::1]:port`, port 1-65535)"),
                    );
                }
            }
            if s.spiffe_id.is_empty() {
                p.push(
                    format!("{at}.spiffe_id"),
                    "the SPIFFE ID the service must present is required",
                );
            } else if let Err(e) = super::check_spiffe_id(&s.spiffe_id) {
                p.push(format!("{at}.spiffe_id"), e);
            }
        }
        super::routing::validate(&self.routes, &self.services, p);
        for (i, l) in self.listeners.iter().enumerate() {
            if !self.services.iter().any(|s| s.name == l.service) {
                let known: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                p.push(
                    format!("outbound.listeners[{i}].service"),
                    format!(
                        "unknown service `{}` (configured services: [{}])",
                        l.service,
                        known.join(", ")
                    ),
                );
            }
        }
    }
}
