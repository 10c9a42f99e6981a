//! Trust bundles: the root CA certificates of one or more trust domains, parsed once into
//! webpki trust anchors so that handshakes never re-parse them.

use std::collections::HashMap;
use std::path::Path;

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::pem::{self, PemError};
use crate::spiffe_id::TrustDomain;

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or decoding PEM failed.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A root certificate could not be turned into a trust anchor.
    #[error("{what}: certificate #{index} is not usable as a trust anchor: {reason}")]
    BadRoot {
        /// Where it came from.
        what: String,
        /// Position in the input (0-based).
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// A CA certificate carries no `spiffe://<trust-domain>` URI SAN and no fallback was given.
    #[error("{what}: certificate #{index} has no spiffe://<trust-domain> URI SAN; pass the trust domain explicitly")]
    NoTrustDomain {
        /// Where it came from.
        what: String,
        /// Position in the input (0-based).
        index: usize,
    },
    /// The SPIFFE bundle JSON is malformed.
    #[error("SPIFFE bundle JSON for {trust_domain} is invalid: {reason}")]
    Json {
        /// The trust domain being loaded.
        trust_domain: TrustDomain,
        /// What is wrong.
        reason: String,
    },
    /// A trust domain name from another library does not pass our rules.
    #[error("trust domain {name:?} is invalid: {source}")]
    TrustDomain {
        /// The name as given.
        name: String,
        /// The broken rule.
        source: crate::spiffe_id::SpiffeIdError,
    },
    /// The SPIFFE bundle JSON holds no `x509-svid` keys.
    #[error("SPIFFE bundle JSON for {trust_domain} has no key with \"use\": \"x509-svid\" and an x5c certificate")]
    NoX509Authorities {
        /// The trust domain being loaded.
        trust_domain: TrustDomain,
    },
}

/// The roots of one trust domain (several during a CA rotation: old and new).
#[derive(Debug, Clone, Default)]
pub struct DomainRoots {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl DomainRoots {
    /// The webpki trust anchors, ready for path building.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The root certificates as DER (for display and re-export).
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// Roots per trust domain. Cheap to clone is not a goal; share it behind `Arc<ArcSwap<_>>`.
#[derive(Debug, Clone, Default)]
pub struct TrustBundleSet {
    domains: HashMap<TrustDomain, DomainRoots>,
}

impl TrustBundleSet {
    /// An empty set (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when both sets hold the same roots for the same trust domains (in any order):
    /// a reload that changed nothing, or only the SVID, is not a bundle change.
    pub fn same_roots(&self, other: &TrustBundleSet) -> bool {
        fn sorted(roots: &DomainRoots) -> Vec<&[u8]> {
            let mut der: Vec<&[u8]> = roots.certs.iter().map(|c| c.as_ref()).collect();
            der.sort_unstable();
            der
        }
        self.domains.len() == other.domains.len()
            && self.domains.iter().all(|(td, roots)| {
                other
                    .domains
                    .get(td)
                    .is_some_and(|o| sorted(roots) == sorted(o))
            })
    }

    /// Adds one root for `td`, parsing it into a trust anchor now. Duplicates are ignored.
    pub fn add_root(
        &mut self,
        td: &TrustDomain,
        cert: CertificateDer<'static>,
    ) -> Result<(), BundleError> {
        self.add_root_from(td, cert, "root certificate", 0)
    }

    fn add_root_from(
        &mut self,
        td: &TrustDomain,
        cert: CertificateDer<'static>,
        what: &str,
        index: usize,
    ) -> Result<(), BundleError> {
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| BundleError::BadRoot {
                what: what.to_owned(),
                index,
                reason: format!("{e:?}"),
            })?
            .to_owned();
        let roots = self.domains.entry(td.clone()).or_default();
        if !roots.certs.contains(&cert) {
            roots.certs.push(cert);
            roots.anchors.push(anchor);
        }
        Ok(())
    }

    /// All `CERTIFICATE` blocks of `pem` become roots of `td`.
    pub fn from_pem(td: &TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        Self::from_pem_named(td, pem, "bundle PEM")
    }

    fn from_pem_named(td: &TrustDomain, pem: &[u8], what: &str) -> Result<Self, BundleError> {
        let mut set = Self::new();
        for (i, cert) in pem::certs(pem, what)?.into_iter().enumerate() {
            set.add_root_from(td, cert, what, i)?;
        }
        Ok(set)
    }

    /// Roots from PEM where each CA's trust domain is read from its own `spiffe://<td>` URI SAN;
    /// certificates without one go to `fallback` (an error if there is none).
    pub fn from_pem_auto(pem: &[u8], fallback: Option<&TrustDomain>) -> Result<Self, BundleError> {
        Self::from_pem_auto_named(pem, fallback, "bundle PEM")
    }

    fn from_pem_auto_named(
        pem: &[u8],
        fallback: Option<&TrustDomain>,
        what: &str,
    ) -> Result<Self, BundleError> {
        let mut set = Self::new();
        for (i, cert) in pem::certs(pem, what)?.into_iter().enumerate() {
            let td = match trust_domain_of_ca(&cert) {
                Some(td) => td,
                None => fallback
                    .cloned()
                    .ok_or_else(|| BundleError::NoTrustDomain {
                        what: what.to_owned(),
                        index: i,
                    })?,
            };
            set.add_root_from(&td, cert, what, i)?;
        }
        Ok(set)
    }

    /// Reads a PEM bundle file; trust domains as in [`Self::from_pem_auto`] when `td` is `None`,
    /// otherwise every root belongs to `td`.
    pub fn load_pem_file(path: &Path, td: Option<&TrustDomain>) -> Result<Self, BundleError> {
        let bytes = pem::read_file(path)?;
        let what = path.display().to_string();
        match td {
            Some(td) => Self::from_pem_named(td, &bytes, &what),
            None => Self::from_pem_auto_named(&bytes, None, &what),
        }
    }

    /// Roots from a SPIFFE bundle (JWKS): every key with `"use": "x509-svid"` contributes its
    /// `x5c` certificate(s). JWT keys are ignored.
    pub fn from_spiffe_json(td: &TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        use base64::Engine;
        let bad = |reason: String| BundleError::Json {
            trust_domain: td.clone(),
            reason,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| bad("missing \"keys\" array".to_owned()))?;
        let mut set = Self::new();
        let mut n = 0usize;
        for (i, key) in keys.iter().enumerate() {
            if key.get("use").and_then(|u| u.as_str()) != Some("x509-svid") {
                continue;
            }
            let x5c = key
                .get("x5c")
                .and_then(|x| x.as_array())
                .ok_or_else(|| bad(format!("key #{i} (x509-svid) has no \"x5c\" array")))?;
            for (j, b64) in x5c.iter().enumerate() {
                let b64 = b64
                    .as_str()
                    .ok_or_else(|| bad(format!("key #{i} x5c[{j}] is not a string")))?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| bad(format!("key #{i} x5c[{j}] is not base64: {e}")))?;
                set.add_root_from(td, CertificateDer::from(der), "SPIFFE bundle JSON", n)?;
                n += 1;
            }
        }
        if n == 0 {
            return Err(BundleError::NoX509Authorities {
                trust_domain: td.clone(),
            });
        }
        Ok(set)
    }

    /// Converts the `spiffe` crate's bundle set (as delivered by the Workload API).
    pub fn from_spiffe_bundle_set(set: &spiffe::X509BundleSet) -> Result<Self, BundleError> {
        let mut out = Self::new();
        for (td, bundle) in set.iter() {
            let ours: TrustDomain =
                td.as_str()
                    .parse()
                    .map_err(|source| BundleError::TrustDomain {
                        name: td.as_str().to_owned(),
                        source,
                    })?;
            for (i, cert) in bundle.authorities().iter().enumerate() {
                let der = CertificateDer::from(cert.as_bytes().to_vec());
                out.add_root_from(&ours, der, "Workload API bundle", i)?;
            }
        }
        Ok(out)
    }

    /// Adds every root of `other` (federation: several trust domains in one set).
    pub fn merge(&mut self, other: &TrustBundleSet) {
        for (td, roots) in &other.domains {
            let mine = self.domains.entry(td.clone()).or_default();
            for (c, a) in roots.certs.iter().zip(&roots.anchors) {
                if !mine.certs.contains(c) {
                    mine.certs.push(c.clone());
                    mine.anchors.push(a.clone());
                }
            }
        }
    }

    /// Merges several sets into one.
    pub fn merged<'a>(sets: impl IntoIterator<Item = &'a TrustBundleSet>) -> Self {
        let mut out = Self::new();
        for s in sets {
            out.merge(s);
        }
        out
    }

    /// The roots of `td`, if any.
    pub fn roots(&self, td: &TrustDomain) -> Option<&DomainRoots> {
        self.domains.get(td).filter(|r| !r.anchors.is_empty())
    }

    /// The trust anchors of `td` (empty if the domain is unknown).
    pub fn anchors(&self, td: &TrustDomain) -> &[TrustAnchor<'static>] {
        self.domains.get(td).map_or(&[], |r| r.anchors())
    }

    /// The trust domains in the set, sorted.
    pub fn trust_domains(&self) -> Vec<&TrustDomain> {
        let mut v: Vec<_> = self.domains.keys().collect();
        v.sort();
        v
    }

    /// Total number of roots over all domains.
    pub fn len(&self) -> usize {
        self.domains.values().map(|r| r.anchors.len()).sum()
    }

    /// True when the set trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub use crate::x509::trust_domain_of_ca;

impl crate::ca::CertificateAuthority {
    /// A trust bundle holding this CA's root.
    pub fn bundle(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        // A root we generated always parses as a trust anchor; an error would leave the set
        // empty, which fails closed.
        let _ = set.add_root(self.trust_domain(), self.root_cert_der().clone());
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertificateAuthority, KeyAlgorithm};
    use std::time::Duration;

    fn td(s: &str) -> TrustDomain {
        s.parse().unwrap()
    }

    fn ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::generate(
            &td(name),
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(86400),
        )
        .unwrap()
    }

    #[test]
    fn same_roots_ignores_order_and_sees_added_removed_or_moved_roots() {
        let (a, a2, b) = (ca("a.local"), ca("a.local"), ca("b.local"));
        let set =
            |pems: &[&str]| TrustBundleSet::from_pem_auto(pems.concat().as_bytes(), None).unwrap();
        let (ra, ra2, rb) = (a.root_cert_pem(), a2.root_cert_pem(), b.root_cert_pem());
        let both = set(&[ra, ra2, rb]);
        assert!(
            both.same_roots(&set(&[rb, ra2, ra])),
            "order does not matter"
        );
        assert!(!both.same_roots(&set(&[ra, rb])), "a root removed");
        assert!(!set(&[ra]).same_roots(&set(&[ra, ra2])), "a root added");
        assert!(!set(&[ra]).same_roots(&set(&[ra2])), "a root replaced");
        assert!(!set(&[ra]).same_roots(&set(&[rb])), "another trust domain");
        assert!(TrustBundleSet::new().same_roots(&TrustBundleSet::new()));
    }

    #[test]
    fn auto_reads_trust_domain_from_ca_uri_san() {
        let a = ca("a.local");
        let b = ca("b.local");
        let pem = format!("{}{}", a.root_cert_pem(), b.root_cert_pem());
        let set = TrustBundleSet::from_pem_auto(pem.as_bytes(), None).unwrap();
        assert_eq!(set.trust_domains(), vec![&td("a.local"), &td("b.local")]);
        assert_eq!(set.anchors(&td("a.local")).len(), 1);
        assert!(set.roots(&td("c.local")).is_none());
    }

    #[test]
    fn rotation_keeps_both_roots_and_merge_dedupes() {
        let old = ca("a.local");
        let new = ca("a.local");
        let mut set =
            TrustBundleSet::from_pem(&td("a.local"), old.root_cert_pem().as_bytes()).unwrap();
        let other =
            TrustBundleSet::from_pem(&td("a.local"), new.root_cert_pem().as_bytes()).unwrap();
        set.merge(&other);
        set.merge(&other);
        assert_eq!(set.anchors(&td("a.local")).len(), 2);
        let m = TrustBundleSet::merged([&set, &other]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn spiffe_json_bundle() {
        use base64::Engine;
        let a = ca("a.local");
        let der = base64::engine::general_purpose::STANDARD.encode(a.root_cert_der().as_ref());
        let json = format!(
            r#"{{"spiffe_sequence":1,"keys":[{{"use":"jwt-svid","kty":"EC","kid":"k"}},{{"use":"x509-svid","kty":"EC","x5c":["{der}"]}}]}}"#
        );
        let set = TrustBundleSet::from_spiffe_json(&td("a.local"), json.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(matches!(
            TrustBundleSet::from_spiffe_json(&td("a.local"), br#"{"keys":[]}"#),
            Err(BundleError::NoX509Authorities { .. })
        ));
        assert!(matches!(
            TrustBundleSet::from_spiffe_json(&td("a.local"), b"{not json"),
            Err(BundleError::Json { .. })
        ));
        assert!(matches!(
            TrustBundleSet::from_spiffe_json(
                &td("a.local"),
                br#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#
            ),
            Err(BundleError::BadRoot { .. })
        ));
    }

    #[test]
    fn missing_trust_domain_and_garbage_are_errors() {
        let key = rcgen::KeyPair::generate().unwrap();
        let plain = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            TrustBundleSet::from_pem_auto(plain.pem().as_bytes(), None),
            Err(BundleError::NoTrustDomain { index: 0, .. })
        ));
        let set =
            TrustBundleSet::from_pem_auto(plain.pem().as_bytes(), Some(&td("f.local"))).unwrap();
        assert_eq!(set.trust_domains(), vec![&td("f.local")]);
        assert!(matches!(
            TrustBundleSet::from_pem(&td("a"), b"garbage"),
            Err(BundleError::Pem(_))
        ));
    }
}
