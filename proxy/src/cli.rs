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
    /// Walk the path to a service (DNS, TCP, TLS, identity, HTTP) and name the first failure.
    Diagnose(crate::diagnose::command::DiagnoseArgs),
    /// Wait until the local proxy is ready (its admin `/ready` answers 200); for app
    /// entrypoints that must not start before their sidecar. Exits non-zero on timeout.
    Await(AwaitArgs),
    /// Run the whole mesh on loopback in this process (dev CA, two sidecars, two stand-in
    /// services, two deliberate failures) and print what happened. Needs no root.
    Demo,
}

/// Arguments of `docmesh-proxy await`.
#[derive(Debug, Clone, Args)]
pub struct AwaitArgs {
    /// Admin address of the proxy to wait for.
    #[arg(long, env = "DOCMESH_ADMIN_LISTEN", default_value = "127.0.0.1:15020")]
    pub admin: std::net::SocketAddr,
    /// How long to wait before giving up, e.g. `30s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
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
        let c = Cli::try_parse_from([
            "docmesh-proxy",
            "await",
            "--admin",
            "127.0.0.1:9",
            "--timeout",
            "2m",
        ])
        .unwrap();
        match c.command {
            Command::Await(a) => {
                assert_eq!(a.admin.port(), 9);
                assert_eq!(a.timeout.as_secs(), 120);
            }
            other => panic!("{other:?}"),
        }
    }
}
