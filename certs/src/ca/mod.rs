//! A development certificate authority (rcgen, aws-lc-rs): root CA, optional intermediate,
//! and X.509-SVID issuance. Used by `docmesh-certs`, the demo and every test fixture.

pub mod files;
mod leaf;
mod tls_cert;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::pem::PemError;
use crate::spiffe_id::TrustDomain;

pub use files::{write_files, FilesError, OutFile};
pub use leaf::{IssuedCert, IssuedSvid};
pub use tls_cert::{IssuedTlsCert, TlsCertRequest, TLS_CA, TLS_CERT, TLS_KEY};

/// How far the CA's notBefore is back-dated, to tolerate clock skew between hosts.
pub const CA_BACKDATE: Duration = Duration::from_secs(3600);
/// How far a leaf's notBefore is back-dated (capped at the CA's notBefore).
pub const LEAF_BACKDATE: Duration = Duration::from_secs(300);

/// What went wrong creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Reading PEM failed.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// An unknown key algorithm name.
    #[error("unknown key algorithm {0:?}; use ecdsa-p256, ed25519 or rsa-3072")]
    UnknownAlgorithm(String),
    /// The requested leaf lifetime ends after the signing CA's own notAfter.
    #[error("requested SVID validity ends {requested}, after the CA's own validity ({ca_not_after}); use a shorter --ttl or a new CA")]
    TtlBeyondCa {
        /// The requested notAfter.
        requested: String,
        /// The CA's notAfter.
        ca_not_after: String,
    },
    /// notBefore is not before notAfter, or the lifetime is zero / out of range.
    #[error("invalid validity period: {0}")]
    BadValidity(String),
    /// A DNS name or IP address for an ordinary TLS certificate is not usable.
    #[error("{0}")]
    BadName(String),
    /// The CA key does not match the CA certificate.
    #[error("CA key {key} does not match CA certificate {cert}")]
    KeyMismatch {
        /// Certificate file or description.
        cert: String,
        /// Key file or description.
        key: String,
    },
    /// The loaded certificate is not a usable CA certificate.
    #[error("{what} is not a usable CA certificate: {reason}")]
    NotACa {
        /// Certificate file or description.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA key's algorithm is not supported.
    #[error("CA key {what} uses an unsupported algorithm; use ECDSA P-256, Ed25519 or RSA")]
    UnsupportedKey {
        /// Key file or description.
        what: String,
    },
    /// Writing output files failed (or they exist and `force` was not given).
    #[error("{0}")]
    Files(#[from] files::FilesError),
}

/// Key algorithm of the CA and of the SVIDs it issues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (default).
    #[default]
    EcdsaP256,
    /// Ed25519.
    Ed25519,
    /// RSA 3072-bit with PKCS#1 v1.5 SHA-256.
    Rsa3072,
}

impl KeyAlgorithm {
    /// Generates a fresh key pair of this algorithm.
    pub fn generate(self) -> Result<KeyPair, CaError> {
        Ok(match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
            Self::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?
            }
        })
    }

    fn of_key(key: &KeyPair) -> Option<Self> {
        let alg = key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(Self::EcdsaP256)
        } else if alg == &rcgen::PKCS_ED25519 {
            Some(Self::Ed25519)
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            Some(Self::Rsa3072)
        } else {
            None
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "p-256" => Ok(Self::EcdsaP256),
            "ed25519" => Ok(Self::Ed25519),
            "rsa-3072" | "rsa3072" | "rsa" => Ok(Self::Rsa3072),
            _ => Err(CaError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
            Self::Rsa3072 => "rsa-3072",
        })
    }
}

/// One CA certificate with its key (root or intermediate).
struct CaCert {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl CaCert {
    fn key_pem(&self) -> String {
        leaf::key_pem(self.issuer.key()).0
    }
}

/// A development CA for one trust domain: a root and optionally an intermediate that signs.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    algorithm: KeyAlgorithm,
    root: CaCert,
    intermediate: Option<CaCert>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("algorithm", &self.algorithm)
            .field("intermediate", &self.intermediate.is_some())
            .finish()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG; on the (never seen) failure fall back to the clock, still unique enough
    // for a development CA.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let t = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes();
        bytes.copy_from_slice(&t);
    }
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte, so always 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn to_offset(d: Duration) -> Result<time::Duration, CaError> {
    time::Duration::try_from(d).map_err(|e| CaError::BadValidity(e.to_string()))
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn ca_params(
    td: &TrustDomain,
    cn: &str,
    constraint: BasicConstraints,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "docmesh");
    dn.push(DnType::CommonName, format!("{cn} {td}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(td.id().as_str().try_into()?)];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial());
    Ok(p)
}

impl CertificateAuthority {
    /// A new self-signed root CA for `td`, valid from one hour ago for `validity`.
    pub fn generate(
        td: &TrustDomain,
        algorithm: KeyAlgorithm,
        validity: Duration,
    ) -> Result<Self, CaError> {
        if validity.is_zero() {
            return Err(CaError::BadValidity(
                "CA validity must be positive".to_owned(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let not_before = now - to_offset(CA_BACKDATE)?;
        let not_after = now + to_offset(validity)?;
        let params = ca_params(
            td,
            "docmesh root CA",
            BasicConstraints::Unconstrained,
            not_before,
            not_after,
        )?;
        let key = algorithm.generate()?;
        let cert = params.self_signed(&key)?;
        let root = CaCert {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_before,
            not_after,
        };
        Ok(Self {
            trust_domain: td.clone(),
            algorithm,
            root,
            intermediate: None,
        })
    }

    /// Adds an intermediate CA (signed by the root, path length 0) that signs all further
    /// SVIDs. Its validity is capped at the root's.
    pub fn add_intermediate(&mut self, validity: Duration) -> Result<(), CaError> {
        let now = OffsetDateTime::now_utc();
        let not_before = self.root.not_before;
        let not_after = (now + to_offset(validity)?).min(self.root.not_after);
        let mut params = ca_params(
            &self.trust_domain,
            "docmesh intermediate CA",
            BasicConstraints::Constrained(0),
            not_before,
            not_after,
        )?;
        params.use_authority_key_identifier_extension = true;
        let key = self.algorithm.generate()?;
        let cert = params.signed_by(&key, &self.root.issuer)?;
        self.intermediate = Some(CaCert {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_before,
            not_after,
        });
        Ok(())
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The key algorithm of the CA and its SVIDs.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The root certificate (the trust bundle) as DER.
    pub fn root_cert_der(&self) -> &CertificateDer<'static> {
        &self.root.der
    }

    /// The root certificate (the trust bundle) as PEM.
    pub fn root_cert_pem(&self) -> &str {
        &self.root.pem
    }

    /// The root's private key as PKCS#8 PEM.
    pub fn root_key_pem(&self) -> String {
        self.root.key_pem()
    }

    /// The intermediate certificate as PEM, if there is one.
    pub fn intermediate_cert_pem(&self) -> Option<&str> {
        self.intermediate.as_ref().map(|i| i.pem.as_str())
    }

    /// The intermediate certificate as DER, if there is one.
    pub fn intermediate_cert_der(&self) -> Option<&CertificateDer<'static>> {
        self.intermediate.as_ref().map(|i| &i.der)
    }

    /// The intermediate's private key as PKCS#8 PEM, if there is one.
    pub fn intermediate_key_pem(&self) -> Option<String> {
        self.intermediate.as_ref().map(CaCert::key_pem)
    }

    fn signer(&self) -> &CaCert {
        self.intermediate.as_ref().unwrap_or(&self.root)
    }

    /// notBefore of the signing CA.
    pub fn not_before(&self) -> OffsetDateTime {
        self.signer().not_before
    }

    /// notAfter of the signing CA (no SVID may outlive it).
    pub fn not_after(&self) -> OffsetDateTime {
        self.signer().not_after
    }
}
