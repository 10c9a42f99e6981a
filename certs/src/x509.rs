//! Reading fields of X.509 certificates that several layers need (lowest layer: depends only
//! on `spiffe_id`).

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The trust domain named by a CA certificate's `spiffe://` URI SAN, if it has one.
pub fn trust_domain_of_ca(cert: &CertificateDer<'_>) -> Option<TrustDomain> {
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u
            .parse::<SpiffeId>()
            .ok()
            .map(|id| id.trust_domain().clone()),
        _ => None,
    })
}
