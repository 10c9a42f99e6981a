//! The connection-scale test (issue 20): 10 000 idle keep-alive client connections held
//! open on a pair's client side while the fixed-rate load runs, for the resident memory and
//! CPU a proxy pays per idle connection. Each connection is opened and served one request
//! (so the proxy holds a real HTTP connection, not a bare socket), then left idle; at the
//! end the ones the proxy closed are counted, and all are reset (no TIME_WAIT left behind).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::load::{self, check_response, REQUEST_TIMEOUT};
use super::procs;
use super::report::{by_kind, percentile, Better, Row, SetupFigures};
use super::run::{cpu_delta, cpu_now, Settings};
use super::setups::Setup;

/// Idle keep-alive client connections held open for the connection-scale test.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: Vec<std::net::TcpStream>,
    /// Connections that could not be opened or did not answer their request.
    pub errors: u64,
}

impl IdleConns {
    /// Connections opened and answered.
    pub fn opened(&self) -> usize {
        self.conns.len()
    }

    /// How many of them the proxy has not closed (a non-blocking peek sees no EOF or error).
    pub fn still_open(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| {
                if c.set_nonblocking(true).is_err() {
                    return false;
                }
                let mut b = [0u8; 1];
                matches!(c.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    }
}

impl Drop for IdleConns {
    fn drop(&mut self) {
        // Reset instead of FIN: 10 000 client sockets in TIME_WAIT per set-up and round would
        // eat the ephemeral ports of the next rounds.
        for c in &self.conns {
            let _ = socket2::SockRef::from(c).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body from a blocking stream and checks
/// it is 200 with the backend's body; the connection stays usable (keep-alive).
fn read_one_response(s: &mut std::net::TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the whole answer");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("answer without Content-Length")?;
        if buf.len() >= end + 4 + len {
            return check_response(&buf);
        }
    }
}

/// Opens `n` keep-alive connections to `addr` from `threads` threads, sends one request on
/// each (so each is a real HTTP connection the proxy has served) and keeps them open, idle.
pub fn hold_idle(addr: SocketAddr, n: usize, threads: usize) -> IdleConns {
    let per = n.div_ceil(threads.max(1));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let count = per.min(n.saturating_sub(t * per));
            std::thread::spawn(move || {
                let mut out = IdleConns::default();
                for _ in 0..count {
                    let one = || -> anyhow::Result<std::net::TcpStream> {
                        let mut s =
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
                        s.write_all(b"GET / HTTP/1.1\r\nHost: documentserver\r\n\r\n")?;
                        read_one_response(&mut s)?;
                        Ok(s)
                    };
                    match one() {
                        Ok(s) => out.conns.push(s),
                        Err(_) => out.errors += 1,
                    }
                }
                out
            })
        })
        .collect();
    let mut all = IdleConns::default();
    for h in handles {
        match h.join() {
            Ok(mut part) => {
                all.errors += part.errors;
                all.conns.append(&mut part.conns);
            }
            Err(_) => all.errors += per as u64,
        }
    }
    all
}

/// The idle connections the test can hold with `nofile` descriptors per process: `wanted`,
/// or fewer where HAProxy's two descriptors per connection (plus 1000 connections for the
/// load and some for itself) would not fit.
pub fn fitting(wanted: usize, nofile: u64) -> usize {
    let per_haproxy = (nofile.saturating_sub(64) / 2).saturating_sub(1000);
    wanted.min(usize::try_from(per_haproxy).unwrap_or(usize::MAX))
}

/// Raises this process's open-file limit (inherited by the proxies the benchmark starts:
/// 10 000 idle client connections need more than the usual 1024) to at least `want` where
/// allowed: the soft limit up to the hard one, the hard one too when we are root. Returns the
/// soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The connection-scale test of one pair: open `idle_conns` keep-alive client
/// connections to its client side (one request each, then idle), then the fixed-rate load;
/// RSS with the connections held, peak RSS and CPU during the load, and how many of the idle
/// connections were still open at the end.
pub fn run(
    settings: &Settings,
    idle_conns: usize,
    s: &Setup,
    f: &mut SetupFigures,
) -> anyhow::Result<()> {
    let idle = hold_idle(s.entry, idle_conns, 32);
    std::thread::sleep(Duration::from_millis(200));
    for (pf, p) in f.procs.iter_mut().zip(&s.procs) {
        pf.rss_scale_idle_mib = pf.rss_scale_idle_mib.max(procs::rss_mib(p.pid()));
        procs::reset_peak(p.pid());
    }
    let cpu0 = cpu_now(s);
    let l = load::open_loop(
        s.entry,
        settings.rate,
        settings.latency_warmup,
        settings.latency,
    )?;
    for ((pf, p), d) in f.procs.iter_mut().zip(&s.procs).zip(cpu_delta(s, &cpu0)) {
        pf.cpu_scale_s += d;
        pf.peak_rss_scale_mib = pf.peak_rss_scale_mib.max(procs::peak_rss_mib(p.pid()));
    }
    f.scale_requests += ((settings.latency_warmup + settings.latency).as_secs_f64()
        * f64::from(settings.rate)) as u64;
    f.scale_errors += l.errors + idle.errors;
    f.scale_latencies_us.extend(l.latencies_us);
    f.scale_opened_rounds.push(idle.opened() as u64);
    f.scale_survived_rounds.push(idle.still_open() as u64);
    Ok(())
}

/// The connection-scale figure: the idle keep-alive client connections (10 000 where the
/// open-file limit allows) held open on the client-side proxy while the fixed-rate load runs.
pub fn rows(all: &[SetupFigures], rows: &mut Vec<Row>) {
    let pairs_only = |s: &SetupFigures| !s.procs.is_empty() && !s.scale_opened_rounds.is_empty();
    rows.push(Row {
        metric: "idle conns held open (min of rounds)".into(),
        values: by_kind(all, |s| {
            pairs_only(s).then(|| s.scale_survived_rounds.iter().copied().min().unwrap_or(0) as f64)
        }),
        better: Better::Higher,
    });
    rows.push(Row {
        metric: "proxy CPU s/10k req (pair, idle conns)".into(),
        values: by_kind(all, |s| {
            pairs_only(s)
                .then(|| s.pair_per_10k(|p| p.cpu_scale_s, s.scale_requests))
                .flatten()
        }),
        better: Better::Lower,
    });
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("  {role} CPU s/10k req (idle conns)"),
            values: by_kind(all, |s| {
                let p = s.proc_fig(role)?;
                pairs_only(s)
                    .then(|| SetupFigures::per_10k(p.cpu_scale_s, s.scale_requests))
                    .flatten()
            }),
            better: Better::Lower,
        });
    }
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("{role} RSS, idle conns held (MiB)"),
            values: by_kind(all, |s| {
                pairs_only(s).then_some(s.proc_fig(role)?.rss_scale_idle_mib)
            }),
            better: Better::Lower,
        });
        rows.push(Row {
            metric: format!("{role} peak RSS, idle conns+1000/s (MiB)"),
            values: by_kind(all, |s| {
                pairs_only(s).then_some(s.proc_fig(role)?.peak_rss_scale_mib)
            }),
            better: Better::Lower,
        });
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row {
            metric: format!("latency {name} @1000/s, idle conns (us)"),
            values: by_kind(all, |s| {
                pairs_only(s).then(|| percentile(&s.scale_latencies_us, p))
            }),
            better: Better::Lower,
        });
    }
}
