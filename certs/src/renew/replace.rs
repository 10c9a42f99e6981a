//! Replacing files atomically: write a temporary file next to the target, copy the old
//! file's mode and owner onto it, flush it to disk, then `rename(2)` it over the target.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::OutFile;

/// Why a file could not be replaced.
#[derive(Debug, thiserror::Error)]
#[error("cannot replace {path}: {source}")]
pub struct ReplaceError {
    /// The file being replaced (or its temporary sibling).
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Replaces `dir/file.name` with `file.contents`. An existing file's mode, owner and group are
/// kept; a new one gets 0600 (secret) or 0644. Readers see either the old or the new file.
pub fn replace_file(dir: &Path, file: &OutFile) -> Result<PathBuf, ReplaceError> {
    let target = dir.join(&file.name);
    let tmp = dir.join(format!(".{}.docmesh-tmp-{}", file.name, std::process::id()));
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ReplaceError { path, source }
    };
    let old = std::fs::metadata(&target).ok();
    let mode = match &old {
        Some(m) => m.permissions().mode() & 0o7777,
        None if file.secret => 0o600,
        None => 0o644,
    };
    let _ = std::fs::remove_file(&tmp); // a leftover of an interrupted run
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o700) // owner-only until the owner is right
            .open(&tmp)
            .map_err(err(&tmp))?;
        if let Some(m) = &old {
            let new = f.metadata().map_err(err(&tmp))?;
            if (m.uid(), m.gid()) != (new.uid(), new.gid()) {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid())).map_err(err(&tmp))?;
            }
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err(&tmp))?;
        f.write_all(file.contents.as_bytes()).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(err(&target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(target)
}

/// Flushes the directory entry changes (the renames) of `dir` to disk.
pub fn sync_dir(dir: &Path) -> Result<(), ReplaceError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ReplaceError {
            path: dir.to_owned(),
            source,
        })
}
