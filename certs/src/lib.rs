//! SPIFFE X.509-SVID library for docmesh: SPIFFE IDs, trust bundles, strict SVID validation,
//! rustls verifiers and a development CA.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arc_swap::ArcSwap;
//! use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
//! use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier, SpiffeClientVerifier};
//! use docmesh_certs::{validate_svid, SpiffeId, TrustBundleSet, TrustDomain};
//! use rustls_pki_types::UnixTime;
//!
//! // A dev CA and one workload SVID.
//! let td: TrustDomain = "onlyoffice.local".parse()?;
//! let ca = CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))?;
//! let id: SpiffeId = "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice".parse()?;
//! let svid = ca.issue_svid(&id, Duration::from_secs(3600))?;
//!
//! // Trust bundles are parsed once; the trust domain is read from the CA's URI SAN.
//! let bundles = TrustBundleSet::from_pem_auto(ca.root_cert_pem().as_bytes(), None)?;
//! assert_eq!(validate_svid(&svid.chain, &bundles, UnixTime::now())?, id);
//!
//! // rustls verifiers share hot-swappable bundles.
//! let shared = Arc::new(ArcSwap::from_pointee(bundles));
//! let _client_side = SpiffeServerVerifier::new(shared.clone(), ExpectedPeer::Exact(id.clone()));
//! let _server_side = SpiffeClientVerifier::new(shared);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod export;
pub mod pem;
pub mod renew;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub mod x509;

pub use bundle::TrustBundleSet;
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{check_leaf, validate_svid, SvidError, X509Svid};
