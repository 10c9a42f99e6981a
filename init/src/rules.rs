//! Pure rule generation: from [`Options`] and the current [`NatState`] to the exact
//! `iptables-restore --noflush` input. Rules are written in the form `iptables-save` prints
//! them, so what we install can be compared line by line with what the kernel reports.
//!
//! Layout (nat table, per address family):
//! - `PREROUTING -p tcp -j DOCMESH_INBOUND`: inbound TCP; excluded ports return, captured ports
//!   go to `DOCMESH_INBOUND_REDIRECT` (REDIRECT to the inbound port).
//! - `OUTPUT -p tcp -j DOCMESH_OUTPUT`: locally generated TCP, in this order:
//!   1. the proxy (UID/GID) connecting to a local non-loopback address (its own pod IP) over
//!      `lo` goes through `DOCMESH_INBOUND`, so a call to the pod's own service still passes
//!      the inbound listener (as Istio does) instead of reaching the app unauthenticated;
//!   2. any other traffic of the proxy returns (never redirected back into itself);
//!   3. other traffic over `lo` (the app calling 127.0.0.1 or its own pod IP) returns: it goes
//!      straight to the local listener; redirecting it to the outbound listener would send it
//!      through mTLS to ourselves, and redirecting it to the inbound listener would present
//!      plaintext where mTLS is required;
//!   4. excluded CIDRs and ports return;
//!   5. included CIDRs (or everything) go to `DOCMESH_OUTPUT_REDIRECT` (REDIRECT to the
//!      outbound port).
//!
//! Locally generated connections get their NAT decision in OUTPUT only, so a connection the
//! app makes to its own pod IP never passes PREROUTING's DOCMESH_INBOUND afterwards.

use std::fmt::Write as _;

use crate::options::{InboundPorts, Options};
use crate::state::NatState;

pub use crate::chains::{
    is_docmesh_chain, BUILTIN_CHAINS, CHAINS, CHAIN_INBOUND, CHAIN_INBOUND_REDIRECT, CHAIN_OUTPUT,
    CHAIN_OUTPUT_REDIRECT,
};

/// IPv4 or IPv6; each gets its own restore call (`iptables-restore` / `ip6tables-restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The loopback network as iptables-save prints it.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// "IPv4" or "IPv6", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

fn rule(out: &mut Vec<String>, chain: &str, matches: &str, comment: &str, target: &str) {
    let sep = if matches.is_empty() { "" } else { " " };
    out.push(format!(
        "-A {chain}{sep}{matches} -m comment --comment \"docmesh: {comment}\" -j {target}"
    ));
}

/// The jump rules from the built-in chains, as `-A ...` lines.
pub fn jump_rules() -> [String; 2] {
    let mut v = Vec::new();
    rule(
        &mut v,
        "PREROUTING",
        "-p tcp",
        "capture inbound tcp",
        CHAIN_INBOUND,
    );
    rule(
        &mut v,
        "OUTPUT",
        "-p tcp",
        "capture outbound tcp",
        CHAIN_OUTPUT,
    );
    [v[0].clone(), v[1].clone()]
}

/// Every rule inside docmesh's chains for one family, as `-A ...` lines in save form.
pub fn chain_rules(opts: &Options, family: Family) -> Vec<String> {
    let mut v = Vec::new();
    let in_family = |c: &&crate::cidr::Cidr| c.is_ipv6() == (family == Family::V6);

    // Inbound.
    match &opts.inbound_ports {
        InboundPorts::All => {
            for p in &opts.exclude_inbound_ports {
                rule(
                    &mut v,
                    CHAIN_INBOUND,
                    &format!("-p tcp -m tcp --dport {p}"),
                    &format!("inbound port {p} excluded"),
                    "RETURN",
                );
            }
            rule(
                &mut v,
                CHAIN_INBOUND,
                "-p tcp",
                "redirect inbound tcp",
                CHAIN_INBOUND_REDIRECT,
            );
        }
        InboundPorts::List(ports) => {
            for p in ports {
                rule(
                    &mut v,
                    CHAIN_INBOUND,
                    &format!("-p tcp -m tcp --dport {p}"),
                    &format!("redirect inbound port {p}"),
                    CHAIN_INBOUND_REDIRECT,
                );
            }
        }
    }
    rule(
        &mut v,
        CHAIN_INBOUND_REDIRECT,
        "-p tcp",
        &format!("to inbound listener {}", opts.inbound_port),
        &format!("REDIRECT --to-ports {}", opts.inbound_port),
    );

    // Outbound.
    let lo = family.loopback();
    for (kind, ids) in [("uid", &opts.proxy_uids), ("gid", &opts.proxy_gids)] {
        for id in ids.iter() {
            rule(
                &mut v,
                CHAIN_OUTPUT,
                &format!("! -d {lo} -o lo -m owner --{kind}-owner {id}"),
                &format!("proxy {kind} {id} to own pod address goes inbound"),
                CHAIN_INBOUND,
            );
        }
    }
    for (kind, ids) in [("uid", &opts.proxy_uids), ("gid", &opts.proxy_gids)] {
        for id in ids.iter() {
            rule(
                &mut v,
                CHAIN_OUTPUT,
                &format!("-m owner --{kind}-owner {id}"),
                &format!("proxy {kind} {id} not redirected"),
                "RETURN",
            );
        }
    }
    rule(
        &mut v,
        CHAIN_OUTPUT,
        "-o lo",
        "local traffic not redirected",
        "RETURN",
    );
    for c in opts.exclude_outbound_cidrs.iter().filter(in_family) {
        rule(
            &mut v,
            CHAIN_OUTPUT,
            &format!("-d {c}"),
            &format!("outbound cidr {c} excluded"),
            "RETURN",
        );
    }
    for p in &opts.exclude_outbound_ports {
        rule(
            &mut v,
            CHAIN_OUTPUT,
            &format!("-p tcp -m tcp --dport {p}"),
            &format!("outbound port {p} excluded"),
            "RETURN",
        );
    }
    if opts.include_outbound_cidrs.is_empty() {
        rule(
            &mut v,
            CHAIN_OUTPUT,
            "",
            "redirect outbound tcp",
            CHAIN_OUTPUT_REDIRECT,
        );
    } else {
        // A family without include CIDRs captures nothing outbound.
        for c in opts.include_outbound_cidrs.iter().filter(in_family) {
            rule(
                &mut v,
                CHAIN_OUTPUT,
                &format!("-d {c}"),
                &format!("outbound cidr {c} included"),
                CHAIN_OUTPUT_REDIRECT,
            );
        }
    }
    rule(
        &mut v,
        CHAIN_OUTPUT_REDIRECT,
        "-p tcp",
        &format!("to outbound listener {}", opts.outbound_port),
        &format!("REDIRECT --to-ports {}", opts.outbound_port),
    );
    v
}

/// The rules `iptables-save -t nat` must show for docmesh after an install: the two jumps
/// followed by the chain rules, in save order (built-in chains come first in save output).
pub fn expected_save_lines(opts: &Options, family: Family) -> Vec<String> {
    let mut lines: Vec<String> = jump_rules().to_vec();
    lines.extend(chain_rules(opts, family));
    lines
}

/// The `iptables-restore --noflush` input that installs (or refreshes) docmesh's rules:
/// declares (creating or flushing) docmesh's chains, refills them, adds each jump from the
/// built-in chains only when it is missing and removes duplicate or stale jumps.
pub fn install_script(opts: &Options, family: Family, state: &NatState) -> String {
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    let wanted = jump_rules();
    let mut kept = [false, false];
    for existing in &state.jumps {
        match wanted.iter().position(|w| w == existing) {
            Some(i) if !kept[i] => kept[i] = true,
            _ => {
                let _ = writeln!(s, "-D{}", &existing[2..]);
            }
        }
    }
    for (i, w) in wanted.iter().enumerate() {
        if !kept[i] {
            let _ = writeln!(s, "{w}");
        }
    }
    for r in chain_rules(opts, family) {
        let _ = writeln!(s, "{r}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore --noflush` input that removes every docmesh jump and chain present in
/// `state`, leaving all other rules alone; `None` when there is nothing to remove.
pub fn cleanup_script(state: &NatState) -> Option<String> {
    if state.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for existing in &state.jumps {
        let _ = writeln!(s, "-D{}", &existing[2..]);
    }
    // Declaring a chain flushes it, so chains that reference each other can then be deleted.
    for chain in &state.chains {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for chain in &state.chains {
        let _ = writeln!(s, "-X {chain}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_of(opts: &Options, family: Family) -> String {
        let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        for c in CHAINS {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        for l in expected_save_lines(opts, family) {
            s.push_str(&l);
            s.push('\n');
        }
        s + "COMMIT\n"
    }

    #[test]
    fn rerun_adds_no_second_jump() {
        let opts = Options::default();
        let fresh = install_script(&opts, Family::V4, &NatState::default());
        assert_eq!(fresh.matches("-A PREROUTING").count(), 1);
        assert_eq!(fresh.matches("-A OUTPUT").count(), 1);
        let state = NatState::parse(&save_of(&opts, Family::V4));
        let again = install_script(&opts, Family::V4, &state);
        assert!(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT"));
        assert!(!again.contains("-D "));
        assert_eq!(
            again
                .lines()
                .filter(|l| l.starts_with("-A DOCMESH"))
                .count(),
            chain_rules(&opts, Family::V4).len()
        );
    }

    #[test]
    fn duplicate_and_stale_jumps_are_removed() {
        let dup = jump_rules()[1].clone();
        let stale = "-A OUTPUT -j DOCMESH_OUTPUT".to_string();
        let state = NatState {
            chains: vec![CHAIN_OUTPUT.into()],
            jumps: vec![dup.clone(), stale, dup.clone()],
            rules: vec![],
            foreign_rules: 0,
        };
        let s = install_script(&Options::default(), Family::V4, &state);
        assert!(s.contains("-D OUTPUT -j DOCMESH_OUTPUT\n"));
        assert_eq!(s.matches(&format!("-D{}", &dup[2..])).count(), 1);
        assert!(!s.contains(&dup));
        assert!(s.contains(&jump_rules()[0]));
    }

    #[test]
    fn cleanup_removes_only_what_exists() {
        assert_eq!(cleanup_script(&NatState::default()), None);
        let state = NatState::parse(&save_of(&Options::default(), Family::V6));
        let s = cleanup_script(&state).unwrap();
        assert_eq!(s.matches("-D ").count(), 2);
        assert_eq!(s.matches("-X ").count(), 4);
        let x = s.find("-X ").unwrap();
        assert!(
            s.rfind(":DOCMESH").unwrap() < x,
            "flush before delete:\n{s}"
        );
    }
}
