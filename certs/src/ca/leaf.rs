//! Issuing leaf X.509-SVIDs (and deliberately broken fixtures) from a [`CertificateAuthority`].

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{
    fmt_time, random_serial, to_offset, CaError, CertificateAuthority, KeyAlgorithm, LEAF_BACKDATE,
};
use crate::spiffe_id::SpiffeId;

/// PKCS#8 v2 prefix aws-lc uses for Ed25519 (version 1, with the public key attached).
const ED25519_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// RFC 8410 PKCS#8 v1 prefix for Ed25519 (version 0, seed only).
const ED25519_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The key as PKCS#8 (PEM, DER). Ed25519 keys are written as RFC 8410 v1 PKCS#8, because
/// OpenSSL 3.0 and other tools cannot read the v2 form aws-lc produces.
pub(super) fn key_pem(key: &KeyPair) -> (String, Vec<u8>) {
    let der = key.serialize_der();
    let der = match der.get(..16) {
        Some(prefix) if prefix == ED25519_V2_PREFIX && der.len() >= 48 => {
            let mut v1 = ED25519_V1_PREFIX.to_vec();
            v1.extend_from_slice(&der[16..48]);
            v1
        }
        _ => der,
    };
    (crate::pem::encode_block("PRIVATE KEY", &der), der)
}

/// A freshly issued SVID: chain (leaf first, then intermediate) and private key.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The SPIFFE ID in the URI SAN.
    pub id: SpiffeId,
    /// Leaf first, then the intermediate if the CA has one (never the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// `chain` as PEM.
    pub cert_chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl IssuedSvid {
    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A certificate signed by the CA from caller-supplied parameters (for test fixtures that
/// deliberately break rules).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf first, then the intermediate if any.
    pub chain: Vec<CertificateDer<'static>>,
    /// `chain` as PEM.
    pub cert_chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Standard X.509-SVID leaf parameters for `id` (one URI SAN, cA=false,
    /// digitalSignature (+keyEncipherment for RSA), EKU serverAuth+clientAuth). Tests may
    /// modify them and sign with [`Self::sign_params`] to build broken fixtures.
    pub fn leaf_params(
        &self,
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "docmesh");
        let last = id.path().rsplit('/').next().unwrap_or("");
        let cn: String = if last.is_empty() {
            id.trust_domain().as_str()
        } else {
            last
        }
        .chars()
        .take(64)
        .collect();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.algorithm == KeyAlgorithm::Rsa3072 {
            p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// Signs arbitrary leaf parameters with a fresh key of the CA's algorithm. No rules are
    /// enforced: this is the escape hatch for test fixtures.
    pub fn sign_params(&self, params: &CertificateParams) -> Result<IssuedCert, CaError> {
        let key = self.algorithm.generate()?;
        let cert = params.signed_by(&key, &self.signer().issuer)?;
        let mut chain = vec![cert.der().clone()];
        let mut pem = cert.pem();
        if let Some(i) = &self.intermediate {
            chain.push(i.der.clone());
            pem.push_str(&i.pem);
        }
        Ok(IssuedCert {
            chain,
            cert_chain_pem: pem,
            key_pem: key_pem(&key).0,
        })
    }

    /// Issues an SVID for `id` valid for `ttl` from now (back-dated a little for clock skew).
    /// A `ttl` reaching past the CA's own notAfter is an error.
    pub fn issue_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, CaError> {
        if ttl.is_zero() {
            return Err(CaError::BadValidity("TTL must be positive".to_owned()));
        }
        let now = OffsetDateTime::now_utc();
        let not_after = now + to_offset(ttl)?;
        if not_after > self.not_after() {
            return Err(CaError::TtlBeyondCa {
                requested: fmt_time(not_after),
                ca_not_after: fmt_time(self.not_after()),
            });
        }
        let not_before = (now - to_offset(LEAF_BACKDATE)?).max(self.not_before());
        self.issue_svid_with(id, not_before, not_after)
    }

    /// Issues an SVID with explicit dates, *without* checking them against the CA or the
    /// clock (for expired / not-yet-valid fixtures). `not_before` must precede `not_after`.
    pub fn issue_svid_with(
        &self,
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        if not_before >= not_after {
            return Err(CaError::BadValidity(format!(
                "notBefore {} is not before notAfter {}",
                fmt_time(not_before),
                fmt_time(not_after)
            )));
        }
        let params = self.leaf_params(id, not_before, not_after)?;
        let key = self.algorithm.generate()?;
        let cert = params.signed_by(&key, &self.signer().issuer)?;
        let mut chain = vec![cert.der().clone()];
        let mut pem = cert.pem();
        if let Some(i) = &self.intermediate {
            chain.push(i.der.clone());
            pem.push_str(&i.pem);
        }
        let (key_pem, key_der) = key_pem(&key);
        Ok(IssuedSvid {
            id: id.clone(),
            chain,
            cert_chain_pem: pem,
            key_pem,
            key_der,
            not_before,
            not_after,
        })
    }
}
