//! docmesh-init: installs (and removes) the nat-table redirects that send a pod's TCP through
//! the docmesh sidecar, and validates that they work.
//!
//! - [`options`] and [`cidr`]: the operator's options, checked for contradictions.
//! - [`chains`]: the names of docmesh's nat chains.
//! - [`rules`]: pure generation of the `iptables-restore --noflush` input.
//! - [`state`]: what the nat table already holds (from `iptables-save`).
//! - [`backend`] and [`host`]: nft vs legacy, running the binaries, capabilities.
//! - [`install`]: the install/cleanup flow; [`validate`]: the post-install check.
//! - [`inject`]: `docmesh-init inject`, adds docmesh to Kubernetes manifests.
//! - [`args`]: the capture flags shared by every subcommand.
//! - [`webhook`]: `docmesh-init webhook`, the mutating admission webhook.
//! - [`cli`]: the command line (every option also as a `DOCMESH_INIT_*` variable).
#![forbid(unsafe_code)]

pub mod args;
pub mod backend;
pub mod chains;
pub mod cidr;
pub mod cli;
pub mod host;
pub mod inject;
pub mod install;
pub mod options;
pub mod rules;
pub mod state;
pub mod validate;
pub mod webhook;
