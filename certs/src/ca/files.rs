//! Loading a CA from PEM files and writing certificates and keys to disk.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{CaCert, CaError, CertificateAuthority, KeyAlgorithm};
use crate::pem;
use crate::spiffe_id::TrustDomain;

/// File names used by `docmesh-certs init` inside the CA directory.
pub const ROOT_CERT: &str = "root.pem";
/// Root CA private key file name.
pub const ROOT_KEY: &str = "root.key";
/// Intermediate CA certificate file name.
pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
/// Intermediate CA private key file name.
pub const INTERMEDIATE_KEY: &str = "intermediate.key";
/// Trust bundle file name (the root certificate), in CA and SVID directories.
pub const BUNDLE: &str = "bundle.pem";
/// SVID certificate chain file name.
pub const SVID_CERT: &str = "svid.pem";
/// SVID private key file name.
pub const SVID_KEY: &str = "svid.key";

/// Why files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Output files exist and overwriting was not allowed.
    #[error("refusing to overwrite {}; pass --force to replace them", name_few(.0))]
    Exists(Vec<PathBuf>),
    /// An I/O error.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The first three paths and how many there are in all.
fn name_few(paths: &[PathBuf]) -> String {
    let first: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    match paths.len() {
        1 => format!("existing file {}", first[0]),
        n if n <= 3 => format!("{n} existing files: {}", first.join(", ")),
        n => format!(
            "{n} existing files: {}, and {} more",
            first.join(", "),
            n - 3
        ),
    }
}

/// One file to write: name inside the directory, contents, and whether it is secret (0600).
#[derive(Debug, Clone)]
pub struct OutFile {
    /// File name inside the output directory.
    pub name: String,
    /// Contents.
    pub contents: String,
    /// Private key material: written with mode 0600.
    pub secret: bool,
}

/// Writes `files` into `dir` (created if needed). Unless `force`, fails before writing
/// anything if any of them exists. Secrets get mode 0600, others 0644.
pub fn write_files(dir: &Path, files: &[OutFile], force: bool) -> Result<Vec<PathBuf>, FilesError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.name)).collect();
    if !force {
        let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
        if !existing.is_empty() {
            return Err(FilesError::Exists(existing));
        }
    }
    for (f, path) in files.iter().zip(&paths) {
        let mode = if f.secret { 0o600 } else { 0o644 };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).truncate(true).mode(mode);
        if force {
            opts.create(true);
        } else {
            opts.create_new(true);
        }
        let mut file = opts.open(path).map_err(io(path))?;
        // `mode` only applies on creation; enforce it when overwriting too.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(path))?;
        file.write_all(f.contents.as_bytes()).map_err(io(path))?;
    }
    Ok(paths)
}

fn load_ca_cert(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_what: &str,
    key_what: &str,
) -> Result<(CaCert, Option<TrustDomain>, Option<KeyAlgorithm>), CaError> {
    let der = pem::certs(cert_pem, cert_what)?.remove(0);
    let key_der = pem::private_key(key_pem, key_what)?;
    let not_ca = |reason: String| CaError::NotACa {
        what: cert_what.to_owned(),
        reason,
    };
    let (_, x) = X509Certificate::from_der(der.as_ref()).map_err(|e| not_ca(e.to_string()))?;
    if !x.is_ca() {
        return Err(not_ca("basicConstraints cA is not true".to_owned()));
    }
    let key = KeyPair::try_from(key_der.secret_der()).map_err(|_| CaError::UnsupportedKey {
        what: key_what.to_owned(),
    })?;
    if x.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(CaError::KeyMismatch {
            cert: cert_what.to_owned(),
            key: key_what.to_owned(),
        });
    }
    let ts = |t: &x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|e| not_ca(format!("bad validity date: {e}")))
    };
    let not_before = ts(&x.validity().not_before)?;
    let not_after = ts(&x.validity().not_after)?;
    let alg = KeyAlgorithm::of_key(&key);
    let td = crate::x509::trust_domain_of_ca(&der);
    let pem_text = pem::encode_certs(std::slice::from_ref(&der));
    let issuer = Issuer::from_ca_cert_der(&der, key)?;
    drop(x);
    Ok((
        CaCert {
            der,
            pem: pem_text,
            issuer,
            not_before,
            not_after,
        },
        td,
        alg,
    ))
}

impl CertificateAuthority {
    /// Loads a CA from PEM: root certificate and key, optionally an intermediate certificate
    /// and key. The trust domain comes from the root's `spiffe://td` URI SAN, else `td`.
    pub fn from_pem(
        root_cert: &[u8],
        root_key: &[u8],
        intermediate: Option<(&[u8], &[u8])>,
        td: Option<&TrustDomain>,
    ) -> Result<Self, CaError> {
        Self::from_pem_named(
            root_cert,
            root_key,
            intermediate,
            td,
            [
                "root certificate",
                "root key",
                "intermediate certificate",
                "intermediate key",
            ],
        )
    }

    fn from_pem_named(
        root_cert: &[u8],
        root_key: &[u8],
        intermediate: Option<(&[u8], &[u8])>,
        td: Option<&TrustDomain>,
        names: [&str; 4],
    ) -> Result<Self, CaError> {
        let (root, root_td, alg) = load_ca_cert(root_cert, root_key, names[0], names[1])?;
        let trust_domain = root_td
            .or_else(|| td.cloned())
            .ok_or_else(|| CaError::NotACa {
                what: names[0].to_owned(),
                reason: "it has no spiffe://<trust-domain> URI SAN; pass the trust domain"
                    .to_owned(),
            })?;
        let (intermediate, alg) = match intermediate {
            Some((c, k)) => {
                let (i, _, ialg) = load_ca_cert(c, k, names[2], names[3])?;
                (Some(i), ialg)
            }
            None => (None, alg),
        };
        let algorithm = alg.ok_or_else(|| CaError::UnsupportedKey {
            what: names[if intermediate.is_some() { 3 } else { 1 }].to_owned(),
        })?;
        Ok(Self {
            trust_domain,
            algorithm,
            root,
            intermediate,
        })
    }

    /// Loads a CA directory written by [`Self::write_to`] / `docmesh-certs init`.
    pub fn load_dir(dir: &Path, td: Option<&TrustDomain>) -> Result<Self, CaError> {
        let p = |n: &str| dir.join(n);
        let root_cert = pem::read_file(&p(ROOT_CERT))?;
        let root_key = pem::read_file(&p(ROOT_KEY))?;
        let inter = if p(INTERMEDIATE_CERT).exists() {
            Some((
                pem::read_file(&p(INTERMEDIATE_CERT))?,
                pem::read_file(&p(INTERMEDIATE_KEY))?,
            ))
        } else {
            None
        };
        let names = [ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY]
            .map(|n| p(n).display().to_string());
        Self::from_pem_named(
            &root_cert,
            &root_key,
            inter.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            td,
            [&names[0], &names[1], &names[2], &names[3]],
        )
    }

    /// The files of this CA: root cert and key, bundle, intermediate cert and key if any.
    pub fn files(&self) -> Vec<OutFile> {
        let mut v = vec![
            OutFile {
                name: ROOT_CERT.to_owned(),
                contents: self.root.pem.clone(),
                secret: false,
            },
            OutFile {
                name: ROOT_KEY.to_owned(),
                contents: self.root.key_pem(),
                secret: true,
            },
            OutFile {
                name: BUNDLE.to_owned(),
                contents: self.root.pem.clone(),
                secret: false,
            },
        ];
        if let Some(i) = &self.intermediate {
            v.push(OutFile {
                name: INTERMEDIATE_CERT.to_owned(),
                contents: i.pem.clone(),
                secret: false,
            });
            v.push(OutFile {
                name: INTERMEDIATE_KEY.to_owned(),
                contents: i.key_pem(),
                secret: true,
            });
        }
        v
    }

    /// Writes [`Self::files`] into `dir`; refuses to overwrite unless `force`.
    pub fn write_to(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CaError> {
        Ok(write_files(dir, &self.files(), force)?)
    }
}

impl super::IssuedSvid {
    /// The files of this SVID: `svid.pem` (chain), `svid.key` (0600) and `bundle.pem`.
    pub fn files(&self, bundle_pem: &str) -> Vec<OutFile> {
        vec![
            OutFile {
                name: SVID_CERT.to_owned(),
                contents: self.cert_chain_pem.clone(),
                secret: false,
            },
            OutFile {
                name: SVID_KEY.to_owned(),
                contents: self.key_pem.clone(),
                secret: true,
            },
            OutFile {
                name: BUNDLE.to_owned(),
                contents: bundle_pem.to_owned(),
                secret: false,
            },
        ]
    }
}
