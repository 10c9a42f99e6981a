//! `docmesh-netns-proxy CONFIG`: the docmesh sidecar exactly as `docmesh-proxy run --config
//! CONFIG` runs it (same library calls), built as part of the tests crate so the
//! network-namespace tests always run the current proxy code as a real process (as UID 1337
//! via `setpriv`), never a stale binary from another build.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: docmesh-netns-proxy CONFIG.toml");
        return ExitCode::from(2);
    };
    docmesh_proxy::app::init_logging();
    let config = match docmesh_proxy::check::load(Some(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("docmesh-netns-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match docmesh_proxy::app::run_blocking_from(config, Some(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docmesh-netns-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
