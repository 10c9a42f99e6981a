//! `docmesh-bench [--quick] [--out DIR] [--proxy PATH]`: docmesh against nginx, HAProxy and
//! no proxy at all (issue 9). See docs/benchmark.md.

use std::path::PathBuf;
use std::process::ExitCode;

use docmesh_tests::bench::run::{run, Settings};

const USAGE: &str = "usage: docmesh-bench [--quick] [--out DIR] [--proxy PATH]
  --quick       a few seconds per set-up (smoke run; noisy figures)
  --out DIR     where docmesh-bench.{json,png,txt} go (default target/docmesh-bench)
  --proxy PATH  use this docmesh-proxy binary instead of building the release one";

fn main() -> ExitCode {
    let mut quick = false;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/docmesh-bench");
    let mut proxy = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--quick") => quick = true,
            Some("--out") | Some("--proxy") => {
                let Some(v) = args.next() else {
                    eprintln!(
                        "docmesh-bench: {} needs a value\n{USAGE}",
                        a.to_string_lossy()
                    );
                    return ExitCode::from(2);
                };
                if a == "--out" {
                    out = PathBuf::from(v);
                } else {
                    proxy = Some(PathBuf::from(v));
                }
            }
            Some("-h") | Some("--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!(
                    "docmesh-bench: unknown argument {}\n{USAGE}",
                    a.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    match run(&Settings::new(quick, out, proxy)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docmesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
