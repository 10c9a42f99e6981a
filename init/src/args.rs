//! The capture flags shared by every subcommand (install, cleanup, validate, inject); every
//! flag is also a `DOCMESH_INIT_*` variable.

use clap::Args;

use crate::backend::BackendChoice;
use crate::install::Ipv6Mode;
use crate::options::RawOptions;

/// Options that decide the rules (shared by install, cleanup and validate).
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// Port of the proxy's inbound listener.
    #[arg(long, env = "DOCMESH_INIT_INBOUND_PORT", default_value_t = crate::options::DEFAULT_INBOUND_PORT, global = true)]
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, env = "DOCMESH_INIT_OUTBOUND_PORT", default_value_t = crate::options::DEFAULT_OUTBOUND_PORT, global = true)]
    pub outbound_port: u16,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(
        long,
        env = "DOCMESH_INIT_INBOUND_PORTS",
        default_value = "*",
        global = true
    )]
    pub inbound_ports: String,
    /// Inbound ports never captured (comma-separated), e.g. ssh or a health port.
    #[arg(
        long,
        env = "DOCMESH_INIT_EXCLUDE_INBOUND_PORTS",
        default_value = "",
        global = true
    )]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(
        long,
        env = "DOCMESH_INIT_EXCLUDE_OUTBOUND_PORTS",
        default_value = "",
        global = true
    )]
    pub exclude_outbound_ports: String,
    /// Outbound destination networks never captured (comma-separated CIDRs, IPv4 or IPv6).
    #[arg(
        long,
        env = "DOCMESH_INIT_EXCLUDE_OUTBOUND_CIDRS",
        default_value = "",
        global = true
    )]
    pub exclude_outbound_cidrs: String,
    /// When set, only outbound traffic to these networks is captured (comma-separated CIDRs;
    /// a family without any captures nothing).
    #[arg(
        long,
        env = "DOCMESH_INIT_INCLUDE_OUTBOUND_CIDRS",
        default_value = "",
        global = true
    )]
    pub include_outbound_cidrs: String,
    /// UID(s) of the proxy, whose traffic is never redirected (comma-separated).
    #[arg(
        long,
        env = "DOCMESH_INIT_PROXY_UID",
        default_value = "1337",
        global = true
    )]
    pub proxy_uid: String,
    /// GID(s) of the proxy, whose traffic is never redirected (comma-separated; may be empty).
    #[arg(
        long,
        env = "DOCMESH_INIT_PROXY_GID",
        default_value = "1337",
        global = true
    )]
    pub proxy_gid: String,
    /// iptables backend.
    #[arg(long, env = "DOCMESH_INIT_BACKEND", value_enum, default_value_t = BackendChoice::Auto, global = true)]
    pub backend: BackendChoice,
    /// IPv6 rules: auto (when the namespace has IPv6), on, or off.
    #[arg(long, env = "DOCMESH_INIT_IPV6", value_enum, default_value_t = Ipv6Mode::Auto, global = true)]
    pub ipv6: Ipv6Mode,
}

impl RuleArgs {
    /// The options as text, to be parsed and checked.
    pub fn raw(&self) -> RawOptions {
        RawOptions {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            include_outbound_cidrs: self.include_outbound_cidrs.clone(),
            proxy_uid: self.proxy_uid.clone(),
            proxy_gid: self.proxy_gid.clone(),
        }
    }
}
