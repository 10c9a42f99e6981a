//! The targets (issue 20), read off the table's rows against the best peer of each
//! figure (the best of nginx, haproxy and haproxy-h2). Never asserted by a test: the
//! benchmark prints them, met or not.

use super::report::{find, Row};
use super::setups::Kind;

/// The targets (issue 20), each read off the rows against the best peer of that
/// figure: (description, met, detail).
pub fn targets(rows: &[Row]) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let pair = |prefix: &str| {
        let r = find(rows, prefix)?;
        let (k, b) = r.best_peer()?;
        Some((r.of(Kind::Docmesh)?, k.name(), b))
    };
    for role in ["outbound", "inbound"] {
        if let Some((d, k, b)) = pair(&format!("{role} CPU s/10k req (1000/s)")) {
            out.push((
                format!("{role} sidecar CPU s/10k at 1000 req/s <= 0.8 x best peer's"),
                d <= 0.8 * b,
                format!("docmesh {d:.3} s, best peer {k} {b:.3} s ({:.2}x)", d / b),
            ));
        }
    }
    for p in ["p50", "p99"] {
        if let Some((d, k, b)) = pair(&format!("added {p}")) {
            out.push((
                format!("added {p} over direct at 1000 req/s <= best peer's"),
                d <= b,
                format!("docmesh {d:+.0} us, best peer {k} {b:+.0} us"),
            ));
        }
    }
    if let Some((d, k, b)) = pair("throughput") {
        out.push((
            "throughput at 16 connections >= best peer's".into(),
            d >= b,
            format!("docmesh {d:.0} req/s, best peer {k} {b:.0} ({:.2}x)", d / b),
        ));
    }
    if let Some((d, k, b)) = pair("proxy CPU s/10k req (pair, tput)") {
        out.push((
            "CPU s/10k at full load (pair) <= best peer's".into(),
            d <= b,
            format!("docmesh {d:.3} s, best peer {k} {b:.3} s ({:.2}x)", d / b),
        ));
    }
    for role in ["outbound", "inbound"] {
        let dm = |prefix: &str| find(rows, prefix).and_then(|r| r.of(Kind::Docmesh));
        if let Some(v) = dm(&format!("{role} idle RSS")) {
            out.push((
                format!("{role} sidecar idle RSS <= 10 MiB"),
                v <= 10.0,
                format!("{v:.1} MiB"),
            ));
        }
        if let Some(v) = dm(&format!("{role} peak RSS, all")) {
            out.push((
                format!("{role} sidecar RSS under load <= 25 MiB"),
                v <= 25.0,
                format!("{v:.1} MiB (peak over throughput, latency and churn)"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{row, table, Better};

    #[test]
    fn targets_compare_against_the_best_peer() {
        let rows = vec![
            row(
                "throughput, 16 conns (req/s)",
                Better::Higher,
                [
                    Some(1.0),
                    Some(40e3),
                    None,
                    Some(36e3),
                    Some(32e3),
                    Some(45e3),
                ],
            ),
            row(
                "  outbound CPU s/10k req (1000/s)",
                Better::Lower,
                [None, Some(0.40), None, Some(0.50), Some(0.60), Some(0.55)],
            ),
        ];
        let t = targets(&rows);
        let tput = t
            .iter()
            .find(|(n, _, _)| n.starts_with("throughput"))
            .unwrap();
        assert!(!tput.1, "40k is below haproxy-h2's 45k: {tput:?}");
        assert!(tput.2.contains("haproxy-h2"), "{tput:?}");
        let cpu = t
            .iter()
            .find(|(n, _, _)| n.starts_with("outbound"))
            .unwrap();
        assert!(cpu.1, "0.40 <= 0.8 x 0.50: {cpu:?}");
        let table = table(&rows);
        assert!(
            table.contains("haproxy-h2") && table.contains("best peer"),
            "{table}"
        );
    }
}
