//! `docmesh-certs`: development CA and X.509-SVID tool for docmesh.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
