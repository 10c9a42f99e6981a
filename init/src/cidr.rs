//! CIDR blocks (IPv4 and IPv6) as the operator writes them in `--exclude-outbound-cidrs` and
//! `--include-outbound-cidrs`, parsed strictly so that a typo is an error, not a silent no-op.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What is wrong with a CIDR the operator gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("invalid CIDR {input:?}: {address:?} is not an IPv4 or IPv6 address")]
    BadAddress {
        /// The whole input.
        input: String,
        /// The address part.
        address: String,
    },
    /// The prefix length is not a number or too long for the family.
    #[error("invalid CIDR {input:?}: prefix length must be a number from 0 to {max}")]
    BadPrefix {
        /// The whole input.
        input: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits are set after the prefix (e.g. `10.1.2.3/8`), which usually means a typo.
    #[error("invalid CIDR {input:?}: host bits are set after the /{prefix} prefix; did you mean {suggestion}?")]
    HostBits {
        /// The whole input.
        input: String,
        /// The prefix length.
        prefix: u8,
        /// The network with the host bits cleared.
        suggestion: String,
    },
}

/// An IP network: an address with all host bits clear plus a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True when the two networks share at least one address (one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_ipv6() != other.is_ipv6() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        mask(self.addr, shorter) == mask(other.addr, shorter)
    }

    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6() && mask(ip, self.prefix) == mask(self.addr, self.prefix)
    }
}

/// The address as a 128-bit number with only the first `prefix` bits kept.
fn mask(addr: IpAddr, prefix: u8) -> u128 {
    let (bits, width) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
        IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return 0;
    }
    let host = width - prefix;
    (bits >> host) << host
}

fn from_bits(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(bits.into())
    } else {
        // Only the low 32 bits are used for IPv4.
        IpAddr::V4(std::net::Ipv4Addr::from((bits & 0xffff_ffff) as u32))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = address.parse().map_err(|_| CidrError::BadAddress {
            input: input.to_string(),
            address: address.to_string(),
        })?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(CidrError::BadPrefix {
                        input: input.to_string(),
                        max,
                    })
                }
            },
        };
        let net = mask(addr, prefix);
        let bits = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        if net != bits {
            return Err(CidrError::HostBits {
                input: input.to_string(),
                prefix,
                suggestion: format!("{}/{}", from_bits(net, addr.is_ipv6()), prefix),
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    /// Prints the form `iptables-save` prints (`10.0.0.0/8`, `fd00::/8`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_forms() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!("FD00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix { max: 32, .. })
        ));
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(CidrError::BadPrefix { max: 128, .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::BadPrefix { .. })
        ));
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(err.to_string().contains("did you mean 10.0.0.0/8"), "{err}");
        let err = "fd00::1/8".parse::<Cidr>().unwrap_err();
        assert!(err.to_string().contains("did you mean fd00::/8"), "{err}");
    }

    #[test]
    fn overlap_and_containment() {
        let a: Cidr = "10.0.0.0/8".parse().unwrap();
        let b: Cidr = "10.1.0.0/16".parse().unwrap();
        let c: Cidr = "11.0.0.0/8".parse().unwrap();
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        let v6: Cidr = "::/0".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(all.overlaps(&c));
        assert!(!v6.overlaps(&a));
        assert!(b.contains("10.1.2.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(!b.contains("::1".parse().unwrap()));
    }
}
