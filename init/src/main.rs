//! `docmesh-init`: see the library documentation.

use std::process::ExitCode;

use docmesh_init::cli::{self, CliError};
use docmesh_init::host::SystemHost;

fn main() -> ExitCode {
    let mut stdout = std::io::stdout();
    match cli::run(std::env::args_os(), &SystemHost, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("docmesh-init: error: {e}");
            ExitCode::FAILURE
        }
    }
}
