//! DNS for service addresses: every A and AAAA record of a name and how long the answer is
//! valid (its TTL), from the system's resolver configuration (`/etc/resolv.conf`, hosts file)
//! with hickory-resolver. A headless Kubernetes service answers with every ready Pod, so the
//! Pods become the service's endpoints, and a Pod added or removed is seen once the answer
//! expires rather than at the next fixed interval.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::TokioResolver;

/// Answers kept by the resolver's cache (names of the configured services, a few per name).
const CACHE_SIZE: u64 = 64;

/// A resolver built from the system configuration.
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

/// The addresses of one name and how long they are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every A and AAAA record, with the port of the configured address.
    pub addrs: Vec<SocketAddr>,
    /// Time until the answer expires (its smallest TTL).
    pub ttl: Duration,
}

impl Dns {
    /// The system's resolver (`/etc/resolv.conf`); an error names what could not be read.
    pub fn from_system() -> Result<Dns, String> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = CACHE_SIZE;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Dns { resolver })
    }

    /// Every address of `host` with `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Answer, String> {
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let addrs = lookup
            .iter()
            .map(|ip| crate::net::canonical(SocketAddr::new(ip, port)))
            .collect();
        Ok(Answer { addrs, ttl })
    }
}

/// When to resolve again after answers valid for `ttl` (the earliest to expire): at expiry,
/// but not more often than every `floor` (a TTL of 0 would mean a query loop) and at least
/// every `interval` (`outbound.resolve_interval`).
pub fn next_refresh(ttl: Option<Duration>, interval: Duration, floor: Duration) -> Duration {
    ttl.map_or(interval, |t| t.clamp(floor.min(interval), interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(Some(s(5)), s(30), s(1)), s(5));
        assert_eq!(next_refresh(Some(s(0)), s(30), s(1)), s(1));
        assert_eq!(next_refresh(Some(s(300)), s(30), s(1)), s(30));
        assert_eq!(next_refresh(None, s(30), s(1)), s(30));
        assert_eq!(
            next_refresh(Some(s(0)), Duration::from_millis(500), s(1)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn the_hosts_file_answers_with_its_port() {
        let dns = Dns::from_system().unwrap();
        let a = dns.resolve("localhost", 9000).await.unwrap();
        assert!(
            a.addrs
                .iter()
                .all(|x| x.port() == 9000 && x.ip().is_loopback()),
            "{a:?}"
        );
        assert!(!a.addrs.is_empty());
    }
}
