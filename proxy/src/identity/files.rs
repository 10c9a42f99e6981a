//! The files source: PEM chain, key and bundle on disk, polled every `reload_interval`.
//!
//! Each poll reads the three files and fingerprints them (mtime, length and a content hash of
//! each); only a changed content hash triggers a reload. A reload validates the new material
//! completely (PEM parses, key matches the leaf, SVID chains to the new bundle) before it is
//! swapped in, so a half-written file, or a cert written before its key, keeps the old SVID and
//! logs one clear error; the next poll that sees consistent files installs them.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior};

use super::material::{PemOrigin, Svid};
use super::{provider, Identity, IdentityError};
use crate::config::identity::IdentityConfig;

/// One file's contents and what identifies that version of it.
struct FileVersion {
    bytes: Vec<u8>,
    mtime: Option<SystemTime>,
    len: u64,
}

/// The three files as read by one poll.
struct Snapshot {
    cert: FileVersion,
    key: FileVersion,
    bundle: FileVersion,
}

/// What a poll remembers: per file (mtime, length), and one hash over all contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    meta: [(Option<SystemTime>, u64); 3],
    content: u64,
}

impl Snapshot {
    fn fingerprint(&self) -> Fingerprint {
        let mut h = DefaultHasher::new();
        for f in [&self.cert, &self.key, &self.bundle] {
            f.bytes.hash(&mut h);
        }
        Fingerprint {
            meta: [
                (self.cert.mtime, self.cert.len),
                (self.key.mtime, self.key.len),
                (self.bundle.mtime, self.bundle.len),
            ],
            content: h.finish(),
        }
    }
}

async fn read_one(path: &Path) -> Result<FileVersion, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    // Follows symlinks, so Kubernetes' `..data` symlink swaps are seen as content changes.
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    let bytes = tokio::fs::read(path).await.map_err(io)?;
    Ok(FileVersion {
        mtime: meta.modified().ok(),
        len: bytes.len() as u64,
        bytes,
    })
}

async fn read_all(cfg: &IdentityConfig) -> Result<Snapshot, IdentityError> {
    Ok(Snapshot {
        cert: read_one(&cfg.cert).await?,
        key: read_one(&cfg.key).await?,
        bundle: read_one(&cfg.bundle).await?,
    })
}

fn parse(
    cfg: &IdentityConfig,
    s: &Snapshot,
) -> Result<(Svid, docmesh_certs::bundle::TrustBundleSet), IdentityError> {
    let cert = cfg.cert.display().to_string();
    let key = cfg.key.display().to_string();
    let bundle = cfg.bundle.display().to_string();
    Svid::from_pem(
        &s.cert.bytes,
        &s.key.bytes,
        &s.bundle.bytes,
        &provider(),
        &PemOrigin {
            cert: &cert,
            key: &key,
            bundle: &bundle,
        },
    )
}

/// Loads the files (retrying until `startup_timeout` while they are missing or invalid), then
/// spawns the watcher.
pub(super) async fn start(cfg: &IdentityConfig) -> Result<Identity, IdentityError> {
    let (identity, fingerprint) = load_initial(cfg).await?;
    let weak = identity.downgrade();
    let cfg = cfg.clone();
    let task = tokio::spawn(async move { watch(weak, cfg, fingerprint).await });
    identity.set_task(task.abort_handle());
    Ok(identity)
}

/// The first load: retries while the files are missing or invalid, up to `startup_timeout`.
pub(super) async fn load_initial(
    cfg: &IdentityConfig,
) -> Result<(Identity, Fingerprint), IdentityError> {
    let started = Instant::now();
    let retry = cfg
        .reload_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut logged: Option<String> = None;
    let (identity, fingerprint) = loop {
        let attempt = async {
            let snap = read_all(cfg).await?;
            let (svid, bundles) = parse(cfg, &snap)?;
            Ok::<_, IdentityError>((svid, bundles, snap.fingerprint()))
        };
        match attempt.await {
            Ok((svid, bundles, fp)) => break (Identity::new(svid, bundles, "files")?, fp),
            Err(e) => {
                let msg = e.to_string();
                if started.elapsed() + retry > cfg.startup_timeout {
                    return Err(IdentityError::StartupTimeout {
                        source_kind: "files",
                        waited: started.elapsed(),
                        last: msg,
                    });
                }
                if logged.as_deref() != Some(&msg) {
                    tracing::warn!(error = %msg, "waiting for valid SVID files");
                    logged = Some(msg);
                }
                tokio::time::sleep(retry).await;
            }
        }
    };
    Ok((identity, fingerprint))
}

/// What one poll of the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PollOutcome {
    /// Same contents as the installed version (or as the last rejected one).
    Unchanged,
    /// New, valid material was installed.
    Installed,
    /// New material failed validation; the current SVID stays.
    Rejected(String),
    /// A file could not be read; the current SVID stays.
    ReadError(String),
}

/// Remembers what the last polls saw.
pub(super) struct Watcher {
    cfg: IdentityConfig,
    installed: Fingerprint,
    // Content hash of the last rejected version: one bad version is logged once, not per poll.
    last_rejected: Option<u64>,
    last_read_error: Option<String>,
}

impl Watcher {
    pub(super) fn new(cfg: IdentityConfig, installed: Fingerprint) -> Self {
        Watcher {
            cfg,
            installed,
            last_rejected: None,
            last_read_error: None,
        }
    }

    /// Reads the files once and installs them into `identity` if they changed and are valid.
    pub(super) async fn poll(&mut self, identity: &Identity) -> PollOutcome {
        let snap = match read_all(&self.cfg).await {
            Ok(s) => {
                self.last_read_error = None;
                s
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_read_error.as_deref() != Some(&msg) {
                    tracing::error!(error = %msg, "cannot read SVID files; keeping the current SVID");
                    self.last_read_error = Some(msg.clone());
                }
                return PollOutcome::ReadError(msg);
            }
        };
        let fp = snap.fingerprint();
        if fp.content == self.installed.content {
            if fp.meta != self.installed.meta {
                tracing::debug!("SVID files touched but their contents are unchanged");
            }
            self.installed = fp;
            return PollOutcome::Unchanged;
        }
        if self.last_rejected == Some(fp.content) {
            return PollOutcome::Unchanged;
        }
        match parse(&self.cfg, &snap) {
            Ok((svid, bundles)) => {
                identity.install(svid, bundles);
                self.installed = fp;
                self.last_rejected = None;
                PollOutcome::Installed
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "new SVID files rejected; keeping the current SVID (a rotation in progress \
                     is retried at the next poll)"
                );
                self.last_rejected = Some(fp.content);
                PollOutcome::Rejected(e.to_string())
            }
        }
    }
}

/// Polls the files every `reload_interval` until the identity is dropped.
async fn watch(weak: std::sync::Weak<super::Inner>, cfg: IdentityConfig, installed: Fingerprint) {
    let mut tick = tokio::time::interval(cfg.reload_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the files were just read.
    let mut watcher = Watcher::new(cfg, installed);
    loop {
        tick.tick().await;
        let Some(identity) = Identity::upgrade(&weak) else {
            return;
        };
        watcher.poll(&identity).await;
    }
}
