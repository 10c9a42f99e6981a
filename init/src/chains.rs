//! The names of docmesh's nat chains, shared by rule generation ([`crate::rules`]) and the
//! reading of what is installed ([`crate::state`]).

/// Chain for inbound TCP (jumped to from PREROUTING).
pub const CHAIN_INBOUND: &str = "DOCMESH_INBOUND";
/// Chain holding the inbound REDIRECT.
pub const CHAIN_INBOUND_REDIRECT: &str = "DOCMESH_INBOUND_REDIRECT";
/// Chain for locally generated TCP (jumped to from OUTPUT).
pub const CHAIN_OUTPUT: &str = "DOCMESH_OUTPUT";
/// Chain holding the outbound REDIRECT.
pub const CHAIN_OUTPUT_REDIRECT: &str = "DOCMESH_OUTPUT_REDIRECT";
/// All chains docmesh owns, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_INBOUND_REDIRECT,
    CHAIN_OUTPUT,
    CHAIN_OUTPUT_REDIRECT,
];
/// The nat table's built-in chains.
pub const BUILTIN_CHAINS: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// True for a chain docmesh owns.
pub fn is_docmesh_chain(name: &str) -> bool {
    CHAINS.contains(&name)
}
