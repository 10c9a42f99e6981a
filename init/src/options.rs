//! The rule-relevant options, parsed from the operator's strings and checked for contradictions
//! before any iptables command runs.

use crate::cidr::{Cidr, CidrError};

/// Default port of the proxy's inbound listener.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Default port of the proxy's outbound listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default UID (and GID) the proxy runs as; its traffic is never redirected.
pub const DEFAULT_PROXY_ID: u32 = 1337;

/// What is wrong with the options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A port list entry is not a port number.
    #[error("{option}: {value:?} is not a TCP port (expected a number from 1 to 65535)")]
    BadPort {
        /// The option name.
        option: &'static str,
        /// The offending entry.
        value: String,
    },
    /// A UID/GID list entry is not a number.
    #[error("{option}: {value:?} is not a numeric user or group id")]
    BadId {
        /// The option name.
        option: &'static str,
        /// The offending entry.
        value: String,
    },
    /// A CIDR did not parse.
    #[error("{option}: {source}")]
    BadCidr {
        /// The option name.
        option: &'static str,
        /// Why.
        source: CidrError,
    },
    /// A port is both captured and excluded on inbound.
    #[error("inbound port {port} is both listed in --inbound-ports and in --exclude-inbound-ports; remove it from one of them")]
    InboundPortExcluded {
        /// The port.
        port: u16,
    },
    /// Inbound and outbound listener ports are the same.
    #[error("--inbound-port and --outbound-port are both {port}; the proxy needs two different listener ports")]
    SamePorts {
        /// The port.
        port: u16,
    },
    /// A redirect target port is excluded, or captured on inbound.
    #[error("{option} lists the proxy's own {which} port {port}; that would send the proxy's listener traffic in a loop")]
    ProxyPortListed {
        /// The option name.
        option: &'static str,
        /// "inbound" or "outbound".
        which: &'static str,
        /// The port.
        port: u16,
    },
    /// An include CIDR overlaps an exclude CIDR.
    #[error("--include-outbound-cidrs {include} overlaps --exclude-outbound-cidrs {exclude}; a network cannot be both captured and bypassed")]
    CidrOverlap {
        /// The include CIDR.
        include: Cidr,
        /// The exclude CIDR.
        exclude: Cidr,
    },
    /// Neither a UID nor a GID identifies the proxy, so its own traffic would loop.
    #[error("--proxy-uid and --proxy-gid are both empty; the proxy's own traffic would be redirected back into itself")]
    NoProxyIdentity,
}

/// Which inbound destination ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every TCP port except the excluded ones (`*`, the default).
    All,
    /// Only these ports (an empty list disables inbound capture).
    List(Vec<u16>),
}

/// The validated options that decide the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Port of the proxy's inbound listener (REDIRECT target for inbound TCP).
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener (REDIRECT target for outbound TCP).
    pub outbound_port: u16,
    /// Inbound ports captured.
    pub inbound_ports: InboundPorts,
    /// Inbound destination ports never redirected (admin port, ssh, ...).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks never redirected.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// When not empty, only outbound traffic to these networks is redirected.
    pub include_outbound_cidrs: Vec<Cidr>,
    /// UIDs whose traffic is never redirected (the proxy's).
    pub proxy_uids: Vec<u32>,
    /// GIDs whose traffic is never redirected (the proxy's).
    pub proxy_gids: Vec<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: Vec::new(),
            proxy_uids: vec![DEFAULT_PROXY_ID],
            proxy_gids: vec![DEFAULT_PROXY_ID],
        }
    }
}

/// The options exactly as the operator wrote them (CLI flags or environment variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOptions {
    /// `--inbound-port`.
    pub inbound_port: u16,
    /// `--outbound-port`.
    pub outbound_port: u16,
    /// `--inbound-ports`: `*`, a comma-separated list, or empty for none.
    pub inbound_ports: String,
    /// `--exclude-inbound-ports`, comma-separated.
    pub exclude_inbound_ports: String,
    /// `--exclude-outbound-ports`, comma-separated.
    pub exclude_outbound_ports: String,
    /// `--exclude-outbound-cidrs`, comma-separated.
    pub exclude_outbound_cidrs: String,
    /// `--include-outbound-cidrs`, comma-separated (empty: everything).
    pub include_outbound_cidrs: String,
    /// `--proxy-uid`, comma-separated.
    pub proxy_uid: String,
    /// `--proxy-gid`, comma-separated.
    pub proxy_gid: String,
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn ports(option: &'static str, s: &str) -> Result<Vec<u16>, OptionsError> {
    let mut out = Vec::new();
    for item in items(s) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            _ => {
                return Err(OptionsError::BadPort {
                    option,
                    value: item.to_string(),
                })
            }
        }
    }
    Ok(out)
}

fn ids(option: &'static str, s: &str) -> Result<Vec<u32>, OptionsError> {
    let mut out = Vec::new();
    for item in items(s) {
        let id = item.parse::<u32>().map_err(|_| OptionsError::BadId {
            option,
            value: item.to_string(),
        })?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn cidrs(option: &'static str, s: &str) -> Result<Vec<Cidr>, OptionsError> {
    let mut out = Vec::new();
    for item in items(s) {
        let c: Cidr = item
            .parse()
            .map_err(|source| OptionsError::BadCidr { option, source })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

impl RawOptions {
    /// Parses every list and rejects contradictory combinations.
    pub fn parse(&self) -> Result<Options, OptionsError> {
        let inbound_ports = match self.inbound_ports.trim() {
            "*" => InboundPorts::All,
            s => InboundPorts::List(ports("--inbound-ports", s)?),
        };
        let opts = Options {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            inbound_ports,
            exclude_inbound_ports: ports("--exclude-inbound-ports", &self.exclude_inbound_ports)?,
            exclude_outbound_ports: ports(
                "--exclude-outbound-ports",
                &self.exclude_outbound_ports,
            )?,
            exclude_outbound_cidrs: cidrs(
                "--exclude-outbound-cidrs",
                &self.exclude_outbound_cidrs,
            )?,
            include_outbound_cidrs: cidrs(
                "--include-outbound-cidrs",
                &self.include_outbound_cidrs,
            )?,
            proxy_uids: ids("--proxy-uid", &self.proxy_uid)?,
            proxy_gids: ids("--proxy-gid", &self.proxy_gid)?,
        };
        opts.check()?;
        Ok(opts)
    }
}

impl Options {
    /// Rejects option combinations that contradict each other.
    pub fn check(&self) -> Result<(), OptionsError> {
        for (port, option) in [
            (self.inbound_port, "--inbound-port"),
            (self.outbound_port, "--outbound-port"),
        ] {
            if port == 0 {
                return Err(OptionsError::BadPort {
                    option,
                    value: "0".into(),
                });
            }
        }
        if self.inbound_port == self.outbound_port {
            return Err(OptionsError::SamePorts {
                port: self.inbound_port,
            });
        }
        if let InboundPorts::List(list) = &self.inbound_ports {
            if let Some(&port) = list.iter().find(|p| self.exclude_inbound_ports.contains(p)) {
                return Err(OptionsError::InboundPortExcluded { port });
            }
            if list.contains(&self.outbound_port) {
                return Err(OptionsError::ProxyPortListed {
                    option: "--inbound-ports",
                    which: "outbound",
                    port: self.outbound_port,
                });
            }
        }
        for include in &self.include_outbound_cidrs {
            if let Some(exclude) = self
                .exclude_outbound_cidrs
                .iter()
                .find(|e| e.overlaps(include))
            {
                return Err(OptionsError::CidrOverlap {
                    include: *include,
                    exclude: *exclude,
                });
            }
        }
        if self.proxy_uids.is_empty() && self.proxy_gids.is_empty() {
            return Err(OptionsError::NoProxyIdentity);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOptions {
        RawOptions {
            inbound_port: 15006,
            outbound_port: 15001,
            inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            exclude_outbound_cidrs: String::new(),
            include_outbound_cidrs: String::new(),
            proxy_uid: "1337".into(),
            proxy_gid: "1337".into(),
        }
    }

    #[test]
    fn defaults_parse_to_default_options() {
        assert_eq!(raw().parse().unwrap(), Options::default());
    }

    #[test]
    fn lists_are_trimmed_and_deduplicated() {
        let mut r = raw();
        r.inbound_ports = " 80, 8080 ,80,".into();
        r.exclude_outbound_cidrs = "10.0.0.0/8, fd00::/8".into();
        let o = r.parse().unwrap();
        assert_eq!(o.inbound_ports, InboundPorts::List(vec![80, 8080]));
        assert_eq!(o.exclude_outbound_cidrs.len(), 2);
        r.inbound_ports = String::new();
        assert_eq!(r.parse().unwrap().inbound_ports, InboundPorts::List(vec![]));
    }

    #[test]
    fn contradictions_are_rejected() {
        let mut r = raw();
        r.inbound_ports = "80,22".into();
        r.exclude_inbound_ports = "22".into();
        assert_eq!(
            r.parse(),
            Err(OptionsError::InboundPortExcluded { port: 22 })
        );

        let mut r = raw();
        r.include_outbound_cidrs = "10.0.0.0/8".into();
        r.exclude_outbound_cidrs = "10.96.0.0/12".into();
        let err = r.parse().unwrap_err();
        assert!(matches!(err, OptionsError::CidrOverlap { .. }), "{err}");
        assert!(err.to_string().contains("10.0.0.0/8"));

        let mut r = raw();
        r.outbound_port = 15006;
        assert_eq!(r.parse(), Err(OptionsError::SamePorts { port: 15006 }));

        let mut r = raw();
        r.inbound_ports = "15001".into();
        assert!(matches!(
            r.parse(),
            Err(OptionsError::ProxyPortListed { .. })
        ));

        let mut r = raw();
        r.proxy_uid = String::new();
        r.proxy_gid = " ".into();
        assert_eq!(r.parse(), Err(OptionsError::NoProxyIdentity));
    }

    #[test]
    fn bad_values_are_named() {
        let mut r = raw();
        r.exclude_outbound_ports = "22,ssh".into();
        let err = r.parse().unwrap_err();
        assert_eq!(err.to_string(), "--exclude-outbound-ports: \"ssh\" is not a TCP port (expected a number from 1 to 65535)");
        let mut r = raw();
        r.exclude_inbound_ports = "0".into();
        assert!(matches!(r.parse(), Err(OptionsError::BadPort { .. })));
        let mut r = raw();
        r.proxy_uid = "proxy".into();
        assert!(matches!(r.parse(), Err(OptionsError::BadId { .. })));
        let mut r = raw();
        r.exclude_outbound_cidrs = "10.0.0.1/8".into();
        let err = r.parse().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--exclude-outbound-cidrs: invalid CIDR"),
            "{err}"
        );
    }
}
