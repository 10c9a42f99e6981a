//! The `docmesh-init` command line. Every option is also an environment variable
//! (`DOCMESH_INIT_*`) so Pod specs and compose files can configure it without arguments.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::args::RuleArgs;
use crate::backend;
use crate::host::Host;
use crate::install::{self, Action, InstallError, Plan};
use crate::options::OptionsError;
use crate::validate::{self, ValidateError, ValidateOptions};

/// Installs (or removes) the nat-table redirects that send a pod's TCP through the docmesh
/// sidecar: inbound TCP to the inbound port, outbound TCP to the outbound port, except the
/// proxy's own traffic, loopback and what is excluded.
#[derive(Debug, Parser)]
#[command(name = "docmesh-init", version)]
pub struct Cli {
    /// Subcommand; without one, install the rules.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Rule options (under their own heading, so `inject --help` keeps its flags apart).
    #[command(
        flatten,
        next_help_heading = "Capture options (iptables; inject passes them to the init container)"
    )]
    pub rules: RuleArgs,
    /// Remove docmesh's chains and jumps (and nothing else) instead of installing.
    #[arg(long, env = "DOCMESH_INIT_CLEANUP", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub cleanup: bool,
    /// Print the exact iptables-restore input instead of applying it.
    #[arg(long, env = "DOCMESH_INIT_DRY_RUN", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prove that the outbound redirect works (run after install, before the proxy starts).
    Validate(ValidateArgs),
    /// Add docmesh (init container, native proxy sidecar, SVID, probes) to Kubernetes YAML.
    Inject(crate::inject::InjectArgs),
    /// Serve a mutating admission webhook (AdmissionReview v1, HTTPS) that injects Pods.
    #[command(mut_arg("file", |a| a.hide(true)), mut_arg("output", |a| a.hide(true)))]
    Webhook(crate::webhook::WebhookArgs),
}

/// `validate` options.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Destinations that must be redirected (repeat or comma-separate; IPv6 as `[addr]:port`).
    #[arg(long = "target", env = "DOCMESH_INIT_VALIDATE_TARGETS", value_delimiter = ',', default_value = validate::DEFAULT_TARGET)]
    pub targets: Vec<SocketAddr>,
    /// Port to listen on; defaults to --outbound-port.
    #[arg(long, env = "DOCMESH_INIT_VALIDATE_PORT")]
    pub port: Option<u16>,
    /// How long to wait for each test connection, in milliseconds.
    #[arg(long, env = "DOCMESH_INIT_VALIDATE_TIMEOUT_MS", default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Every way the command can fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments (clap's message, with usage).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// Invalid or contradictory options.
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    /// Install or cleanup failed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Validation failed.
    #[error("validate: {0}")]
    Validate(#[from] ValidateError),
    /// The webhook could not serve.
    #[error("webhook: {0}")]
    Webhook(#[from] crate::webhook::WebhookError),
    /// `inject` failed.
    #[error("inject: {0}")]
    Inject(#[from] crate::inject::InjectError),
}

impl Cli {
    /// Parses a command line (including the program name) without running it.
    pub fn try_parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }
}

/// Parses `args` (including the program name) and runs the command against `host`, writing
/// results to `out`. `main` and the network-namespace tests both call this.
pub fn run<I, T>(args: I, host: &dyn Host, out: &mut dyn Write) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let options = cli.rules.raw().parse()?;
    match cli.command {
        None => {
            let plan = Plan {
                options,
                backend: cli.rules.backend,
                ipv6: cli.rules.ipv6,
                action: if cli.cleanup {
                    Action::Cleanup
                } else {
                    Action::Install
                },
                dry_run: cli.dry_run,
            };
            install::run(host, &plan, out)?;
        }
        Some(Command::Validate(v)) => {
            let backend = backend::select(host, cli.rules.backend).ok();
            let opts = ValidateOptions {
                port: v.port.unwrap_or(options.outbound_port),
                targets: v.targets,
                timeout: Duration::from_millis(v.timeout_ms.max(1)),
                proxy_uids: options.proxy_uids,
                proxy_gids: options.proxy_gids,
            };
            validate::validate(host, backend, &opts, out)?;
        }
        Some(Command::Inject(a)) => crate::inject::run(&a, &cli.rules, out)?,
        Some(Command::Webhook(w)) => crate::webhook::run(&w, &cli.rules)?,
    }
    Ok(())
}
