//! The benchmark run: start the backend and the six set-ups, then interleaved rounds (each
//! round runs throughput, open-loop latency, connection churn and the connection-scale test
//! against every set-up, the set-up order rotating per round) so that machine drift hits all
//! set-ups alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use super::backend;
use super::load;
use super::pki::Pki;
use super::procs;
use super::report::{self, ProcFigures, SetupFigures};
use super::scale;
use super::setups::{Kind, Setup};
use super::tools;

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--quick`: a few seconds per set-up (smoke runs; figures are noisy).
    pub quick: bool,
    /// Interleaved rounds.
    pub rounds: u32,
    /// Seconds of each throughput run.
    pub throughput_s: u32,
    /// Connections of the throughput test.
    pub connections: u32,
    /// Open-loop rate, requests/s.
    pub rate: u32,
    /// Unmeasured open-loop warm-up before each latency run.
    pub latency_warmup: Duration,
    /// Measured open-loop time per round.
    pub latency: Duration,
    /// Concurrent clients of the churn test.
    pub churn_concurrency: usize,
    /// Time of each churn run.
    pub churn: Duration,
    /// Idle keep-alive client connections held during the connection-scale test.
    pub idle_connections: usize,
    /// Where the JSON and the PNG go.
    pub out_dir: PathBuf,
    /// A docmesh-proxy binary to use instead of building one.
    pub docmesh: Option<PathBuf>,
    /// Run only these set-ups (`--only`, for profiling); empty means all six.
    pub only: Vec<Kind>,
    /// `--otlp-blackhole`: the docmesh sidecars export spans (every request sampled) to a
    /// collector that accepts connections and never answers (issue 22).
    pub otlp_blackhole: bool,
}

impl Settings {
    /// The full run (about 4.5 minutes) or the quick one (about 25 s).
    pub fn new(quick: bool, out_dir: PathBuf, docmesh: Option<PathBuf>) -> Settings {
        let (rounds, tput, lat, churn) = if quick {
            (1, 2, 2.0, 1.0)
        } else {
            (3, 7, 10.0, 3.0)
        };
        Settings {
            quick,
            rounds,
            throughput_s: tput,
            connections: 16,
            rate: 1000,
            latency_warmup: Duration::from_secs_f64(if quick { 0.5 } else { 1.0 }),
            latency: Duration::from_secs_f64(lat),
            churn_concurrency: 16,
            churn: Duration::from_secs_f64(churn),
            idle_connections: 10_000,
            out_dir,
            docmesh,
            only: Vec::new(),
            otlp_blackhole: false,
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds of each proxy process of `s` now.
pub(crate) fn cpu_now(s: &Setup) -> Vec<f64> {
    per_proxy(s, procs::tree_cpu_seconds)
}

/// Kernel CPU seconds (stime) of each proxy process of `s` now.
fn system_cpu_now(s: &Setup) -> Vec<f64> {
    per_proxy(s, procs::tree_system_cpu_seconds)
}

fn per_proxy(s: &Setup, read: fn(i32) -> f64) -> Vec<f64> {
    s.procs.iter().map(|p| read(p.pid())).collect()
}

/// The order of the interleaved rounds: each round visits every set-up once, starting one
/// set-up later than the round before, so that drift of the machine hits all alike.
fn rotation(rounds: u32, setups: usize) -> impl Iterator<Item = (u32, usize)> {
    (0..rounds)
        .flat_map(move |round| (0..setups).map(move |i| (round, (i + round as usize) % setups)))
}

pub(crate) fn cpu_delta(s: &Setup, before: &[f64]) -> Vec<f64> {
    deltas(&cpu_now(s), before)
}

fn deltas(now: &[f64], before: &[f64]) -> Vec<f64> {
    now.iter()
        .zip(before)
        .map(|(a, b)| (a - b).max(0.0))
        .collect()
}

fn check_with_retries(s: &Setup) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match load::check_once(s.entry) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| {
                    format!("{} does not answer 200 with the 1 KiB body", s.kind.name())
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs everything, prints the table and writes `docmesh-bench.json` and `docmesh-bench.png`
/// into `settings.out_dir`.
pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_start = loadavg();
    let tools = tools::all(settings.docmesh.clone())?;
    // Each process holds the idle connections once (the benchmark's clients, the
    // client-side proxy), plus its other descriptors; HAProxy wants two per `maxconn`.
    let need = settings.idle_connections as u64 + 1024;
    let nofile = scale::raise_nofile_limit(2 * need + 4096);
    let idle_conns = scale::fitting(settings.idle_connections, nofile);
    if idle_conns < settings.idle_connections {
        eprintln!(
            "docmesh-bench: the open-file limit {nofile} cannot be raised (no CAP_SYS_RESOURCE): \
             the connection-scale test holds {idle_conns} idle connections instead of {} \
             (HAProxy needs two descriptors per connection)",
            settings.idle_connections
        );
    }
    if nofile < need {
        anyhow::bail!(
            "the open-file limit is {nofile}, too low for {} idle connections: RLIMIT_NOFILE \
             must allow at least {need} (raise the hard limit with `ulimit -Hn {need}` as \
             root, then run the benchmark again)",
            settings.idle_connections
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("docmesh-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let pki = Pki::create(dir.path())?;
    let churn_tls = pki.churn_client_config()?;
    let be = backend::start().context("cannot start the backend")?;

    // A collector that never answers: the listener is bound (the kernel completes the
    // handshakes) but never accepts, so every export waits for its timeout.
    let blackhole = settings
        .otlp_blackhole
        .then(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .transpose()
        .context("cannot bind the OTLP black hole")?;
    let docmesh_env: Vec<(String, String)> = match &blackhole {
        Some(l) => {
            let url = format!("http://{}", l.local_addr()?);
            eprintln!("docmesh-bench: docmesh sidecars export every span to a black hole at {url}");
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url)]
        }
        None => Vec::new(),
    };
    let mut setups = Vec::new();
    for kind in Kind::ALL {
        if !settings.only.is_empty() && !settings.only.contains(&kind) {
            continue;
        }
        let s = Setup::start_with_env(
            kind,
            &tools,
            &pki,
            dir.path(),
            be.addr,
            idle_conns,
            &docmesh_env,
        )
        .with_context(|| format!("cannot start the {} set-up", kind.name()))?;
        check_with_retries(&s)?;
        eprintln!(
            "docmesh-bench: [{:>5.1}s] {} set-up ready",
            started.elapsed().as_secs_f64(),
            kind.name()
        );
        setups.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut figs: Vec<SetupFigures> = setups
        .iter()
        .map(|s| {
            let mut f = SetupFigures::new(s.kind);
            f.procs = s
                .procs
                .iter()
                .map(|p| ProcFigures {
                    role: p.role.into(),
                    threads: procs::threads(p.pid()),
                    idle_rss_mib: procs::rss_mib(p.pid()),
                    ..ProcFigures::default()
                })
                .collect();
            f
        })
        .collect();
    for f in &figs {
        for p in &f.procs {
            eprintln!(
                "docmesh-bench: {} {}: {} thread(s), idle RSS {:.1} MiB",
                f.kind.name(),
                p.role,
                p.threads,
                p.idle_rss_mib
            );
        }
    }

    // Warm-up (not measured): connection pools, TLS sessions, allocator arenas.
    for s in &setups {
        load::wrk(&tools.wrk, s.entry, settings.connections, 1)?;
    }

    for (round, idx) in rotation(settings.rounds, setups.len()) {
        let s = &mut setups[idx];
        let f = &mut figs[idx];
        let name = s.kind.name();

        // Throughput (peak RSS reset first, so it is the peak of this test).
        for p in &s.procs {
            procs::reset_peak(p.pid());
        }
        let cpu0 = cpu_now(s);
        let cs0: Vec<u64> = s
            .procs
            .iter()
            .map(|p| procs::context_switches(p.pid()))
            .collect();
        let be0 = procs::thread_cpu_seconds(be.tid);
        let host0 = procs::host_cpu_ticks();
        let t = load::wrk(
            &tools.wrk,
            s.entry,
            settings.connections,
            settings.throughput_s,
        )
        .with_context(|| format!("throughput run against {name}"))?;
        f.backend_cpu_s += procs::thread_cpu_seconds(be.tid) - be0;
        for ((pf, p), d) in f.procs.iter_mut().zip(&s.procs).zip(cpu_delta(s, &cpu0)) {
            pf.cpu_throughput_s += d;

            pf.peak_rss_throughput_mib =
                pf.peak_rss_throughput_mib.max(procs::peak_rss_mib(p.pid()));
        }
        for ((pf, p), c0) in f.procs.iter_mut().zip(&s.procs).zip(cs0) {
            pf.ctx_switches_throughput += procs::context_switches(p.pid()).saturating_sub(c0);
        }
        if let Some(idle) = host0
            .zip(procs::host_cpu_ticks())
            .and_then(|(a, b)| procs::idle_percent(a, b))
        {
            f.host_idle_rounds.push(idle);
        }
        f.rps_rounds.push(t.rps);
        f.throughput_requests += t.requests;
        f.throughput_errors += t.errors;
        f.wrk_cpu_s += t.generator_cpu_s;
        eprintln!(
            "docmesh-bench: [{:>5.1}s] round {}/{} {name:<8} throughput {:>8.0} req/s ({} errors)",
            started.elapsed().as_secs_f64(),
            round + 1,
            settings.rounds,
            t.rps,
            t.errors
        );

        // Latency at a fixed rate, open loop.
        let cpu0 = cpu_now(s);
        let sys0 = system_cpu_now(s);
        let l = load::open_loop(
            s.entry,
            settings.rate,
            settings.latency_warmup,
            settings.latency,
        )
        .with_context(|| format!("open-loop run against {name}"))?;
        for (pf, d) in f.procs.iter_mut().zip(cpu_delta(s, &cpu0)) {
            pf.cpu_latency_s += d;
        }
        for (pf, d) in f.procs.iter_mut().zip(deltas(&system_cpu_now(s), &sys0)) {
            pf.system_cpu_latency_s += d;
        }
        let sent = ((settings.latency_warmup + settings.latency).as_secs_f64()
            * f64::from(settings.rate)) as u64;
        f.latency_requests += sent;
        f.latency_errors += l.errors;
        f.latency_connections += l.connections;
        eprintln!(
            "docmesh-bench: [{:>5.1}s] round {}/{} {name:<8} latency p50 {:>6.0} us p99 {:>6.0} us ({} errors)",
            started.elapsed().as_secs_f64(),
            round + 1,
            settings.rounds,
            report::percentile(&l.latencies_us, 0.5),
            report::percentile(&l.latencies_us, 0.99),
            l.errors
        );
        f.latencies_us.extend(l.latencies_us);

        // New connections per second: a fresh (m)TLS connection per request.
        let cpu0 = cpu_now(s);
        let (target, tls) = match s.mtls {
            Some(a) => (a, Some(churn_tls.clone())),
            None => (s.entry, None),
        };
        let c = load::churn(target, tls, settings.churn_concurrency, settings.churn)
            .with_context(|| format!("churn run against {name}"))?;
        for ((pf, p), d) in f.procs.iter_mut().zip(&s.procs).zip(cpu_delta(s, &cpu0)) {
            pf.cpu_churn_s += d;
            pf.peak_rss_all_mib = pf.peak_rss_all_mib.max(procs::peak_rss_mib(p.pid()));
        }
        let per_s = c.connections as f64 / c.seconds.max(1e-9);
        f.churn_rounds.push(per_s);
        f.churn_connections += c.connections;
        f.churn_errors += c.errors;
        eprintln!(
            "docmesh-bench: [{:>5.1}s] round {}/{} {name:<8} churn {:>8.0} conn/s ({} errors)",
            started.elapsed().as_secs_f64(),
            round + 1,
            settings.rounds,
            per_s,
            c.errors
        );
        s.check_alive()?;
    }

    // The connection-scale test last, after every round of the others: a proxy's memory after
    // thousands of connections is not returned at once (allocators keep freed pages), so run
    // earlier it would raise the peak RSS the throughput figures report.
    for (round, idx) in rotation(settings.rounds, setups.len()) {
        let s = &mut setups[idx];
        let f = &mut figs[idx];
        let name = s.kind.name();
        if !s.procs.is_empty() {
            scale::run(settings, idle_conns, s, f)
                .with_context(|| format!("connection-scale run against {name}"))?;
            eprintln!(
                "docmesh-bench: [{:>5.1}s] round {}/{} {name:<8} {} idle conns held, {} still open, outbound RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                round + 1,
                settings.rounds,
                f.scale_opened_rounds.last().copied().unwrap_or(0),
                f.scale_survived_rounds.last().copied().unwrap_or(0),
                f.procs.first().map_or(0.0, |p| p.rss_scale_idle_mib),
            );
        }
        s.check_alive()?;
    }

    let rows = report::rows(&figs);
    let mut out = String::new();
    out.push_str(&format!(
        "docmesh-bench ({} run, {} round(s); load average {} at start, {} at end; {} cores)\n\n",
        if settings.quick { "quick" } else { "full" },
        settings.rounds,
        load_start,
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    out.push_str(&format!(
        "connection scale: {idle_conns} idle keep-alive client connections per pair \
         (open-file limit {nofile})\n\n"
    ));
    out.push_str(&report::table(&rows));
    out.push_str(
        "\ntargets (issue 20; best peer = best of nginx, haproxy, haproxy-h2 per figure):\n",
    );
    for (t, met, detail) in super::targets::targets(&rows) {
        out.push_str(&format!(
            "  [{}] {t}: {detail}\n",
            if met { "met" } else { "NOT met" }
        ));
    }
    println!("{out}");

    let settings_json = json!({
        "quick": settings.quick,
        "rounds": settings.rounds,
        "throughput_seconds_per_round": settings.throughput_s,
        "throughput_connections": settings.connections,
        "latency_rate_per_s": settings.rate,
        "latency_seconds_per_round": settings.latency.as_secs_f64(),
        "latency_warmup_seconds": settings.latency_warmup.as_secs_f64(),
        "churn_concurrency": settings.churn_concurrency,
        "churn_seconds_per_round": settings.churn.as_secs_f64(),
        "idle_connections_wanted": settings.idle_connections,
        "idle_connections": idle_conns,
        "open_file_limit": nofile,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average_start": load_start,
        "load_average_end": loadavg(),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "versions": {
            "nginx": tools::version(&tools.nginx, "-v"),
            "haproxy": tools::version(&tools.haproxy, "-v"),
            "wrk": tools::version(&tools.wrk, "-v"),
        },
        "tools": tools.notes,
        "method": {
            "backend": "hyper HTTP/1.1 server on a dedicated thread of the benchmark process, 1 KiB body, keep-alive",
            "throughput": "wrk -t1 -c16 (closed loop, keep-alive), median of rounds",
            "latency": "own open-loop generator: requests released at fixed intervals by a dispatcher thread, latency from the intended send time",
            "connection_scale": "per pair: 10 000 (or as many as the open-file limit allows HAProxy) keep-alive client connections to the client-side proxy (one request each, then idle), RSS with them held, then the open-loop load at 1000 req/s with them held: CPU per 10k requests, peak RSS (VmHWM reset after opening), latency; connections the proxy closed are counted",
            "best_peer": "per figure the best of nginx, haproxy (HTTP/1.1 mesh hop) and haproxy-h2 (alpn h2 on the mesh hop); ratios are docmesh / best peer",
            "churn": "own client, 16 concurrent, full TLS 1.3 mTLS handshake (no resumption, X25519, ECDSA P-256) to the server-side proxy per request, Connection: close; direct = plain TCP to the backend",
            "worker_threads": "docmesh TOKIO_WORKER_THREADS=1 (single-threaded runtime), nginx worker_processes 1, haproxy and haproxy-h2 nbthread 1",
            "cpu": "utime+stime from /proc/PID/stat over the process tree (system_cpu_latency_s: stime alone)",
            "rss": "VmRSS after start (idle), VmHWM reset before each throughput run (tput), VmHWM at the end of each round (all)",
        },
    });
    std::fs::create_dir_all(&settings.out_dir)
        .with_context(|| format!("cannot create {}", settings.out_dir.display()))?;
    let json_path = settings.out_dir.join("docmesh-bench.json");
    let value = report::json(&figs, &rows, settings_json);
    std::fs::write(&json_path, serde_json::to_string_pretty(&value)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(settings.out_dir.join("docmesh-bench.txt"), &out)
        .with_context(|| format!("cannot write into {}", settings.out_dir.display()))?;
    eprintln!("docmesh-bench: wrote {}", json_path.display());
    let png_path = settings.out_dir.join("docmesh-bench.png");
    let subtitle = format!(
        "{} run, {} round(s), {} cores",
        if settings.quick { "quick" } else { "full" },
        settings.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    super::chart::draw(&png_path, &figs, &subtitle)?;
    eprintln!("docmesh-bench: wrote {}", png_path.display());
    drop(setups);
    eprintln!(
        "docmesh-bench: [{:>5.1}s] done",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
