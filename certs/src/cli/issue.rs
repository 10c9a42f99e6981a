//! `issue`: one SVID or a whole deployment's worth from a list file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use docmesh_certs::ca::{write_files, CertificateAuthority, OutFile, TlsCertRequest};
use docmesh_certs::pem;
use docmesh_certs::spiffe_id::SpiffeId;

use super::{fmt_time, CliError};

/// Parses a list file: `spiffe-id [out-subdir]` per line, `#` comments, blank lines ignored.
pub(crate) fn read_list(path: &Path) -> Result<Vec<(SpiffeId, String)>, CliError> {
    let text = pem::read_file(path)?;
    let file = path.display().to_string();
    let text = String::from_utf8(text).map_err(|_| CliError::List {
        file: file.clone(),
        line: 0,
        reason: "list file is not UTF-8 text".to_owned(),
    })?;
    let mut out: Vec<(SpiffeId, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |reason: String| CliError::List {
            file: file.clone(),
            line: n + 1,
            reason,
        };
        let mut parts = line.split_whitespace();
        let id_str = parts.next().unwrap_or("");
        let id: SpiffeId = id_str
            .parse()
            .map_err(|e| err(format!("invalid SPIFFE ID {id_str:?}: {e}")))?;
        let sub = match parts.next() {
            Some(s) => s.to_owned(),
            None => id.path().rsplit('/').next().unwrap_or("").to_owned(),
        };
        if let Some(extra) = parts.next() {
            return Err(err(format!(
                "unexpected extra field {extra:?} (expected `spiffe-id [out-subdir]`)"
            )));
        }
        if sub.is_empty() || sub == "." || sub == ".." || sub.contains('/') {
            return Err(err(format!(
                "output subdirectory {sub:?} must be a single plain directory name"
            )));
        }
        if out.iter().any(|(_, s)| *s == sub) {
            return Err(err(format!(
                "output subdirectory {sub:?} is used twice; give one explicitly"
            )));
        }
        out.push((id, sub));
    }
    if out.is_empty() {
        return Err(CliError::List {
            file,
            line: 0,
            reason: "no SPIFFE IDs in the list".to_owned(),
        });
    }
    Ok(out)
}

/// Issues every SVID first, checks that no output exists (unless `force`), then writes.
pub(crate) fn issue_all(
    ca: &CertificateAuthority,
    jobs: &[(SpiffeId, PathBuf)],
    ttl: Duration,
    force: bool,
) -> Result<(), CliError> {
    let mut issued: Vec<(&Path, Vec<OutFile>, String)> = Vec::new();
    for (id, dir) in jobs {
        let svid = ca.issue_svid(id, ttl)?;
        let summary = format!(
            "{id} (valid {}, until {})",
            humantime::format_duration(ttl),
            fmt_time(svid.not_after)
        );
        issued.push((dir.as_path(), svid.files(ca.root_cert_pem()), summary));
    }
    if !force {
        let existing: Vec<PathBuf> = issued
            .iter()
            .flat_map(|(dir, files, _)| files.iter().map(|f| dir.join(&f.name)))
            .filter(|p| p.exists())
            .collect();
        if !existing.is_empty() {
            return Err(
                docmesh_certs::ca::CaError::from(docmesh_certs::ca::FilesError::Exists(existing))
                    .into(),
            );
        }
    }
    for (dir, files, summary) in issued {
        let written = write_files(dir, &files, force).map_err(docmesh_certs::ca::CaError::from)?;
        println!("issued {summary}");
        for p in written {
            println!("  {}", p.display());
        }
    }
    Ok(())
}

/// `issue --dns/--ip`: one ordinary TLS certificate into `out` (tls.crt, tls.key, ca.crt).
pub(crate) fn issue_tls(
    ca: &CertificateAuthority,
    req: &TlsCertRequest,
    ttl: Duration,
    bundle_pem: &str,
    out: &Path,
    force: bool,
) -> Result<(), CliError> {
    let cert = ca.issue_tls_cert(req, ttl)?;
    let written = write_files(out, &cert.files(bundle_pem), force)
        .map_err(docmesh_certs::ca::CaError::from)?;
    let mut names: Vec<String> = req.dns_names.clone();
    names.extend(req.ips.iter().map(|i| i.to_string()));
    let usage = match (req.server || !req.client, req.client) {
        (true, true) => "server and client",
        (false, true) => "client",
        _ => "server",
    };
    println!(
        "issued TLS certificate for {} ({usage} auth, valid {}, until {})",
        names.join(", "),
        humantime::format_duration(ttl),
        fmt_time(cert.not_after)
    );
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}
