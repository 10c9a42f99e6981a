//! Ordinary TLS certificates (DNS names and IP addresses, no SPIFFE ID) from the same CA, for
//! an ingress that browsers reach and for applications outside the mesh.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use time::OffsetDateTime;

use super::files::OutFile;
use super::leaf::key_pem;
use super::LEAF_BACKDATE;
use super::{fmt_time, random_serial, to_offset, CaError, CertificateAuthority, KeyAlgorithm};

/// Certificate file name of an ordinary TLS certificate (chain: leaf, intermediate).
pub const TLS_CERT: &str = "tls.crt";
/// Private key file name of an ordinary TLS certificate.
pub const TLS_KEY: &str = "tls.key";
/// The CA root written next to it, for clients to trust.
pub const TLS_CA: &str = "ca.crt";

/// What an ordinary TLS certificate names and may be used for.
#[derive(Debug, Clone, Default)]
pub struct TlsCertRequest {
    /// DNS names (subjectAltName dNSName); the first is also the common name.
    pub dns_names: Vec<String>,
    /// IP addresses (subjectAltName iPAddress).
    pub ips: Vec<IpAddr>,
    /// Extended key usage serverAuth.
    pub server: bool,
    /// Extended key usage clientAuth.
    pub client: bool,
}

/// An issued ordinary TLS certificate.
#[derive(Debug, Clone)]
pub struct IssuedTlsCert {
    /// Leaf then intermediate (if any), PEM.
    pub cert_chain_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: String,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl IssuedTlsCert {
    /// `tls.crt` (chain), `tls.key` (0600) and `ca.crt` (the given bundle).
    pub fn files(&self, bundle_pem: &str) -> Vec<OutFile> {
        [
            (TLS_CERT, &self.cert_chain_pem, false),
            (TLS_KEY, &self.key_pem, true),
            (TLS_CA, &bundle_pem.to_owned(), false),
        ]
        .into_iter()
        .map(|(name, contents, secret)| OutFile {
            name: name.to_owned(),
            contents: contents.clone(),
            secret,
        })
        .collect()
    }
}

fn check_dns(name: &str) -> Result<(), CaError> {
    let bad = |why: &str| CaError::BadName(format!("DNS name {name:?} {why}"));
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return Err(bad("is empty or longer than 253 characters"));
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty or over-long label"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad(
                "may only hold letters, digits and inner hyphens (and a leading `*.`)",
            ));
        }
    }
    Ok(())
}

impl CertificateAuthority {
    /// Issues an ordinary TLS certificate for DNS names and/or IP addresses, valid for `ttl`
    /// (which must end before the CA does). Without `server` or `client`, serverAuth is used.
    pub fn issue_tls_cert(
        &self,
        req: &TlsCertRequest,
        ttl: Duration,
    ) -> Result<IssuedTlsCert, CaError> {
        if req.dns_names.is_empty() && req.ips.is_empty() {
            return Err(CaError::BadName(
                "an ordinary TLS certificate needs at least one DNS name or IP address".to_owned(),
            ));
        }
        for d in &req.dns_names {
            check_dns(d)?;
        }
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
        let mut p = rcgen::CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "docmesh");
        let cn = req
            .dns_names
            .first()
            .cloned()
            .or_else(|| req.ips.first().map(IpAddr::to_string))
            .unwrap_or_default();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.algorithm == KeyAlgorithm::Rsa3072 {
            p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let server = req.server || !req.client;
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if req.client {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for d in &req.dns_names {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        for ip in &req.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.not_before = (now - to_offset(LEAF_BACKDATE)?).max(self.not_before());
        p.not_after = not_after;
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let key = self.algorithm.generate()?;
        let cert = p.signed_by(&key, &self.signer().issuer)?;
        let mut pem = cert.pem();
        if let Some(i) = &self.intermediate {
            pem.push_str(&i.pem);
        }
        Ok(IssuedTlsCert {
            cert_chain_pem: pem,
            key_pem: key_pem(&key).0,
            not_after,
        })
    }
}
