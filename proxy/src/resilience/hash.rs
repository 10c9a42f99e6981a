//! Consistent hashing: a route may name a request key (query parameter, header or cookie);
//! requests carrying it go to the endpoint that owns the key's hash on a ring with virtual
//! nodes, so that every request of one OnlyOffice document (`shardkey`, `WOPISrc`) reaches one
//! replica. Adding or removing one of n endpoints moves about 1/n of the keys.
//!
//! The hash is FNV-1a with a splitmix64 finalizer, fixed here (not `std`'s randomized or
//! unspecified hasher): every client sidecar with the same endpoint set maps a key to the same
//! endpoint, whatever its version or process.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, COOKIE};
use http::Uri;

/// Virtual nodes per endpoint on the ring (load spread within about ±10 %).
pub const VIRTUAL_NODES: usize = 128;

/// Where a hash key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A query parameter (exact, case-sensitive name; the raw, still-encoded value).
    Query(String),
    /// A request header.
    Header(HeaderName),
    /// A cookie of the `Cookie` header.
    Cookie(String),
}

/// The request key of a route: the first of its sources present in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashKey {
    /// Sources, tried in order.
    pub sources: Vec<HashSource>,
}

impl HashKey {
    /// OnlyOffice's sharding key: `shardkey`, else `WOPISrc` (as its scaling guides route).
    pub fn onlyoffice() -> Self {
        HashKey {
            sources: vec![
                HashSource::Query("shardkey".into()),
                HashSource::Query("WOPISrc".into()),
            ],
        }
    }

    /// The hash of the request's key, or `None` when the request carries none of the sources
    /// (or only empty values): such a request is balanced as usual.
    pub fn hash(&self, uri: &Uri, headers: &HeaderMap) -> Option<u64> {
        self.sources.iter().find_map(|s| {
            let v = match s {
                HashSource::Query(name) => query_value(uri.query()?, name)?,
                HashSource::Header(name) => headers.get(name)?.as_bytes(),
                HashSource::Cookie(name) => headers
                    .get_all(COOKIE)
                    .iter()
                    .find_map(|h| cookie_value(h.as_bytes(), name.as_bytes()))?,
            };
            (!v.is_empty()).then(|| stable_hash(v))
        })
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// A stable 64-bit hash (FNV-1a, then splitmix64 to spread similar inputs).
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hash ring over endpoint addresses with [`VIRTUAL_NODES`] points each.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, SocketAddr)>,
    endpoints: usize,
}

impl Ring {
    /// The ring of `addrs` (duplicates count once). A point's position depends only on its
    /// endpoint's address, so rings of the same set agree across processes.
    pub fn new(addrs: &[SocketAddr]) -> Ring {
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !unique.contains(a) {
                unique.push(*a);
            }
        }
        let mut points = Vec::with_capacity(unique.len() * VIRTUAL_NODES);
        for a in &unique {
            for i in 0..VIRTUAL_NODES {
                points.push((stable_hash(format!("{a}#{i}").as_bytes()), *a));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            endpoints: unique.len(),
        }
    }

    /// Whether the ring has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints == 0
    }

    /// The endpoints in the order a key with hash `h` tries them: its owner first, then the
    /// next distinct endpoints clockwise (where an ejected owner's keys go meanwhile).
    pub fn candidates(&self, h: u64) -> impl Iterator<Item = SocketAddr> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < h);
        let n = self.points.len();
        let mut seen: Vec<SocketAddr> = Vec::with_capacity(self.endpoints);
        (0..n)
            .map(move |i| self.points[(start + i) % n].1)
            .filter(move |a| {
                if seen.contains(a) {
                    false
                } else {
                    seen.push(*a);
                    true
                }
            })
            .take(self.endpoints)
    }

    /// The owner of a key with hash `h`.
    pub fn owner(&self, h: u64) -> Option<SocketAddr> {
        self.candidates(h).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)))
            .collect()
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..20_000).map(|i| stable_hash(format!("doc-{i}").as_bytes()))
    }

    fn moved(a: &Ring, b: &Ring) -> f64 {
        let moved = keys().filter(|k| a.owner(*k) != b.owner(*k)).count();
        moved as f64 / 20_000.0
    }

    #[test]
    fn adding_or_removing_one_of_n_endpoints_moves_about_one_nth_of_the_keys() {
        for n in [3usize, 5, 10] {
            let before = Ring::new(&addrs(n));
            let grown = Ring::new(&addrs(n + 1));
            let m = moved(&before, &grown);
            let ideal = 1.0 / (n as f64 + 1.0);
            eprintln!(
                "{n} -> {}: {:.3} of keys moved (ideal {ideal:.3})",
                n + 1,
                m
            );
            assert!(m > ideal * 0.6 && m < ideal * 1.4, "{n}+1: moved {m}");
            // Only keys of the new endpoint moved: none went between old endpoints.
            let new = addrs(n + 1)[n];
            assert!(
                keys().all(|k| before.owner(k) == grown.owner(k) || grown.owner(k) == Some(new))
            );

            let shrunk = Ring::new(&addrs(n)[1..]);
            let m = moved(&before, &shrunk);
            let ideal = 1.0 / n as f64;
            eprintln!(
                "{n} -> {}: {:.3} of keys moved (ideal {ideal:.3})",
                n - 1,
                m
            );
            assert!(m > ideal * 0.6 && m < ideal * 1.4, "{n}-1: moved {m}");
        }
    }

    #[test]
    fn keys_spread_over_every_endpoint() {
        let r = Ring::new(&addrs(3));
        let mut counts = [0usize; 3];
        for k in keys() {
            let o = r.owner(k).unwrap();
            counts[addrs(3).iter().position(|a| *a == o).unwrap()] += 1;
        }
        eprintln!("share per endpoint of 20000 keys: {counts:?}");
        for c in counts {
            assert!((4_500..=9_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn candidates_visit_each_endpoint_once_owner_first() {
        let r = Ring::new(&addrs(4));
        for k in keys().take(200) {
            let c: Vec<_> = r.candidates(k).collect();
            assert_eq!(c.len(), 4);
            assert_eq!(Some(c[0]), r.owner(k));
            let mut d = c.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 4);
        }
        assert!(Ring::new(&[]).owner(1).is_none());
    }

    #[test]
    fn keys_come_from_query_header_or_cookie_first_present_wins() {
        let k = HashKey {
            sources: vec![
                HashSource::Query("shardkey".into()),
                HashSource::Header(HeaderName::from_static("x-doc")),
                HashSource::Cookie("sid".into()),
            ],
        };
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let mut h = HeaderMap::new();
        let q = k.hash(&uri("/doc/x/c/?EIO=4&shardkey=abc&t=1"), &h);
        assert_eq!(q, Some(stable_hash(b"abc")));
        assert_eq!(k.hash(&uri("/?shardkeyx=abc"), &h), None);
        assert_eq!(
            k.hash(&uri("/?shardkey="), &h),
            None,
            "empty values do not count"
        );
        h.insert("cookie", "a=1; sid=s1".parse().unwrap());
        assert_eq!(k.hash(&uri("/"), &h), Some(stable_hash(b"s1")));
        h.insert("x-doc", "d1".parse().unwrap());
        assert_eq!(k.hash(&uri("/"), &h), Some(stable_hash(b"d1")));
        assert_eq!(k.hash(&uri("/?shardkey=abc"), &h), q);
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Pinned value, computed independently (a few lines of Python implementing FNV-1a and
        // splitmix64): another sidecar (another version, another process) must agree.
        assert_eq!(stable_hash(b"shardkey"), 0x2bfb_f75b_a852_52b6);
        assert_ne!(stable_hash(b"doc-1"), stable_hash(b"doc-2"));
    }
}
