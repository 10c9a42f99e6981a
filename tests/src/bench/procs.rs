//! Process figures from /proc, which the measured programs cannot influence: CPU time
//! (utime+stime, summed over a process and its descendants, e.g. nginx's master and worker),
//! resident memory now (VmRSS) and at its peak (VmHWM, resettable through clear_refs).

use std::path::Path;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on Linux for decades).
const TICKS: f64 = 100.0;

fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; everything after the last ')' is regular.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

// Indices of the time fields after the command name's ')' (state is index 0).
const UTIME: usize = 11;
const STIME: usize = 12;
const CUTIME: usize = 13;
const CSTIME: usize = 14;

/// The sum of the clock-tick `fields` of the stat file at `path`, in seconds; 0 when the
/// process is gone or the file cannot be read.
fn stat_seconds(path: &str, fields: &[usize]) -> f64 {
    stat_fields(Path::new(path))
        .and_then(|f| {
            fields
                .iter()
                .map(|&i| f.get(i)?.parse::<u64>().ok())
                .sum::<Option<u64>>()
        })
        .map_or(0.0, |ticks| ticks as f64 / TICKS)
}

/// CPU seconds (user + system) used so far by `pid` alone; 0 when it is gone.
pub fn cpu_seconds(pid: i32) -> f64 {
    stat_seconds(&format!("/proc/{pid}/stat"), &[UTIME, STIME])
}

/// Kernel CPU seconds (stime) used so far by `pid` alone; 0 when it is gone.
pub fn system_cpu_seconds(pid: i32) -> f64 {
    stat_seconds(&format!("/proc/{pid}/stat"), &[STIME])
}

/// CPU seconds used so far by one thread of this process.
pub fn thread_cpu_seconds(tid: i32) -> f64 {
    stat_seconds(&format!("/proc/self/task/{tid}/stat"), &[UTIME, STIME])
}

/// CPU seconds of this process's waited-for children (cutime + cstime), e.g. wrk runs.
pub fn children_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", &[CUTIME, CSTIME])
}

/// `pid` and all its descendants (via /proc/PID/task/*/children).
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

/// CPU seconds of `pid` and its descendants.
pub fn tree_cpu_seconds(pid: i32) -> f64 {
    tree(pid).into_iter().map(cpu_seconds).sum()
}

/// Kernel CPU seconds (stime) of `pid` and its descendants.
pub fn tree_system_cpu_seconds(pid: i32) -> f64 {
    tree(pid).into_iter().map(system_cpu_seconds).sum()
}

fn status_kb(pid: i32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sum of `key` (a kB field of /proc/PID/status) over `pid` and its descendants.
fn tree_status_kb(pid: i32, key: &str) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kb(p, key))
        .sum()
}

/// Resident memory now, MiB, over the process tree.
pub fn rss_mib(pid: i32) -> f64 {
    tree_status_kb(pid, "VmRSS:") as f64 / 1024.0
}

/// Peak resident memory since start or the last [`reset_peak`], MiB, over the process tree.
pub fn peak_rss_mib(pid: i32) -> f64 {
    tree_status_kb(pid, "VmHWM:") as f64 / 1024.0
}

/// Resets VmHWM to the current RSS for the process tree (`echo 5 > clear_refs`; allowed for
/// our own children without root). Returns false where the kernel refused.
pub fn reset_peak(pid: i32) -> bool {
    tree(pid)
        .into_iter()
        .all(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Number of threads over the process tree (to show each proxy runs one worker thread).
pub fn threads(pid: i32) -> usize {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .map(|d| d.count())
        .sum()
}

/// Context switches (voluntary + involuntary) so far, over every thread of the process tree:
/// a proxy that hands work between threads or sleeps per request shows many per request.
pub fn context_switches(pid: i32) -> u64 {
    let mut n = 0;
    for p in tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            n += s
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    n
}

/// The machine's CPU time so far from /proc/stat, in ticks: (idle + iowait, all). Two
/// readings around a test give the share of the cores nobody used, which tells a set-up
/// that is short of CPU from one whose requests wait on each other (a closed loop that
/// moves in waves leaves cores idle).
pub fn host_cpu_ticks() -> Option<(u64, u64)> {
    parse_host_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// [`host_cpu_ticks`] of a /proc/stat text: the `cpu` line's user, nice, system, idle,
/// iowait, irq, softirq and steal fields.
fn parse_host_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 8).then(|| (f[3] + f[4], f.iter().sum()))
}

/// Percent of the machine's CPU left idle between two [`host_cpu_ticks`] readings.
pub fn idle_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let idle = after.0.checked_sub(before.0)?;
    (total > 0).then(|| 100.0 * idle as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cpu_reads_the_aggregate_line_and_idle_is_a_share() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_host_cpu(stat), Some((820, 980)));
        assert_eq!(parse_host_cpu("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_host_cpu("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(idle_percent((820, 980), (870, 1180)), Some(25.0));
        assert_eq!(idle_percent((820, 980), (820, 980)), None);
        assert!(host_cpu_ticks().is_some(), "this machine has /proc/stat");
    }

    #[test]
    fn system_cpu_is_the_kernel_part_of_the_total() {
        // Work that is almost all kernel time: small writes to /dev/null, until the kernel
        // has charged at least 3 ticks (30 ms) to this process, or give up after 5 s.
        use std::io::Write;
        let me = std::process::id() as i32;
        let (sys0, all0) = (system_cpu_seconds(me), cpu_seconds(me));
        let mut null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let start = std::time::Instant::now();
        while system_cpu_seconds(me) - sys0 < 0.03 && start.elapsed().as_secs() < 5 {
            for _ in 0..10_000 {
                null.write_all(b"x").unwrap();
            }
        }
        let (sys, all) = (system_cpu_seconds(me) - sys0, cpu_seconds(me) - all0);
        assert!(sys >= 0.03, "stime did not grow: {sys} s");
        assert!(sys <= all + 1e-9, "stime {sys} s above utime+stime {all} s");
        assert_eq!(system_cpu_seconds(-1), 0.0);
    }
}
