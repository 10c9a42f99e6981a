//! `renew`: re-issue due SVIDs once, or keep doing it (`--watch`) until SIGTERM/SIGINT.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use docmesh_certs::ca::CertificateAuthority;
use docmesh_certs::renew::{self, Outcome, RenewPolicy};
use docmesh_certs::svid::fmt_unix;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use time::OffsetDateTime;

use super::{fmt_time, CliError};

/// How often the CA-expiry warning is repeated in `--watch` mode.
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// One pass over `dir`: renews what is due. Returns how many SVIDs failed.
fn pass(
    ca_dir: &Path,
    dir: &Path,
    policy: &RenewPolicy,
    summary: bool,
    warn: bool,
) -> Result<usize, CliError> {
    let ca = CertificateAuthority::load_dir(ca_dir, None)?;
    let now = OffsetDateTime::now_utc();
    if warn {
        if let Some(w) = renew::ca_expiry_warning(&ca, ca_dir, now) {
            eprintln!("warning: {w}");
        }
    }
    let bundle = renew::ca_bundle_pem(ca_dir, &ca)?;
    let results = renew::renew_all(&ca, &bundle, dir, policy, now)?;
    let (mut renewed, mut failed) = (0, 0);
    let mut next: Option<(i64, String)> = None;
    for (path, result) in &results {
        match result {
            Ok(Outcome::Renewed {
                id,
                not_after,
                ttl,
                reason,
                capped,
                ..
            }) => {
                renewed += 1;
                let cap = if *capped {
                    ", shortened to end with the CA"
                } else {
                    ""
                };
                println!(
                    "renewed {id} in {}: {reason}; new SVID valid {} until {}{cap}",
                    path.display(),
                    humantime::format_duration(*ttl),
                    fmt_time(*not_after)
                );
            }
            Ok(Outcome::NotDue { svid, renew_after }) => {
                if next.as_ref().is_none_or(|(t, _)| renew_after < t) {
                    next = Some((*renew_after, svid.id.to_string()));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    if summary {
        let next = next
            .map(|(t, id)| format!("; next renewal {id} after {}", fmt_unix(t)))
            .unwrap_or_default();
        println!(
            "checked {} SVID(s) under {}: {renewed} renewed, {} up to date, {failed} failed{next}",
            results.len(),
            dir.display(),
            results.len() - renewed - failed
        );
    }
    Ok(failed)
}

/// `renew` once: exit status 1 if any SVID could not be renewed.
pub(crate) fn once(ca_dir: &Path, dir: &Path, policy: &RenewPolicy) -> Result<(), CliError> {
    match pass(ca_dir, dir, policy, true, true)? {
        0 => Ok(()),
        n => Err(CliError::Failed(format!(
            "{n} SVID(s) could not be renewed"
        ))),
    }
}

/// `renew --watch`: a pass every `interval` until SIGTERM or SIGINT (then exit 0). Errors of
/// one pass are printed and retried at the next one.
pub(crate) fn watch(
    ca_dir: &Path,
    dir: &Path,
    policy: &RenewPolicy,
    interval: Duration,
) -> Result<(), CliError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // Blocked signals stay pending and are read from the signalfd (the process is
    // single-threaded, so blocking them in this thread blocks them for the process).
    signals
        .thread_block()
        .map_err(|e| CliError::Signal(e.to_string()))?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| CliError::Signal(e.to_string()))?;
    println!(
        "watching {} every {} (renewing at {:.0}% of each SVID's lifetime)",
        dir.display(),
        humantime::format_duration(interval),
        policy.renew_at * 100.0
    );
    let mut last_warning: Option<Instant> = None;
    let mut first = true;
    loop {
        let warn = last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        match pass(ca_dir, dir, policy, first, warn) {
            Ok(_) => {
                if warn {
                    last_warning = Some(Instant::now());
                }
            }
            Err(e) => eprintln!(
                "error: {e} (retrying in {})",
                humantime::format_duration(interval)
            ),
        }
        first = false;
        let deadline = Instant::now() + interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => {}
                Ok(_) => {
                    let sig = sfd
                        .read_signal()
                        .ok()
                        .flatten()
                        .and_then(|s| Signal::try_from(s.ssi_signo as i32).ok());
                    let name = sig.map(|s| s.as_str()).unwrap_or("signal");
                    println!("{name} received; stopping");
                    return Ok(());
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CliError::Signal(e.to_string())),
            }
        }
    }
}
