//! The services the local app may call: their endpoints (resolved from IPs or DNS names, all
//! A/AAAA records, re-resolved when the answer's TTL expires and at least every
//! `resolve_interval`) and the lookup from an original destination to a service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use docmesh_certs::SpiffeId;

use super::dns::{next_refresh, Dns};
use crate::config::outbound::{split_host_port, Protocol, ServiceConfig};
use crate::errors::{Cause, ProxyError};
use crate::lifecycle::Lifecycle;

/// One configured service and its current endpoints.
#[derive(Debug)]
pub struct Service {
    /// Position in `outbound.services` (a cheap pool-key component).
    pub index: usize,
    /// The configured name.
    pub name: String,
    /// The SPIFFE ID the service must present.
    pub spiffe_id: SpiffeId,
    /// Configured protocol (`detect` sniffs).
    pub protocol: Protocol,
    addresses: Vec<String>,
    /// Virtual IPs (`vips`): destinations that mean "this service", balanced per request.
    pub vips: Vec<SocketAddr>,
    endpoints: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl Service {
    /// The current endpoints (all resolved addresses).
    pub fn endpoints(&self) -> Arc<Vec<SocketAddr>> {
        self.endpoints.load_full()
    }

    /// Whether `dst` is one of the service's virtual IPs.
    pub fn is_vip(&self, dst: SocketAddr) -> bool {
        self.vips.contains(&crate::net::canonical(dst))
    }

    /// The next endpoint, round robin; `dns-failure` when no address resolved.
    pub fn pick(&self) -> Result<SocketAddr, ProxyError> {
        let eps = self.endpoints.load();
        if eps.is_empty() {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "not resolved yet".into());
            return Err(ProxyError::new(
                Cause::DnsFailure,
                format!(
                    "service `{}`: none of its addresses [{}] resolved ({why})",
                    self.name,
                    self.addresses.join(", ")
                ),
            ));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(eps[i % eps.len()])
    }
}

impl Service {
    fn from_config(index: usize, c: &ServiceConfig) -> Result<Arc<Service>, super::OutboundError> {
        let literal: Vec<SocketAddr> = c.addresses.iter().filter_map(|a| literal_addr(a)).collect();
        let spiffe_id =
            c.spiffe_id
                .parse::<SpiffeId>()
                .map_err(|e| super::OutboundError::InvalidSpiffeId {
                    service: c.name.clone(),
                    id: c.spiffe_id.clone(),
                    reason: e.to_string(),
                })?;
        Ok(Arc::new(Service {
            index,
            name: c.name.clone(),
            spiffe_id,
            protocol: c.protocol,
            addresses: c.addresses.clone(),
            vips: c
                .vips
                .iter()
                .filter_map(|v| crate::config::outbound::parse_vip(v))
                .map(crate::net::canonical)
                .collect(),
            endpoints: ArcSwap::from_pointee(literal),
            next: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }))
    }
}

/// Every configured service, with a lookup by original destination.
#[derive(Debug)]
pub struct Services {
    list: Vec<Arc<Service>>,
    by_addr: ArcSwap<HashMap<SocketAddr, usize>>,
    /// The system resolver, built at the first resolution (`None`: unusable, so the
    /// platform's `getaddrinfo` is used, without TTLs).
    dns: OnceLock<Option<Dns>>,
}

/// Re-resolution never runs more often than this, whatever the TTL (0 included).
const MIN_REFRESH: Duration = Duration::from_secs(1);

impl Services {
    /// Builds the table; addresses that are literal IPs are usable at once, DNS names after
    /// [`Services::resolve_all`].
    pub fn new(configs: &[ServiceConfig]) -> Result<Self, super::OutboundError> {
        let list: Vec<Arc<Service>> = configs
            .iter()
            .enumerate()
            .map(|(index, c)| Service::from_config(index, c))
            .collect::<Result<_, _>>()?;
        let s = Services {
            list,
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            dns: OnceLock::new(),
        };
        s.rebuild_index();
        Ok(s)
    }

    /// This table plus the services `added` (a live reload): the existing services are the
    /// same objects (endpoints, pooled connections and indexes kept), the new ones get the
    /// next indexes. Their DNS names resolve with the next [`Services::resolve_all`].
    pub fn with_added(&self, added: &[ServiceConfig]) -> Result<Self, super::OutboundError> {
        let mut list = self.list.clone();
        for c in added {
            list.push(Service::from_config(list.len(), c)?);
        }
        let s = Services {
            list,
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            dns: OnceLock::new(),
        };
        s.rebuild_index();
        Ok(s)
    }

    /// All services in configuration order.
    pub fn all(&self) -> &[Arc<Service>] {
        &self.list
    }

    /// The service named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.list.iter().find(|s| s.name == name)
    }

    /// The service an original destination belongs to: one of its virtual IPs or endpoints
    /// (Pod IPs, for callers such as ingress controllers that pick a Pod themselves).
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Arc<Service>> {
        let dst = crate::net::canonical(dst);
        let i = *self.by_addr.load().get(&dst)?;
        self.list.get(i)
    }

    fn dns(&self) -> Option<&Dns> {
        self.dns
            .get_or_init(|| match Dns::from_system() {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "no usable DNS configuration; service names are resolved with getaddrinfo (no TTLs)");
                    None
                }
            })
            .as_ref()
    }

    /// All addresses of one `host:port` and how long they are valid (`None`: unknown).
    async fn resolve_one(
        &self,
        address: &str,
    ) -> Result<(Vec<SocketAddr>, Option<Duration>), String> {
        if let (Some(dns), Some((host, port))) = (self.dns(), split_host_port(address)) {
            match dns.resolve(host, port).await {
                Ok(a) if !a.addrs.is_empty() => return Ok((a.addrs, Some(a.ttl))),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%address, error = %e, "DNS lookup failed; trying getaddrinfo")
                }
            }
        }
        // Names only the platform resolver knows (nsswitch), or no DNS configuration.
        tokio::net::lookup_host(address)
            .await
            .map(|it| (it.map(crate::net::canonical).collect(), None))
            .map_err(|e| e.to_string())
    }

    /// Resolves every DNS name now; a name that fails keeps its previous endpoints. Returns the
    /// time until the first answer expires (its TTL), if any answer had one.
    pub async fn resolve_all(&self) -> Option<Duration> {
        let mut earliest: Option<Duration> = None;
        for svc in &self.list {
            let mut eps = Vec::new();
            let mut errors = Vec::new();
            for a in &svc.addresses {
                if let Some(sa) = literal_addr(a) {
                    eps.push(sa);
                    continue;
                }
                match self.resolve_one(a).await {
                    Ok((addrs, ttl)) => {
                        eps.extend(addrs);
                        if let Some(t) = ttl {
                            earliest = Some(earliest.map_or(t, |e| e.min(t)));
                        }
                    }
                    Err(e) => errors.push(format!("{a}: {e}")),
                }
            }
            eps.sort();
            eps.dedup();
            let mut last = svc.last_error.lock().unwrap_or_else(|e| e.into_inner());
            if errors.is_empty() {
                *last = None;
            } else {
                tracing::warn!(service = %svc.name, errors = %errors.join("; "), "DNS resolution failed");
                *last = Some(errors.join("; "));
            }
            // Keep the last good answer when every name failed this round.
            if !eps.is_empty() || errors.is_empty() {
                if **svc.endpoints.load() != eps {
                    tracing::info!(service = %svc.name, endpoints = ?eps, "service endpoints");
                }
                svc.endpoints.store(Arc::new(eps));
            }
        }
        self.rebuild_index();
        earliest
    }

    /// Re-resolves when the earliest answer expires (TTL; at most every second) and at least
    /// every `interval`, until the drain starts. `first_ttl` is what the first resolution
    /// returned.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        interval: Duration,
        first_ttl: Option<Duration>,
        lifecycle: Lifecycle,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = next_refresh(first_ttl, interval, MIN_REFRESH);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = lifecycle.draining() => return,
                }
                // A table replaced by a live reload (nobody else holds it) stops here; its
                // successor has its own loop.
                if Arc::strong_count(&me) == 1 {
                    return;
                }
                let ttl = me.resolve_all().await;
                wait = next_refresh(ttl, interval, MIN_REFRESH);
            }
        });
    }

    fn rebuild_index(&self) {
        let mut map = HashMap::new();
        for svc in &self.list {
            for addr in svc.vips.iter().chain(svc.endpoints.load().iter()) {
                map.entry(*addr).or_insert(svc.index);
            }
        }
        self.by_addr.store(Arc::new(map));
    }
}

fn literal_addr(a: &str) -> Option<SocketAddr> {
    let (host, port) = split_host_port(a)?;
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(crate::net::canonical(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, addrs: &[&str]) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            spiffe_id: format!("spiffe://td.example/{name}"),
            protocol: Protocol::Detect,
            vips: Vec::new(),
        }
    }

    #[tokio::test]
    async fn lookup_by_ip_and_name_with_round_robin() {
        let s = Services::new(&[
            svc("docs", &["10.0.0.1:80", "10.0.0.2:80"]),
            svc("local", &["localhost:9000"]),
            svc("nowhere", &["no-such-host.invalid:80"]),
        ])
        .unwrap();
        let dst: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(s.lookup(dst).unwrap().name, "docs");
        assert!(s.lookup("10.0.0.2:81".parse().unwrap()).is_none());
        let docs = s.by_name("docs").unwrap();
        let a = docs.pick().unwrap();
        let b = docs.pick().unwrap();
        assert_ne!(a, b);
        assert!(s.lookup("127.0.0.1:9000".parse().unwrap()).is_none());
        s.resolve_all().await;
        assert_eq!(
            s.lookup("127.0.0.1:9000".parse().unwrap()).unwrap().name,
            "local"
        );
        // A virtual IP maps to its service; it is not an endpoint.
        let mut with_vip = svc("ds", &["10.1.0.5:8000", "10.1.0.6:8000"]);
        with_vip.vips = vec!["10.96.0.12:8000".into(), "[fd00::12]:8000".into()];
        let v = Services::new(&[with_vip]).unwrap();
        let ds = v.lookup("10.96.0.12:8000".parse().unwrap()).unwrap();
        assert!(ds.is_vip("10.96.0.12:8000".parse().unwrap()));
        assert!(v.lookup("[fd00::12]:8000".parse().unwrap()).is_some());
        assert!(v.lookup("10.96.0.12:8001".parse().unwrap()).is_none());
        assert_eq!(
            v.lookup("10.1.0.6:8000".parse().unwrap()).unwrap().name,
            "ds"
        );
        assert!(!ds.endpoints().contains(&"10.96.0.12:8000".parse().unwrap()));
        let e = s.by_name("nowhere").unwrap().pick().unwrap_err();
        assert_eq!(e.cause, Cause::DnsFailure);
        assert!(e.detail.contains("no-such-host.invalid:80"), "{e}");
    }
}
