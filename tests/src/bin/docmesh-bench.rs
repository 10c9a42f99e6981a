//! `docmesh-bench [--quick] [--out DIR] [--proxy PATH] [--only NAME] [--throughput-seconds N] [--rounds N] [--otlp-blackhole]`:
//! docmesh against nginx, HAProxy (HTTP/1.1 and HTTP/2 mesh hop) and no proxy at all (issues 9
//! and 20). See docs/benchmark.md.

use std::path::PathBuf;
use std::process::ExitCode;

use docmesh_tests::bench::run::{run, Settings};
use docmesh_tests::bench::setups::Kind;

const USAGE: &str = "usage: docmesh-bench [--quick] [--out DIR] [--proxy PATH] [--only NAME] [--throughput-seconds N] [--rounds N] [--otlp-blackhole]
  --quick       a few seconds per set-up (smoke run; noisy figures)
  --out DIR     where docmesh-bench.{json,png,txt} go (default target/docmesh-bench)
  --proxy PATH  use this docmesh-proxy binary instead of building the release one
  --only NAME   run only this set-up (direct, docmesh, docmesh-h2, nginx, haproxy,
                haproxy-h2;
                repeatable), e.g. to profile one proxy with perf
  --throughput-seconds N   length of each throughput run
  --rounds N    number of interleaved rounds (full run: 3, quick: 1)
  --otlp-blackhole  docmesh sidecars export every span over OTLP to a collector that never
                answers (compare with a run without it)";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("docmesh-bench: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/docmesh-bench");
    let mut proxy = None;
    let mut only = Vec::new();
    let mut tput_s = None;
    let mut rounds = None;
    let mut otlp_blackhole = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--otlp-blackhole" => otlp_blackhole = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            flag @ ("--out" | "--proxy" | "--only" | "--throughput-seconds" | "--rounds") => {
                let Some(v) = args.next() else {
                    return usage_error(&format!("{flag} needs a value"));
                };
                match flag {
                    "--out" => out = PathBuf::from(v),
                    "--proxy" => proxy = Some(PathBuf::from(v)),
                    "--only" => match Kind::ALL.iter().find(|k| v == k.name()) {
                        Some(k) => only.push(*k),
                        None => return usage_error(&format!("unknown set-up {v:?}")),
                    },
                    _ => match v.parse::<u32>() {
                        Ok(n) if n > 0 && flag == "--rounds" => rounds = Some(n),
                        Ok(n) if n > 0 => tput_s = Some(n),
                        _ => return usage_error(&format!("{flag} needs a positive number")),
                    },
                }
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let mut settings = Settings::new(quick, out, proxy);
    settings.only = only;
    settings.otlp_blackhole = otlp_blackhole;
    if let Some(n) = tput_s {
        settings.throughput_s = n;
    }
    if let Some(n) = rounds {
        settings.rounds = n;
    }
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docmesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
