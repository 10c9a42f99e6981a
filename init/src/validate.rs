//! `docmesh-init validate`: proves the outbound redirect works by listening on the outbound
//! port as the proxy would, connecting to a test address that must be captured, and checking
//! that the connection arrives with that address as its original destination
//! (SO_ORIGINAL_DST). When it does not, it says what is wrong.

use std::io::{ErrorKind, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::backend::{Backend, Tool};
use crate::host::Host;
use crate::rules::{Family, CHAIN_OUTPUT};
use crate::state::NatState;

/// Default test destination: TEST-NET-1 (RFC 5737), never a real service.
pub const DEFAULT_TARGET: &str = "192.0.2.1:80";

/// What `validate` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateOptions {
    /// The port to listen on (the outbound redirect port).
    pub port: u16,
    /// Destinations that must be redirected.
    pub targets: Vec<SocketAddr>,
    /// How long to wait for each connection.
    pub timeout: Duration,
    /// The proxy's UIDs (validate must not run as one: their traffic is never redirected).
    pub proxy_uids: Vec<u32>,
    /// The proxy's GIDs.
    pub proxy_gids: Vec<u32>,
}

/// Why validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// validate runs as the proxy's user or group, whose traffic is never redirected.
    #[error("validate runs as {kind} {id}, which the rules exclude as the proxy's; run it as another user (e.g. root or the app's user)")]
    RunsAsProxy {
        /// "uid" or "gid".
        kind: &'static str,
        /// The id.
        id: u32,
    },
    /// The listen port is taken.
    #[error("cannot listen on {addr}: the port is in use (is docmesh-proxy already running? run validate before the proxy starts, or stop it first)")]
    PortInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Some other socket error.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The target has no route, so the packet never reached the OUTPUT chain.
    #[error("no route to {target} ({source}); locally generated packets need a route before iptables sees them: add a default route or pick a --target in a routed network")]
    NoRoute {
        /// The target.
        target: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection was not redirected.
    #[error("the connection to {target} was NOT redirected to port {port}: {how}\n{diagnosis}")]
    NotRedirected {
        /// The target.
        target: SocketAddr,
        /// The listen port.
        port: u16,
        /// What happened instead.
        how: String,
        /// What the nat table shows and what to check.
        diagnosis: String,
    },
    /// Redirected, but the original destination is not the target.
    #[error("the connection to {target} arrived on port {port} but SO_ORIGINAL_DST says {got}; another NAT rule rewrites the destination before docmesh's")]
    WrongOriginalDst {
        /// The target.
        target: SocketAddr,
        /// The listen port.
        port: u16,
        /// What SO_ORIGINAL_DST returned.
        got: String,
    },
    /// Writing the output failed.
    #[error("could not write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs the check for every target, reporting each success on `out`.
pub fn validate(
    host: &dyn Host,
    backend: Option<Backend>,
    opts: &ValidateOptions,
    out: &mut dyn Write,
) -> Result<(), ValidateError> {
    let uid = nix::unistd::geteuid().as_raw();
    if opts.proxy_uids.contains(&uid) {
        return Err(ValidateError::RunsAsProxy {
            kind: "uid",
            id: uid,
        });
    }
    let gid = nix::unistd::getegid().as_raw();
    if opts.proxy_gids.contains(&gid) {
        return Err(ValidateError::RunsAsProxy {
            kind: "gid",
            id: gid,
        });
    }
    for target in &opts.targets {
        let got =
            check_one(*target, opts).map_err(|e| with_diagnosis(e, host, backend, *target))?;
        writeln!(
            out,
            "ok: a connection to {target} was redirected to port {} with original destination {got}",
            opts.port
        )?;
    }
    Ok(())
}

fn with_diagnosis(
    e: ValidateError,
    host: &dyn Host,
    backend: Option<Backend>,
    target: SocketAddr,
) -> ValidateError {
    match e {
        ValidateError::NotRedirected {
            target: t,
            port,
            how,
            ..
        } => ValidateError::NotRedirected {
            target: t,
            port,
            how,
            diagnosis: diagnose(host, backend, family_of(target)),
        },
        other => other,
    }
}

fn family_of(a: SocketAddr) -> Family {
    if a.is_ipv6() {
        Family::V6
    } else {
        Family::V4
    }
}

/// Describes which backend holds docmesh's outbound rules for `family`, with a hint.
pub fn diagnose(host: &dyn Host, chosen: Option<Backend>, family: Family) -> String {
    let mut lines = Vec::new();
    let mut found = Vec::new();
    for b in [Backend::Nft, Backend::Legacy] {
        let bin = b.binary(family, Tool::Save);
        if host.find(&bin).is_none() {
            continue;
        }
        match host.run(&bin, &["-t", "nat"], None) {
            Ok(save) => {
                let st = NatState::parse(&save);
                let has_chain = st.chains.iter().any(|c| c == CHAIN_OUTPUT);
                let has_jump = st.jumps.iter().any(|j| j.starts_with("-A OUTPUT "));
                lines.push(format!(
                    "  {bin}: {CHAIN_OUTPUT} chain {}, OUTPUT jump {}, {} docmesh rules",
                    if has_chain { "present" } else { "absent" },
                    if has_jump { "present" } else { "absent" },
                    st.rules.len()
                ));
                if has_chain && has_jump {
                    found.push(b);
                }
            }
            Err(e) => lines.push(format!("  {bin}: cannot read ({e})")),
        }
    }
    let hint = match (found.as_slice(), chosen) {
        ([], _) => format!("no docmesh {} rules in this network namespace: run docmesh-init (with NET_ADMIN) in this namespace before validating", family.name()),
        ([b], Some(c)) if *b != c && c != Backend::Plain => format!(
            "docmesh's rules are in the {} backend but you asked for {}; the kernel evaluates both, so check the other backend's rules for an earlier ACCEPT/RETURN",
            b.name(),
            c.name()
        ),
        _ => "docmesh's rules are present: check that the target is not excluded (--exclude-outbound-cidrs, --exclude-outbound-ports, outside --include-outbound-cidrs) and that another OUTPUT rule does not come first".to_string(),
    };
    format!("nat table:\n{}\nhint: {hint}", lines.join("\n"))
}

fn check_one(target: SocketAddr, opts: &ValidateOptions) -> Result<String, ValidateError> {
    let listen: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::LOCALHOST, opts.port).into()
    } else {
        (Ipv4Addr::LOCALHOST, opts.port).into()
    };
    let listener = TcpListener::bind(listen).map_err(|source| {
        if source.kind() == ErrorKind::AddrInUse {
            ValidateError::PortInUse { addr: listen }
        } else {
            ValidateError::Io {
                what: "cannot listen on",
                addr: listen,
                source,
            }
        }
    })?;
    let io = |what, source| ValidateError::Io {
        what,
        addr: target,
        source,
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| io("cannot configure listener for", e))?;
    let domain = if target.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io("cannot create a socket for", e))?;
    let not_redirected = |how: String| ValidateError::NotRedirected {
        target,
        port: opts.port,
        how,
        diagnosis: String::new(),
    };
    match sock.connect_timeout(&SockAddr::from(target), opts.timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            let own = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.ip() == target.ip());
            return Err(not_redirected(if own {
                format!("{} is an address of this namespace; traffic to local addresses goes over lo and is deliberately not redirected, so pick a remote --target", target.ip())
            } else {
                format!("{target} itself refused the connection, so the packets went there directly")
            }));
        }
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            return Err(not_redirected(format!(
                "no answer within {:?}, so the packets left towards {target} instead of the local listener",
                opts.timeout
            )))
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable
            ) =>
        {
            return Err(ValidateError::NoRoute { target, source: e })
        }
        Err(e) => return Err(io("cannot connect to", e)),
    }
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| {
            io(
                "no local address for the connection to",
                ErrorKind::Other.into(),
            )
        })?;
    let deadline = Instant::now() + opts.timeout.min(Duration::from_millis(500));
    let accepted = loop {
        match listener.accept() {
            Ok((stream, peer)) if peer == local => break stream,
            Ok(_) => continue, // someone else's connection; keep looking for ours
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(not_redirected(format!(
                        "the connection was established, but not with the listener on port {}: something at {target} answered directly",
                        opts.port
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io("accept failed while checking", e)),
        }
    };
    let got = original_dst(&accepted, target.is_ipv6())
        .map_err(|e| io("SO_ORIGINAL_DST failed for the connection to", e))?;
    if got != target {
        return Err(ValidateError::WrongOriginalDst {
            target,
            port: opts.port,
            got: got.to_string(),
        });
    }
    Ok(got.to_string())
}

/// The original destination of a redirected connection (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
pub fn original_dst(stream: &TcpStream, ipv6: bool) -> std::io::Result<SocketAddr> {
    if ipv6 {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            sa.sin6_scope_id,
        )))
    } else {
        let sa = getsockopt(stream, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    }
}
