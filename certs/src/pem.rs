//! Reading PEM files with errors that say which file and what was wrong with it.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

/// What went wrong reading PEM input.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("cannot read {path}: {source} (check the path and its permissions)")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input is not valid PEM.
    #[error("{what} is not valid PEM: {reason}")]
    Syntax {
        /// What was being read (file name or description).
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// No section of the expected type; lists what was found instead.
    #[error("{what} contains no {expected} PEM block (found: {found})")]
    WrongType {
        /// What was being read.
        what: String,
        /// The PEM label that was expected.
        expected: &'static str,
        /// The labels that were found.
        found: String,
    },
    /// More than one private key in a key file.
    #[error("{what} contains {count} private keys; expected exactly one")]
    SeveralKeys {
        /// What was being read.
        what: String,
        /// How many keys.
        count: usize,
    },
}

/// Reads a whole file, mapping I/O errors to [`PemError::Unreadable`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "other",
    }
}

/// Every recognised PEM section in `pem`, in order.
pub fn sections(pem: &[u8], what: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, PemError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Syntax {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

fn found(secs: &[(SectionKind, Vec<u8>)]) -> String {
    if secs.is_empty() {
        "no PEM blocks at all".to_owned()
    } else {
        secs.iter()
            .map(|(k, _)| label(*k))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// All `CERTIFICATE` blocks of `pem`; an error if there are none.
pub fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let secs = sections(pem, what)?;
    let certs: Vec<CertificateDer<'static>> = secs
        .iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        return Err(PemError::WrongType {
            what: what.to_owned(),
            expected: "CERTIFICATE",
            found: found(&secs),
        });
    }
    Ok(certs)
}

/// The single private key (PKCS#8, PKCS#1 or SEC1) of `pem`.
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    let secs = sections(pem, what)?;
    let mut keys: Vec<PrivateKeyDer<'static>> = secs
        .iter()
        .filter_map(|(k, der)| match k {
            SectionKind::PrivateKey => Some(PrivatePkcs8KeyDer::from(der.clone()).into()),
            SectionKind::RsaPrivateKey => Some(PrivatePkcs1KeyDer::from(der.clone()).into()),
            SectionKind::EcPrivateKey => Some(PrivateSec1KeyDer::from(der.clone()).into()),
            _ => None,
        })
        .collect();
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(PemError::WrongType {
            what: what.to_owned(),
            expected: "PRIVATE KEY",
            found: found(&secs),
        }),
        count => Err(PemError::SeveralKeys {
            what: what.to_owned(),
            count,
        }),
    }
}

/// Encodes DER certificates as PEM `CERTIFICATE` blocks.
pub fn encode_certs(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| encode_block("CERTIFICATE", c.as_ref()))
        .collect()
}

/// Encodes one DER object as a PEM block with `label` (e.g. `PRIVATE KEY`).
pub fn encode_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_lists_what_was_found() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = certs(key.as_bytes(), "x.pem").unwrap_err();
        assert!(matches!(e, PemError::WrongType { .. }));
        assert!(e.to_string().contains("found: PRIVATE KEY"), "{e}");
        let e = private_key(b"garbage", "k.pem").unwrap_err();
        assert!(e.to_string().contains("no PEM blocks"), "{e}");
    }

    #[test]
    fn garbage_and_truncated_pem_are_errors() {
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certs(bad.as_bytes(), "x").unwrap_err(),
            PemError::Syntax { .. }
        ));
        let trunc = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(
            certs(trunc.as_bytes(), "x").unwrap_err(),
            PemError::Syntax { .. }
        ));
        let e = read_file(Path::new("/nonexistent/file.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/file.pem"));
    }

    #[test]
    fn encode_round_trips() {
        let der = CertificateDer::from(vec![1u8; 100]);
        let pem = encode_certs(std::slice::from_ref(&der));
        assert_eq!(certs(pem.as_bytes(), "x").unwrap(), vec![der]);
    }
}
