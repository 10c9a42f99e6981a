//! The `docmesh-proxy` command line. Each subcommand is one variant of [`Command`] with its
//! own argument struct, so new subcommands are one variant and one match arm in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// docmesh sidecar proxy: mTLS with SPIFFE identities between services.
#[derive(Debug, Parser)]
#[command(name = "docmesh-proxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (inbound, outbound, admin) until SIGTERM, SIGINT or POST /shutdown.
    Run(ConfigArgs),
    /// Validate a configuration file (and DOCMESH_* overrides) and name every problem.
    Check(ConfigArgs),
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; without it the defaults and DOCMESH_* variables apply.
    #[arg(long, short = 'c', env = "DOCMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_and_check() {
        let c = Cli::try_parse_from(["docmesh-proxy", "check", "--config", "x.toml"]).unwrap();
        match c.command {
            Command::Check(a) => assert_eq!(a.config.unwrap(), PathBuf::from("x.toml")),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["docmesh-proxy", "frobnicate"]).is_err());
    }
}
