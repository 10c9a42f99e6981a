//! `docmesh-proxy`: see `docmesh_proxy::cli` for the subcommands.

use std::process::ExitCode;

use clap::Parser;
use docmesh_proxy::cli::{Cli, Command};
use docmesh_proxy::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(args.config.as_deref()),
        Command::Demo => docmesh_proxy::demo::main(),
        Command::Await(args) => docmesh_proxy::admin::ready::run_await(args.admin, args.timeout),
        Command::Diagnose(args) => docmesh_proxy::diagnose::command::run(&args),
        Command::Run(args) => {
            docmesh_proxy::app::init_logging();
            let config = match docmesh_proxy::check::load(args.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("docmesh-proxy: {e}");
                    return ExitCode::from(2);
                }
            };
            match docmesh_proxy::app::run_blocking_from(config, args.config.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "docmesh-proxy failed");
                    eprintln!("docmesh-proxy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: Option<&std::path::Path>) -> ExitCode {
    let shown = path.map_or_else(|| "<defaults>".to_owned(), |p| p.display().to_string());
    match docmesh_proxy::check::load(path) {
        Ok(c) => {
            println!("{shown}: configuration is valid");
            println!(
                "  outbound: {} service(s), {} explicit listener(s), transparent {}",
                c.outbound.services.len(),
                c.outbound.listeners.len(),
                if c.outbound.transparent {
                    c.outbound.listen.to_string()
                } else {
                    "off".into()
                }
            );
            println!(
                "  inbound: {:?} mode, {} explicit port(s), transparent {}",
                c.inbound.mode,
                c.inbound.ports.len(),
                if c.inbound.transparent {
                    c.inbound.listen.to_string()
                } else {
                    "off".into()
                }
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{shown}: {} problem(s):", problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{shown}: {e}");
            ExitCode::FAILURE
        }
    }
}
