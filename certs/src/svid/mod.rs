//! Strict X.509-SVID validation (SPIFFE X509-SVID standard) and SVID loading.
//!
//! [`check_leaf`] applies the leaf rules alone; [`validate_svid`] adds the validity dates and
//! the chain, which must verify to the roots of the SVID's *own* trust domain.

mod x509svid;

use std::sync::LazyLock;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundleSet;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

pub use x509svid::{X509Svid, X509SvidError};

/// Signature algorithms of the aws-lc-rs provider, computed once.
pub static SIG_ALGS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
});

/// Why a certificate (chain) is not a valid X.509-SVID; every variant names the broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificate was presented.
    #[error("rule `chain-present`: no certificate presented (an X.509-SVID chain must start with the leaf)")]
    EmptyChain,
    /// The leaf is not a parseable DER X.509 certificate.
    #[error("rule `well-formed`: certificate is not valid DER X.509: {reason}")]
    Malformed {
        /// Parser message.
        reason: String,
    },
    /// An extension is duplicated or cannot be parsed.
    #[error("rule `well-formed-extensions`: certificate extension is invalid: {reason}")]
    BadExtension {
        /// Parser message.
        reason: String,
    },
    /// The leaf has no URI SAN at all (for example a DNS-only certificate).
    #[error("rule `one-uri-san`: an X.509-SVID needs exactly one URI SAN holding its SPIFFE ID, found none{}", other_names(.other_sans))]
    NoUriSan {
        /// Other SAN entries that were present (DNS names, IPs, ...).
        other_sans: Vec<String>,
    },
    /// The leaf has more than one URI SAN.
    #[error("rule `one-uri-san`: an X.509-SVID needs exactly one URI SAN, found {}: {}", .uris.len(), .uris.join(", "))]
    MultipleUriSans {
        /// All URI SANs found.
        uris: Vec<String>,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("rule `valid-spiffe-id`: URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI SAN.
        uri: String,
        /// Which SPIFFE-ID rule it broke.
        source: SpiffeIdError,
    },
    /// The leaf's SPIFFE ID is a bare trust domain ID with no workload path.
    #[error("rule `workload-path`: leaf SPIFFE ID {id} has no path; a workload SVID must not use the trust domain's own ID")]
    NoWorkloadPath {
        /// The ID.
        id: SpiffeId,
    },
    /// The leaf is a CA certificate.
    #[error("rule `leaf-not-ca`: leaf certificate has basicConstraints cA=true")]
    LeafIsCa,
    /// The leaf has no keyUsage extension.
    #[error("rule `key-usage-present`: leaf certificate has no keyUsage extension")]
    MissingKeyUsage,
    /// keyUsage lacks digitalSignature.
    #[error("rule `digital-signature`: leaf keyUsage lacks digitalSignature")]
    MissingDigitalSignature,
    /// keyUsage includes keyCertSign on a leaf.
    #[error("rule `no-key-cert-sign`: leaf keyUsage must not include keyCertSign")]
    LeafKeyCertSign,
    /// keyUsage includes cRLSign on a leaf.
    #[error("rule `no-crl-sign`: leaf keyUsage must not include cRLSign")]
    LeafCrlSign,
    /// extendedKeyUsage is present but lacks serverAuth.
    #[error("rule `eku-server-auth`: leaf extendedKeyUsage is present but lacks serverAuth")]
    EkuMissingServerAuth,
    /// extendedKeyUsage is present but lacks clientAuth.
    #[error("rule `eku-client-auth`: leaf extendedKeyUsage is present but lacks clientAuth")]
    EkuMissingClientAuth,
    /// notAfter is in the past.
    #[error("rule `validity`: certificate expired at {} (now {})", fmt_unix(*.not_after), fmt_unix(*.now))]
    Expired {
        /// notAfter, seconds since the epoch.
        not_after: i64,
        /// The time of the check.
        now: i64,
    },
    /// notBefore is in the future.
    #[error("rule `validity`: certificate is not valid before {} (now {})", fmt_unix(*.not_before), fmt_unix(*.now))]
    NotYetValid {
        /// notBefore, seconds since the epoch.
        not_before: i64,
        /// The time of the check.
        now: i64,
    },
    /// No roots are configured for the SVID's trust domain.
    #[error("rule `own-trust-domain`: no trust bundle for trust domain {trust_domain} (SVID {id}); known trust domains: {known}")]
    UnknownTrustDomain {
        /// The SVID's trust domain.
        trust_domain: TrustDomain,
        /// The SVID's ID.
        id: SpiffeId,
        /// The trust domains that do have roots.
        known: String,
    },
    /// The chain does not verify to a root of the SVID's trust domain.
    #[error("rule `chain-to-bundle`: certificate chain of {id} does not verify to the roots of trust domain {trust_domain}: {reason}")]
    UntrustedChain {
        /// The SVID's trust domain.
        trust_domain: TrustDomain,
        /// The SVID's ID.
        id: SpiffeId,
        /// What webpki reported.
        reason: String,
    },
    /// A valid SVID, but not the peer we expected.
    #[error("rule `expected-id`: peer presented {got}, expected {expected}")]
    IdentityMismatch {
        /// The ID we wanted.
        expected: SpiffeId,
        /// The ID the peer has.
        got: SpiffeId,
    },
}

impl SvidError {
    /// A short, stable name of the broken rule (for logs, metrics and `inspect`).
    pub fn rule(&self) -> &'static str {
        match self {
            Self::EmptyChain => "chain-present",
            Self::Malformed { .. } => "well-formed",
            Self::BadExtension { .. } => "well-formed-extensions",
            Self::NoUriSan { .. } | Self::MultipleUriSans { .. } => "one-uri-san",
            Self::InvalidSpiffeId { .. } => "valid-spiffe-id",
            Self::NoWorkloadPath { .. } => "workload-path",
            Self::LeafIsCa => "leaf-not-ca",
            Self::MissingKeyUsage => "key-usage-present",
            Self::MissingDigitalSignature => "digital-signature",
            Self::LeafKeyCertSign => "no-key-cert-sign",
            Self::LeafCrlSign => "no-crl-sign",
            Self::EkuMissingServerAuth => "eku-server-auth",
            Self::EkuMissingClientAuth => "eku-client-auth",
            Self::Expired { .. } | Self::NotYetValid { .. } => "validity",
            Self::UnknownTrustDomain { .. } => "own-trust-domain",
            Self::UntrustedChain { .. } => "chain-to-bundle",
            Self::IdentityMismatch { .. } => "expected-id",
        }
    }
}

fn other_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (other SANs: {})", names.join(", "))
    }
}

/// Formats seconds since the epoch as RFC 3339 (falls back to the raw number).
pub fn fmt_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs}s since epoch"))
}

/// Everything the leaf rules found about one certificate.
#[derive(Debug, Clone)]
pub struct LeafReport {
    /// The SPIFFE ID, when the URI SAN rule held.
    pub id: Option<SpiffeId>,
    /// Every leaf rule the certificate breaks (empty when it is a valid SVID leaf).
    pub violations: Vec<SvidError>,
    /// notBefore, seconds since the epoch (when parseable).
    pub not_before: Option<i64>,
    /// notAfter, seconds since the epoch (when parseable).
    pub not_after: Option<i64>,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(SvidError::Malformed {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        }),
        Err(e) => Err(SvidError::Malformed {
            reason: e.to_string(),
        }),
    }
}

fn bad_ext(e: impl std::fmt::Display) -> SvidError {
    SvidError::BadExtension {
        reason: e.to_string(),
    }
}

fn san_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert.subject_alternative_name().map_err(bad_ext)?;
    let names = san.map(|s| s.value.general_names.as_slice()).unwrap_or(&[]);
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan {
            other_sans: names.iter().map(|n| n.to_string()).collect(),
        }),
        [uri] => {
            let id: SpiffeId = uri.parse().map_err(|source| SvidError::InvalidSpiffeId {
                uri: (*uri).to_owned(),
                source,
            })?;
            if id.is_trust_domain_id() {
                return Err(SvidError::NoWorkloadPath { id });
            }
            Ok(id)
        }
        many => Err(SvidError::MultipleUriSans {
            uris: many.iter().map(|u| (*u).to_owned()).collect(),
        }),
    }
}

fn usage_violations(cert: &X509Certificate<'_>, out: &mut Vec<SvidError>) {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => out.push(SvidError::LeafIsCa),
        Ok(_) => {}
        Err(e) => out.push(bad_ext(e)),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.digital_signature() {
                out.push(SvidError::MissingDigitalSignature);
            }
            if ku.value.key_cert_sign() {
                out.push(SvidError::LeafKeyCertSign);
            }
            if ku.value.crl_sign() {
                out.push(SvidError::LeafCrlSign);
            }
        }
        Ok(None) => out.push(SvidError::MissingKeyUsage),
        Err(e) => out.push(bad_ext(e)),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            if !eku.value.server_auth {
                out.push(SvidError::EkuMissingServerAuth);
            }
            if !eku.value.client_auth {
                out.push(SvidError::EkuMissingClientAuth);
            }
        }
        Ok(None) => {}
        Err(e) => out.push(bad_ext(e)),
    }
}

fn time_violation(cert: &X509Certificate<'_>, now: UnixTime) -> Option<SvidError> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let v = cert.validity();
    let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now < nb {
        Some(SvidError::NotYetValid {
            not_before: nb,
            now,
        })
    } else if now > na {
        Some(SvidError::Expired { not_after: na, now })
    } else {
        None
    }
}

/// Applies every leaf rule (and the validity dates when `now` is given) and reports all
/// violations, not just the first. For diagnostics such as `docmesh-certs inspect`.
pub fn leaf_report(der: &CertificateDer<'_>, now: Option<UnixTime>) -> LeafReport {
    let cert = match parse(der.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            return LeafReport {
                id: None,
                violations: vec![e],
                not_before: None,
                not_after: None,
            }
        }
    };
    let mut violations = Vec::new();
    let id = match san_id(&cert) {
        Ok(id) => Some(id),
        Err(e) => {
            violations.push(e);
            None
        }
    };
    usage_violations(&cert, &mut violations);
    if let Some(e) = now.and_then(|now| time_violation(&cert, now)) {
        violations.push(e);
    }
    LeafReport {
        id,
        violations,
        not_before: Some(cert.validity().not_before.timestamp()),
        not_after: Some(cert.validity().not_after.timestamp()),
    }
}

fn leaf_rules(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let id = san_id(cert)?;
    let mut v = Vec::new();
    usage_violations(cert, &mut v);
    match v.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(id),
    }
}

/// The leaf rules alone (no dates, no chain): exactly one URI SAN that is a valid SPIFFE ID
/// with a path, cA=false, keyUsage with digitalSignature and without keyCertSign/cRLSign,
/// extendedKeyUsage (if present) with serverAuth and clientAuth.
pub fn check_leaf(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    leaf_rules(&parse(der.as_ref())?)
}

/// Full X.509-SVID validation: leaf rules, validity dates at `now`, and a chain that verifies
/// to the roots of the SVID's own trust domain in `bundles`. Returns the peer's SPIFFE ID.
pub fn validate_svid(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    now: UnixTime,
) -> Result<SpiffeId, SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
    let leaf = parse(leaf_der.as_ref())?;
    let id = leaf_rules(&leaf)?;
    if let Some(e) = time_violation(&leaf, now) {
        return Err(e);
    }
    let td = id.trust_domain();
    let anchors = bundles.anchors(td);
    if anchors.is_empty() {
        return Err(SvidError::UnknownTrustDomain {
            trust_domain: td.clone(),
            id: id.clone(),
            known: known_domains(bundles),
        });
    }
    let untrusted = |reason: String| SvidError::UntrustedChain {
        trust_domain: td.clone(),
        id: id.clone(),
        reason,
    };
    let ee = webpki::EndEntityCert::try_from(leaf_der).map_err(|e| untrusted(webpki_reason(&e)))?;
    ee.verify_for_usage(
        SIG_ALGS.all,
        anchors,
        &chain[1..],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| untrusted(webpki_reason(&e)))?;
    Ok(id)
}

fn known_domains(bundles: &TrustBundleSet) -> String {
    let tds = bundles.trust_domains();
    if tds.is_empty() {
        "none".to_owned()
    } else {
        tds.iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => {
            "issued by a CA that is not in this trust domain's bundle (unknown issuer)".to_owned()
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            "a signature in the chain does not verify".to_owned()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests;
