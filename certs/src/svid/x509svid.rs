//! An SVID with its private key, loaded from PEM and checked for consistency.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{check_leaf, SvidError};
use crate::pem::{self, PemError};
use crate::spiffe_id::SpiffeId;

/// Why an SVID and its key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum X509SvidError {
    /// Reading or decoding PEM failed.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The leaf certificate is not a valid X.509-SVID.
    #[error("{what}: not a valid X.509-SVID: {source}")]
    Svid {
        /// The certificate file or description.
        what: String,
        /// The broken rule.
        source: Box<SvidError>,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("private key {key} does not match the certificate {cert} (public keys differ); check that both files come from the same `docmesh-certs issue`")]
    KeyMismatch {
        /// The certificate file or description.
        cert: String,
        /// The key file or description.
        key: String,
    },
    /// The private key cannot be used by the aws-lc-rs provider.
    #[error("private key {key} is not usable: {reason}")]
    KeyUnusable {
        /// The key file or description.
        key: String,
        /// The provider's message.
        reason: String,
    },
}

/// A workload's X.509-SVID: its SPIFFE ID, certificate chain (leaf first) and private key.
pub struct X509Svid {
    /// The SPIFFE ID from the leaf's URI SAN.
    pub id: SpiffeId,
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl X509Svid {
    /// Parses a PEM chain (leaf first) and a PEM private key, checks the leaf rules and that the
    /// key matches the leaf. Dates and the chain are *not* checked here (see `validate_svid`).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, X509SvidError> {
        Self::from_pem_named(cert_pem, key_pem, "certificate PEM", "key PEM")
    }

    /// Like [`Self::from_pem`], reading the two files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, X509SvidError> {
        let cert = pem::read_file(cert_path)?;
        let key = pem::read_file(key_path)?;
        Self::from_pem_named(
            &cert,
            &key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
    }

    fn from_pem_named(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
    ) -> Result<Self, X509SvidError> {
        let chain = pem::certs(cert_pem, cert_what)?;
        let key = pem::private_key(key_pem, key_what)?;
        let id = check_leaf(&chain[0]).map_err(|source| X509SvidError::Svid {
            what: cert_what.to_owned(),
            source: Box::new(source),
        })?;
        let svid = Self { id, chain, key };
        svid.certified_key_named(cert_what, key_what)?;
        Ok(svid)
    }

    /// Builds an SVID from DER (e.g. from the Workload API): checks the leaf rules and that the
    /// key matches. Dates and the chain are not checked here.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, X509SvidError> {
        let what = "SVID certificate";
        let leaf = chain.first().ok_or_else(|| X509SvidError::Svid {
            what: what.to_owned(),
            source: Box::new(SvidError::EmptyChain),
        })?;
        let id = check_leaf(leaf).map_err(|source| X509SvidError::Svid {
            what: what.to_owned(),
            source: Box::new(source),
        })?;
        let svid = Self { id, chain, key };
        svid.certified_key_named(what, "SVID private key")?;
        Ok(svid)
    }

    /// Converts the `spiffe` crate's SVID (as delivered by the Workload API), applying the
    /// same checks as [`Self::from_der`].
    pub fn from_spiffe(svid: &spiffe::X509Svid) -> Result<Self, X509SvidError> {
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
        Self::from_der(chain, key)
    }

    /// The chain and key as a rustls [`CertifiedKey`] (aws-lc-rs), for a TLS config.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, X509SvidError> {
        self.certified_key_named("certificate", "private key")
    }

    fn certified_key_named(
        &self,
        cert_what: &str,
        key_what: &str,
    ) -> Result<Arc<CertifiedKey>, X509SvidError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        match CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider) {
            Ok(ck) => Ok(Arc::new(ck)),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(X509SvidError::KeyMismatch {
                    cert: cert_what.to_owned(),
                    key: key_what.to_owned(),
                })
            }
            Err(e) => Err(X509SvidError::KeyUnusable {
                key: key_what.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// The leaf certificate (`None` only if `chain` was emptied by hand).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }
}

impl crate::ca::IssuedSvid {
    /// As an [`X509Svid`] (no checks; it was just issued).
    pub fn to_x509_svid(&self) -> X509Svid {
        X509Svid {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.private_key(),
        }
    }
}
