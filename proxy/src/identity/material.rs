//! Parsing and validating SVID material (chain, key, bundles) before it is ever used.
//!
//! Every source (fixed PEM, files, Workload API) funnels through [`Svid::build`], so a
//! half-written file, a key that does not match its certificate, or an SVID that does not chain
//! to the bundle is rejected the same way, with the same clear error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use docmesh_certs::bundle::TrustBundleSet;
use docmesh_certs::spiffe_id::SpiffeId;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityError;

/// One validated X.509-SVID with its signing key, ready for rustls.
#[derive(Debug)]
pub struct Svid {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Chain and signing key as rustls presents them.
    pub certified_key: Arc<CertifiedKey>,
    /// The leaf's serial number, lowercase hex with colons (as `openssl x509 -serial` shows
    /// it, but readable).
    pub serial: String,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl Svid {
    /// Validates `chain` (leaf first) against `bundles` at the current time, checks that `key`
    /// belongs to the leaf, and prepares the rustls signing key. `origin` names where the
    /// material came from, for the error message.
    pub fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: &TrustBundleSet,
        provider: &CryptoProvider,
        origin: &str,
    ) -> Result<Svid, IdentityError> {
        let spiffe_id = docmesh_certs::svid::validate_svid(&chain, bundles, UnixTime::now())
            .map_err(|e| IdentityError::Rejected {
                origin: origin.to_owned(),
                source: Box::new(e),
            })?;
        let (serial, not_before, not_after) =
            leaf_facts(&chain[0]).ok_or_else(|| IdentityError::Rejected {
                origin: origin.to_owned(),
                source: Box::new(docmesh_certs::svid::SvidError::EmptyChain),
            })?;
        let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            IdentityError::KeyMismatch {
                origin: origin.to_owned(),
                detail: e.to_string(),
            }
        })?;
        // `from_der` lets an "unknown" consistency result through; insist on a real match.
        certified_key
            .keys_match()
            .map_err(|e| IdentityError::KeyMismatch {
                origin: origin.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Svid {
            spiffe_id,
            certified_key: Arc::new(certified_key),
            serial,
            not_before,
            not_after,
        })
    }

    /// Parses PEM inputs (chain, key, bundle) and validates them; the bundle's trust domains
    /// come from each CA's own `spiffe://<td>` URI SAN, or from the SVID's trust domain for
    /// roots without one.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        provider: &CryptoProvider,
        origin: &PemOrigin<'_>,
    ) -> Result<(Svid, TrustBundleSet), IdentityError> {
        let chain =
            docmesh_certs::pem::certs(chain_pem, origin.cert).map_err(|e| IdentityError::Pem {
                what: origin.cert.to_owned(),
                detail: e.to_string(),
            })?;
        let key = docmesh_certs::pem::private_key(key_pem, origin.key).map_err(|e| {
            IdentityError::Pem {
                what: origin.key.to_owned(),
                detail: e.to_string(),
            }
        })?;
        // Roots without a URI SAN belong to the SVID's own trust domain.
        let fallback = chain
            .first()
            .and_then(|leaf| docmesh_certs::svid::check_leaf(leaf).ok())
            .map(|id| id.trust_domain().clone());
        let bundles =
            TrustBundleSet::from_pem_auto(bundle_pem, fallback.as_ref()).map_err(|e| {
                IdentityError::Bundle {
                    what: origin.bundle.to_owned(),
                    detail: e.to_string(),
                }
            })?;
        let svid = Svid::build(chain, key, &bundles, provider, origin.cert)?;
        Ok((svid, bundles))
    }

    /// Time left until notAfter (zero once expired).
    pub fn time_left(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// Names of the three PEM inputs, for error messages (file paths, or "argument" names).
#[derive(Debug, Clone, Copy)]
pub struct PemOrigin<'a> {
    /// Where the certificate chain came from.
    pub cert: &'a str,
    /// Where the private key came from.
    pub key: &'a str,
    /// Where the trust bundle came from.
    pub bundle: &'a str,
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Option<(String, SystemTime, SystemTime)> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let to_system = |t: i64| -> SystemTime {
        if t >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
        }
    };
    let validity = cert.validity();
    Some((
        serial,
        to_system(validity.not_before.timestamp()),
        to_system(validity.not_after.timestamp()),
    ))
}
