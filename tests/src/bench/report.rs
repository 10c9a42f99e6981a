//! Figures of a run: per set-up results, the table (with the best peer of each figure, the
//! ratios docmesh/best peer and docmesh/direct), the targets read off the figures,
//! and the same as JSON.

use serde_json::{json, Value};

use super::setups::Kind;

/// Figures of one proxy process.
#[derive(Debug, Clone, Default)]
pub struct ProcFigures {
    /// `outbound` or `inbound`.
    pub role: String,
    /// Threads (process tree) after start.
    pub threads: usize,
    /// RSS after start, before any load, MiB.
    pub idle_rss_mib: f64,
    /// Highest VmHWM over the throughput runs (reset before each), MiB.
    pub peak_rss_throughput_mib: f64,
    /// VmHWM at the end of the run (everything, connection churn included), MiB.
    pub peak_rss_all_mib: f64,
    /// CPU seconds during the throughput runs.
    pub cpu_throughput_s: f64,
    /// CPU seconds during the open-loop runs.
    pub cpu_latency_s: f64,
    /// Of those, kernel CPU seconds (stime: system calls, TCP, wake-ups).
    pub system_cpu_latency_s: f64,
    /// CPU seconds during the churn runs.
    pub cpu_churn_s: f64,
    /// Context switches during the throughput runs.
    pub ctx_switches_throughput: u64,
    /// Connection-scale test: CPU seconds during the open-loop runs with the idle client
    /// connections held.
    pub cpu_scale_s: f64,
    /// Connection-scale test: highest VmRSS right after the idle connections were opened, MiB.
    pub rss_scale_idle_mib: f64,
    /// Connection-scale test: highest VmHWM during the load with the idle connections held
    /// (reset after opening them), MiB.
    pub peak_rss_scale_mib: f64,
}

/// Everything measured for one set-up, over all rounds.
#[derive(Debug, Clone)]
pub struct SetupFigures {
    /// Which set-up.
    pub kind: Kind,
    /// Requests/s of each throughput round.
    pub rps_rounds: Vec<f64>,
    /// Requests completed in all throughput rounds.
    pub throughput_requests: u64,
    /// Errors in the throughput rounds.
    pub throughput_errors: u64,
    /// CPU seconds wrk used in the throughput rounds.
    pub wrk_cpu_s: f64,
    /// Latencies (µs from intended send time) of all open-loop rounds.
    pub latencies_us: Vec<f64>,
    /// Requests sent in the open-loop rounds (warm-up included).
    pub latency_requests: u64,
    /// Failed open-loop requests.
    pub latency_errors: u64,
    /// Connections the open-loop generator opened.
    pub latency_connections: u64,
    /// New connections/s of each churn round.
    pub churn_rounds: Vec<f64>,
    /// Connections completed in all churn rounds.
    pub churn_connections: u64,
    /// Failed churn connections.
    pub churn_errors: u64,
    /// CPU seconds of the backend thread during the throughput rounds.
    pub backend_cpu_s: f64,
    /// Percent of the machine's CPU left idle during each throughput round.
    pub host_idle_rounds: Vec<f64>,
    /// Connection-scale test: requests sent at the fixed rate while the idle connections
    /// were held (warm-up included).
    pub scale_requests: u64,
    /// Connection-scale test: latencies (µs) of the measured requests.
    pub scale_latencies_us: Vec<f64>,
    /// Connection-scale test: idle connections opened and answered, per round.
    pub scale_opened_rounds: Vec<u64>,
    /// Connection-scale test: idle connections still open after the load, per round.
    pub scale_survived_rounds: Vec<u64>,
    /// Connection-scale test: failed requests (idle-connection set-up and load).
    pub scale_errors: u64,
    /// The proxy processes (empty for direct).
    pub procs: Vec<ProcFigures>,
}

impl SetupFigures {
    /// Empty figures for `kind`.
    pub fn new(kind: Kind) -> Self {
        SetupFigures {
            kind,
            rps_rounds: Vec::new(),
            throughput_requests: 0,
            throughput_errors: 0,
            wrk_cpu_s: 0.0,
            latencies_us: Vec::new(),
            latency_requests: 0,
            latency_errors: 0,
            latency_connections: 0,
            churn_rounds: Vec::new(),
            churn_connections: 0,
            churn_errors: 0,
            backend_cpu_s: 0.0,
            host_idle_rounds: Vec::new(),
            scale_requests: 0,
            scale_latencies_us: Vec::new(),
            scale_opened_rounds: Vec::new(),
            scale_survived_rounds: Vec::new(),
            scale_errors: 0,
            procs: Vec::new(),
        }
    }

    /// Median requests/s over the rounds.
    pub fn rps(&self) -> f64 {
        median(&self.rps_rounds)
    }

    /// Median new connections/s over the rounds.
    pub fn churn(&self) -> f64 {
        median(&self.churn_rounds)
    }

    /// Latency percentile `p` (0..1), µs, nearest rank.
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p)
    }

    pub(crate) fn per_10k(cpu: f64, requests: u64) -> Option<f64> {
        (requests > 0).then(|| cpu / requests as f64 * 1e4)
    }

    /// `seconds` of each proxy process summed over the pair, per 10 000 of `requests`; `None`
    /// for a set-up without proxies (direct) or without requests.
    pub(crate) fn pair_per_10k(
        &self,
        seconds: impl Fn(&ProcFigures) -> f64,
        requests: u64,
    ) -> Option<f64> {
        if self.procs.is_empty() {
            return None;
        }
        Self::per_10k(self.procs.iter().map(seconds).sum(), requests)
    }

    /// Proxy CPU seconds per 10 000 requests in the throughput test, both processes.
    pub fn cpu_per_10k(&self) -> Option<f64> {
        self.pair_per_10k(|p| p.cpu_throughput_s, self.throughput_requests)
    }

    pub(crate) fn proc_fig(&self, role: &str) -> Option<&ProcFigures> {
        self.procs.iter().find(|p| p.role == role)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of unsorted samples (0 when there are none).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Higher is better (throughput).
    Higher,
    /// Lower is better (latency, CPU, memory).
    Lower,
}

/// One line of the table: a figure per set-up (direct, docmesh, docmesh-h2, nginx, haproxy,
/// haproxy-h2).
#[derive(Debug, Clone)]
pub struct Row {
    /// Name of the figure with its unit.
    pub metric: String,
    /// Values in [`Kind::ALL`] order; None where it does not apply.
    pub values: [Option<f64>; Kind::ALL.len()],
    /// Which way is better.
    pub better: Better,
}

impl Row {
    /// The value of `kind`.
    pub fn of(&self, kind: Kind) -> Option<f64> {
        let i = Kind::ALL.iter().position(|k| *k == kind)?;
        self.values[i]
    }

    /// The best of the peers ([`Kind::PEERS`]) that have this figure, and its value.
    pub fn best_peer(&self) -> Option<(Kind, f64)> {
        Kind::PEERS
            .iter()
            .filter_map(|k| Some((*k, self.of(*k)?)))
            .reduce(|a, b| {
                let b_better = match self.better {
                    Better::Higher => b.1 > a.1,
                    Better::Lower => b.1 < a.1,
                };
                if b_better {
                    b
                } else {
                    a
                }
            })
    }

    fn docmesh_over(&self, other: Option<f64>) -> Option<f64> {
        match (self.of(Kind::Docmesh), other) {
            (Some(x), Some(y)) if y != 0.0 => Some(x / y),
            _ => None,
        }
    }

    /// docmesh / best peer, docmesh / direct.
    pub fn ratios(&self) -> [Option<f64>; 2] {
        [
            self.docmesh_over(self.best_peer().map(|(_, v)| v)),
            self.docmesh_over(self.of(Kind::Direct)),
        ]
    }
}

/// A figure of every set-up, in [`Kind::ALL`] order.
pub(crate) fn by_kind(
    all: &[SetupFigures],
    f: impl Fn(&SetupFigures) -> Option<f64>,
) -> [Option<f64>; Kind::ALL.len()] {
    Kind::ALL.map(|k| all.iter().find(|s| s.kind == k).and_then(&f))
}

/// The table rows.
pub fn rows(all: &[SetupFigures]) -> Vec<Row> {
    let direct_p = |p: f64| {
        all.iter()
            .find(|s| s.kind == Kind::Direct)
            .map(|d| d.percentile(p))
    };
    let mut rows = vec![
        Row {
            metric: "throughput, 16 conns (req/s)".into(),
            values: by_kind(all, |s| Some(s.rps())),
            better: Better::Higher,
        },
        Row {
            metric: "new connections/s (churn)".into(),
            values: by_kind(all, |s| Some(s.churn())),
            better: Better::Higher,
        },
    ];
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        rows.push(Row {
            metric: format!("latency {name} @1000/s (us)"),
            values: by_kind(all, |s| Some(s.percentile(p))),
            better: Better::Lower,
        });
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row {
            metric: format!("added {name} over direct (us)"),
            values: by_kind(all, |s| {
                (s.kind != Kind::Direct).then(|| s.percentile(p) - direct_p(p).unwrap_or(0.0))
            }),
            better: Better::Lower,
        });
    }
    rows.push(Row {
        metric: "proxy CPU s/10k req (pair, tput)".into(),
        values: by_kind(all, SetupFigures::cpu_per_10k),
        better: Better::Lower,
    });
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("  {role} CPU s/10k req (tput)"),
            values: by_kind(all, |s| {
                let p = s.proc_fig(role)?;
                SetupFigures::per_10k(p.cpu_throughput_s, s.throughput_requests)
            }),
            better: Better::Lower,
        });
    }
    rows.push(Row {
        metric: "proxy ctx switches/req (pair, tput)".into(),
        values: by_kind(all, |s| {
            if s.procs.is_empty() || s.throughput_requests == 0 {
                return None;
            }
            let n: u64 = s.procs.iter().map(|p| p.ctx_switches_throughput).sum();
            Some(n as f64 / s.throughput_requests as f64)
        }),
        better: Better::Lower,
    });
    rows.push(Row {
        // Idle cores while the closed loop runs: high means requests waited on each other,
        // not on CPU.
        metric: "machine CPU idle, tput (%)".into(),
        values: by_kind(all, |s| {
            (!s.host_idle_rounds.is_empty()).then(|| median(&s.host_idle_rounds))
        }),
        better: Better::Lower,
    });
    rows.push(Row {
        metric: "proxy CPU s/10k req (pair, 1000/s)".into(),
        values: by_kind(all, |s| {
            s.pair_per_10k(|p| p.cpu_latency_s, s.latency_requests)
        }),
        better: Better::Lower,
    });
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("  {role} CPU s/10k req (1000/s)"),
            values: by_kind(all, |s| {
                let p = s.proc_fig(role)?;
                SetupFigures::per_10k(p.cpu_latency_s, s.latency_requests)
            }),
            better: Better::Lower,
        });
    }
    rows.push(Row {
        metric: "  of which kernel (pair, 1000/s)".into(),
        values: by_kind(all, |s| {
            s.pair_per_10k(|p| p.system_cpu_latency_s, s.latency_requests)
        }),
        better: Better::Lower,
    });
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("{role} idle RSS (MiB)"),
            values: by_kind(all, |s| s.proc_fig(role).map(|p| p.idle_rss_mib)),
            better: Better::Lower,
        });
    }
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("{role} peak RSS, tput (MiB)"),
            values: by_kind(all, |s| s.proc_fig(role).map(|p| p.peak_rss_throughput_mib)),
            better: Better::Lower,
        });
    }
    for role in ["outbound", "inbound"] {
        rows.push(Row {
            metric: format!("{role} peak RSS, all (MiB)"),
            values: by_kind(all, |s| s.proc_fig(role).map(|p| p.peak_rss_all_mib)),
            better: Better::Lower,
        });
    }
    super::scale::rows(all, &mut rows);
    rows.push(Row {
        metric: "wrk CPU s/10k req (generator)".into(),
        values: by_kind(all, |s| {
            SetupFigures::per_10k(s.wrk_cpu_s, s.throughput_requests)
        }),
        better: Better::Lower,
    });
    rows.push(Row {
        metric: "backend CPU s/10k req (tput)".into(),
        values: by_kind(all, |s| {
            SetupFigures::per_10k(s.backend_cpu_s, s.throughput_requests)
        }),
        better: Better::Lower,
    });
    rows.push(Row {
        metric: "errors (all tests)".into(),
        values: by_kind(all, |s| {
            Some((s.throughput_errors + s.latency_errors + s.churn_errors) as f64)
        }),
        better: Better::Lower,
    });
    rows
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

/// The table as text: one column per set-up, then the best peer of the figure and the
/// ratios docmesh / best peer and docmesh / direct.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!("{:<44}", "figure");
    for k in Kind::ALL {
        out.push_str(&format!(" {:>10}", k.name()));
    }
    out.push_str(&format!(
        " {:>10} {:>8} {:>9}\n",
        "best peer", "dm/best", "dm/direct"
    ));
    for r in rows {
        let [best, direct] = r.ratios();
        let ratio = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
        out.push_str(&format!("{:<44}", r.metric));
        for v in r.values {
            out.push_str(&format!(" {:>10}", cell(v)));
        }
        out.push_str(&format!(
            " {:>10} {:>8} {:>9}\n",
            r.best_peer().map_or("-", |(k, _)| k.name()),
            ratio(best),
            ratio(direct)
        ));
    }
    out
}

/// The row whose figure name starts with `prefix` (leading spaces ignored).
pub fn find<'a>(rows: &'a [Row], prefix: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.metric.trim_start().starts_with(prefix))
}

/// Everything as JSON: settings, raw per-set-up figures, the table rows and the targets.
pub fn json(all: &[SetupFigures], rows: &[Row], settings: Value) -> Value {
    let setups: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({
                "setup": s.kind.name(),
                "throughput_rps_median": s.rps(),
                "throughput_rps_rounds": s.rps_rounds,
                "throughput_requests": s.throughput_requests,
                "throughput_errors": s.throughput_errors,
                "wrk_cpu_s": s.wrk_cpu_s,
                "latency_us": {
                    "p50": s.percentile(0.5), "p90": s.percentile(0.9),
                    "p99": s.percentile(0.99), "p99.9": s.percentile(0.999),
                    "max": s.percentile(1.0), "samples": s.latencies_us.len(),
                },
                "latency_requests": s.latency_requests,
                "latency_errors": s.latency_errors,
                "latency_connections_opened": s.latency_connections,
                "churn_connections_per_s_median": s.churn(),
                "churn_rounds": s.churn_rounds,
                "churn_connections": s.churn_connections,
                "churn_errors": s.churn_errors,
                "backend_cpu_s": s.backend_cpu_s,
                "host_idle_percent_rounds": s.host_idle_rounds,
                "connection_scale": {
                    "idle_connections_opened_rounds": s.scale_opened_rounds,
                    "idle_connections_still_open_rounds": s.scale_survived_rounds,
                    "requests": s.scale_requests,
                    "errors": s.scale_errors,
                    "latency_us": {
                        "p50": percentile(&s.scale_latencies_us, 0.5),
                        "p99": percentile(&s.scale_latencies_us, 0.99),
                        "samples": s.scale_latencies_us.len(),
                    },
                },
                "processes": s.procs.iter().map(|p| json!({
                    "role": p.role, "threads": p.threads,
                    "idle_rss_mib": p.idle_rss_mib,
                    "peak_rss_throughput_mib": p.peak_rss_throughput_mib,
                    "peak_rss_all_mib": p.peak_rss_all_mib,
                    "cpu_throughput_s": p.cpu_throughput_s,
                    "cpu_latency_s": p.cpu_latency_s,
                    "system_cpu_latency_s": p.system_cpu_latency_s,
                    "cpu_churn_s": p.cpu_churn_s,
                    "context_switches_throughput": p.ctx_switches_throughput,
                    "cpu_connection_scale_s": p.cpu_scale_s,
                    "rss_connection_scale_idle_mib": p.rss_scale_idle_mib,
                    "peak_rss_connection_scale_mib": p.peak_rss_scale_mib,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let table: Vec<Value> = rows
        .iter()
        .map(|r| {
            let [best, direct] = r.ratios();
            let mut row = serde_json::Map::new();
            row.insert("figure".into(), r.metric.trim().into());
            for k in Kind::ALL {
                row.insert(k.name().into(), json!(r.of(k)));
            }
            row.insert(
                "best_peer".into(),
                json!(r.best_peer().map(|(k, _)| k.name())),
            );
            row.insert("docmesh_over_best_peer".into(), json!(best));
            row.insert("docmesh_over_direct".into(), json!(direct));
            for k in Kind::PEERS {
                row.insert(
                    format!("docmesh_over_{}", k.name().replace('-', "_")),
                    json!(r.docmesh_over(r.of(k))),
                );
            }
            Value::Object(row)
        })
        .collect();
    let targets: Vec<Value> = super::targets::targets(rows)
        .into_iter()
        .map(|(t, met, detail)| json!({"target": t, "met": met, "detail": detail}))
        .collect();
    json!({"settings": settings, "setups": setups, "table": table, "targets": targets})
}

/// A row of the table from its parts, for the tests of the table and of the targets.
#[cfg(test)]
pub(crate) fn row(metric: &str, better: Better, values: [Option<f64>; Kind::ALL.len()]) -> Row {
    Row {
        metric: metric.into(),
        values,
        better,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_peer_is_the_best_of_the_three_peers_per_figure() {
        // direct, docmesh, docmesh-h2, nginx, haproxy, haproxy-h2
        let cpu = row(
            "proxy CPU s/10k req (pair, tput)",
            Better::Lower,
            [None, Some(0.30), None, Some(0.34), Some(0.36), Some(0.22)],
        );
        assert_eq!(cpu.best_peer(), Some((Kind::HaproxyH2, 0.22)));
        let [best, direct] = cpu.ratios();
        assert!((best.unwrap() - 0.30 / 0.22).abs() < 1e-9);
        assert_eq!(direct, None);
        let tput = row(
            "throughput, 16 conns (req/s)",
            Better::Higher,
            [Some(150e3), Some(30e3), None, Some(36e3), Some(32e3), None],
        );
        assert_eq!(tput.best_peer(), Some((Kind::Nginx, 36e3)));
        let none = row(
            "x",
            Better::Lower,
            [Some(1.0), Some(1.0), None, None, None, None],
        );
        assert_eq!(none.best_peer(), None);
        assert_eq!(none.ratios()[0], None);
    }
}
