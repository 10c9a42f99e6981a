//! Renewing the SVIDs `docmesh-certs issue` wrote: find every SVID directory under a root,
//! re-issue each SVID (same SPIFFE ID) once a share of its lifetime has passed, and replace
//! its files atomically in an order a file-watching sidecar can follow.
//!
//! Replacement order per directory: `bundle.pem` first (during a CA rotation it holds the old
//! and the new root, so peers' new SVIDs are trusted before our own changes), then `svid.key`,
//! then `svid.pem`. Each file is renamed into place, so a reader never sees half a file; between
//! the key and the cert rename a reader can see a new key with the old cert, which
//! docmesh-proxy's file source rejects (key must match the leaf) and retries at its next poll.

pub mod replace;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::bundle::TrustBundleSet;
use crate::ca::files::{BUNDLE, SVID_CERT, SVID_KEY};
use crate::ca::{CaError, CertificateAuthority, LEAF_BACKDATE};
use crate::pem;
use crate::spiffe_id::SpiffeId;
use crate::svid::{fmt_unix, leaf_report, validate_svid};

pub use replace::{replace_file, ReplaceError};

/// Default share of an SVID's lifetime after which it is renewed.
pub const DEFAULT_RENEW_AT: f64 = 0.67;
/// How deep below the root SVID directories are searched for.
const MAX_DEPTH: usize = 6;

/// When and for how long SVIDs are renewed.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    /// Share of the lifetime (0 < x <= 1) after which an SVID is renewed.
    pub renew_at: f64,
    /// Lifetime of renewed SVIDs; `None` keeps each SVID's previous lifetime.
    pub ttl: Option<Duration>,
}

/// Why renewing failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// `--renew-at` is not in (0, 1].
    #[error("renew-at must be a share of the lifetime in (0, 1], e.g. 0.67; got {0}")]
    BadRenewAt(f64),
    /// The SVID directory root cannot be listed.
    #[error("cannot list SVID directory {path}: {source}")]
    Walk {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No `svid.pem` anywhere under the root.
    #[error("no SVIDs under {0} (looked for */svid.pem as `docmesh-certs issue` writes them)")]
    NoSvids(PathBuf),
    /// The existing SVID cannot be read or is not an SVID.
    #[error("{path}: {reason}")]
    BadSvid {
        /// The `svid.pem` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The SVID belongs to a trust domain this CA does not issue for.
    #[error("{path}: {id} is not in this CA's trust domain {ca_td}; not renewed")]
    OtherTrustDomain {
        /// The `svid.pem` file.
        path: PathBuf,
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// The CA's trust domain.
        ca_td: String,
    },
    /// The CA has expired (or expires within a minute): nothing can be issued.
    #[error("the CA expires {0}; no SVID can be renewed. Rotate the CA (docs/operations.md)")]
    CaExpired(String),
    /// The CA's `bundle.pem` does not hold its root.
    #[error("{0}: the CA's bundle does not contain its root certificate")]
    BundleWithoutRoot(PathBuf),
    /// Issuing failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Reading a bundle failed.
    #[error(transparent)]
    Pem(#[from] crate::pem::PemError),
    /// Writing failed.
    #[error(transparent)]
    Replace(#[from] ReplaceError),
}

/// An SVID found on disk.
#[derive(Debug, Clone)]
pub struct SvidOnDisk {
    /// The directory holding `svid.pem`, `svid.key`, `bundle.pem`.
    pub dir: PathBuf,
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    chain: Vec<CertificateDer<'static>>,
}

impl SvidOnDisk {
    /// Reads `dir/svid.pem`.
    pub fn read(dir: &Path) -> Result<Self, RenewError> {
        let path = dir.join(SVID_CERT);
        let bad = |reason: String| RenewError::BadSvid {
            path: path.clone(),
            reason,
        };
        let bytes = pem::read_file(&path)?;
        let chain = pem::certs(&bytes, &path.display().to_string())?;
        let report = leaf_report(&chain[0], None);
        let id = report.id.ok_or_else(|| {
            let why: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
            bad(format!("not an X.509-SVID: {}", why.join("; ")))
        })?;
        let (Some(not_before), Some(not_after)) = (report.not_before, report.not_after) else {
            return Err(bad("unreadable validity dates".to_owned()));
        };
        Ok(Self {
            dir: dir.to_owned(),
            id,
            not_before,
            not_after,
            chain,
        })
    }

    /// The lifetime it was issued with (notAfter - notBefore, without the clock-skew
    /// back-dating `issue` adds).
    pub fn issued_ttl(&self) -> Duration {
        let lifetime = u64::try_from(self.not_after - self.not_before).unwrap_or(0);
        let backdate = LEAF_BACKDATE.as_secs();
        Duration::from_secs(if lifetime > backdate {
            lifetime - backdate
        } else {
            lifetime
        })
    }

    /// When (seconds since the epoch) `renew_at` of the issued lifetime has passed.
    pub fn renew_after(&self, renew_at: f64) -> i64 {
        let ttl = self.issued_ttl().as_secs_f64();
        let issued = self.not_after as f64 - ttl;
        (issued + ttl * renew_at).floor() as i64
    }
}

/// What happened to one SVID directory.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// New files were written.
    Renewed {
        /// The directory.
        dir: PathBuf,
        /// The SPIFFE ID (unchanged).
        id: SpiffeId,
        /// notAfter of the new SVID.
        not_after: OffsetDateTime,
        /// Its lifetime.
        ttl: Duration,
        /// Why now: "due", "expired", or why the old one does not chain to this CA.
        reason: String,
        /// The lifetime was shortened to end with the CA.
        capped: bool,
    },
    /// Not due yet.
    NotDue {
        /// The SVID.
        svid: SvidOnDisk,
        /// When it will be renewed (seconds since the epoch).
        renew_after: i64,
    },
}

/// One SVID directory and what renewing it did.
pub type DirResult = (PathBuf, Result<Outcome, RenewError>);

/// Every directory under `root` (itself included) that holds an `svid.pem`, sorted. Hidden
/// directories (Kubernetes `..data`) and symlinks are not followed.
pub fn find_svid_dirs(root: &Path) -> Result<Vec<PathBuf>, RenewError> {
    let mut found = Vec::new();
    walk(root, 0, &mut found)?;
    found.sort();
    if found.is_empty() {
        return Err(RenewError::NoSvids(root.to_owned()));
    }
    Ok(found)
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<(), RenewError> {
    let walk_err = |source| RenewError::Walk {
        path: dir.to_owned(),
        source,
    };
    if dir.join(SVID_CERT).is_file() {
        found.push(dir.to_owned());
    }
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(walk_err)? {
        let entry = entry.map_err(walk_err)?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().map_err(walk_err)?.is_dir() {
            walk(&entry.path(), depth + 1, found)?;
        }
    }
    Ok(())
}

/// The trust bundle to hand out with renewed SVIDs: the CA directory's `bundle.pem` (which
/// holds old and new roots during a rotation) if present, else the root. It must contain the
/// CA's root.
pub fn ca_bundle_pem(ca_dir: &Path, ca: &CertificateAuthority) -> Result<String, RenewError> {
    let path = ca_dir.join(BUNDLE);
    if !path.exists() {
        return Ok(ca.root_cert_pem().to_owned());
    }
    let bytes = pem::read_file(&path)?;
    let certs = pem::certs(&bytes, &path.display().to_string())?;
    if !certs.iter().any(|c| c == ca.root_cert_der()) {
        return Err(RenewError::BundleWithoutRoot(path));
    }
    Ok(pem::encode_certs(&certs))
}

/// Renews every SVID under `root` that is due at `now`. One result per directory.
pub fn renew_all(
    ca: &CertificateAuthority,
    bundle_pem: &str,
    root: &Path,
    policy: &RenewPolicy,
    now: OffsetDateTime,
) -> Result<Vec<DirResult>, RenewError> {
    if !(policy.renew_at > 0.0 && policy.renew_at <= 1.0) {
        return Err(RenewError::BadRenewAt(policy.renew_at));
    }
    let dirs = find_svid_dirs(root)?;
    Ok(dirs
        .into_iter()
        .map(|dir| {
            let r = renew_one(ca, bundle_pem, &dir, policy, now);
            (dir, r)
        })
        .collect())
}

/// Renews the SVID in `dir` if it is due (or expired, or not signed by this CA).
pub fn renew_one(
    ca: &CertificateAuthority,
    bundle_pem: &str,
    dir: &Path,
    policy: &RenewPolicy,
    now: OffsetDateTime,
) -> Result<Outcome, RenewError> {
    let old = SvidOnDisk::read(dir)?;
    if old.id.trust_domain() != ca.trust_domain() {
        return Err(RenewError::OtherTrustDomain {
            path: dir.join(SVID_CERT),
            id: old.id,
            ca_td: ca.trust_domain().to_string(),
        });
    }
    let now_secs = now.unix_timestamp();
    let renew_after = old.renew_after(policy.renew_at);
    let reason = match chain_problem(ca, &old, now) {
        Some(problem) => problem,
        None if now_secs >= renew_after => {
            format!("{:.0}% of its lifetime passed", policy.renew_at * 100.0)
        }
        None => {
            return Ok(Outcome::NotDue {
                svid: old,
                renew_after,
            })
        }
    };
    let ca_left = (ca.not_after() - now).whole_seconds() - 60;
    if ca_left <= 0 {
        return Err(RenewError::CaExpired(fmt_unix(
            ca.not_after().unix_timestamp(),
        )));
    }
    let wanted = policy.ttl.unwrap_or_else(|| old.issued_ttl());
    let ca_left = Duration::from_secs(ca_left.unsigned_abs());
    let (ttl, capped) = if wanted > ca_left {
        (ca_left, true)
    } else {
        (wanted, false)
    };
    let svid = ca.issue_svid(&old.id, ttl)?;
    let files = svid.files(bundle_pem);
    for name in [BUNDLE, SVID_KEY, SVID_CERT] {
        if let Some(f) = files.iter().find(|f| f.name == name) {
            replace_file(dir, f)?;
        }
    }
    replace::sync_dir(dir)?;
    Ok(Outcome::Renewed {
        dir: dir.to_owned(),
        id: old.id,
        not_after: svid.not_after,
        ttl,
        reason,
        capped,
    })
}

/// Why the SVID must be replaced regardless of its age: it expired, or it does not chain to
/// this CA (e.g. after the CA was rotated).
fn chain_problem(
    ca: &CertificateAuthority,
    old: &SvidOnDisk,
    now: OffsetDateTime,
) -> Option<String> {
    if now.unix_timestamp() >= old.not_after {
        return Some("it has expired".to_owned());
    }
    let bundles: TrustBundleSet = ca.bundle();
    let at = UnixTime::since_unix_epoch(Duration::from_secs(
        now.unix_timestamp().max(0).unsigned_abs(),
    ));
    match validate_svid(&old.chain, &bundles, at) {
        Ok(_) => None,
        Err(e) => Some(format!("it does not verify against this CA ({e})")),
    }
}

/// A warning when the signing CA has less than a third of its lifetime (or 30 days) left,
/// with the commands that rotate it. `None` while it is far from expiry.
pub fn ca_expiry_warning(
    ca: &CertificateAuthority,
    ca_dir: &Path,
    now: OffsetDateTime,
) -> Option<String> {
    let lifetime = (ca.not_after() - ca.not_before()).whole_seconds();
    let left = (ca.not_after() - now).whole_seconds();
    let threshold = (lifetime / 3).max(30 * 86400);
    if left > threshold {
        return None;
    }
    let d = ca_dir.display();
    let td = ca.trust_domain();
    let when = if left <= 0 {
        format!("expired {}", fmt_unix(ca.not_after().unix_timestamp()))
    } else {
        format!(
            "expires {} ({}d {}h left); SVIDs cannot outlive it",
            fmt_unix(ca.not_after().unix_timestamp()),
            left / 86400,
            left % 86400 / 3600
        )
    };
    Some(format!(
        "the CA in {d} {when}. Rotate it: `docmesh-certs init --trust-domain {td} --out {d}.new && \
         cat {d}/root.pem {d}.new/root.pem > {d}.new/bundle.pem`, then renew with \
         `--ca {d}.new` (every SVID is re-issued at once; old and new roots stay in every \
         bundle.pem) and drop the old root from {d}.new/bundle.pem once every sidecar serves a \
         new SVID (docs/operations.md)"
    ))
}

#[cfg(test)]
mod tests;
