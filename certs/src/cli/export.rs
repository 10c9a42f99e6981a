//! `export`: the CA's trust bundle as PEM or SPIFFE bundle JSON.

use std::path::Path;

use docmesh_certs::ca::{CertificateAuthority, OutFile};
use docmesh_certs::pem;

use super::CliError;

/// `export --ca DIR [--format pem|spiffe-json] [--out FILE]`.
pub(crate) fn export(ca_dir: &Path, format: &str, out: Option<&Path>) -> Result<(), CliError> {
    let ca = CertificateAuthority::load_dir(ca_dir, None)?;
    let pem_text = docmesh_certs::renew::ca_bundle_pem(ca_dir, &ca)?;
    let text = if format == "spiffe-json" {
        let roots = pem::certs(pem_text.as_bytes(), "CA bundle")?;
        let sequence = time::OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
        docmesh_certs::export::spiffe_bundle_json(&roots, sequence)?
    } else {
        pem_text
    };
    match out {
        None => super::emit(&text)?,
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else {
                return Err(CliError::Usage(format!(
                    "--out {} names no file",
                    path.display()
                )));
            };
            std::fs::create_dir_all(dir).map_err(|source| docmesh_certs::renew::ReplaceError {
                path: dir.to_owned(),
                source,
            })?;
            docmesh_certs::renew::replace_file(
                dir,
                &OutFile {
                    name,
                    contents: text,
                    secret: false,
                },
            )?;
            eprintln!(
                "wrote {} ({format}) of trust domain {}",
                path.display(),
                ca.trust_domain()
            );
        }
    }
    Ok(())
}
