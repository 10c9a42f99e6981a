//! rustls verifiers that authenticate peers by SPIFFE ID instead of DNS name.
//!
//! Both verifiers read the trust bundles from a shared `Arc<ArcSwap<TrustBundleSet>>`, so a
//! bundle rotation needs no new rustls config, and nothing is re-parsed per handshake.
//! Failures are `rustls::Error::InvalidCertificate(CertificateError::Other(..))` wrapping an
//! [`SvidError`]; use [`svid_error_of`] to get it back.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundleSet;
use crate::spiffe_id::SpiffeId;
use crate::svid::{check_leaf, validate_svid, SvidError, SIG_ALGS};

/// Trust bundles shared between the identity source (which swaps them) and the verifiers.
pub type SharedBundles = Arc<ArcSwap<TrustBundleSet>>;

/// Which server identity a TLS client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Exactly this SPIFFE ID; anything else fails with [`SvidError::IdentityMismatch`].
    Exact(SpiffeId),
    /// Any valid SVID of any trust domain in the bundles (authorization happens later).
    AnyInBundle,
}

/// Wraps an [`SvidError`] as the rustls error the verifiers return.
pub fn to_rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The [`SvidError`] inside a rustls error produced by these verifiers, if any.
pub fn svid_error_of(err: &rustls::Error) -> Option<&SvidError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}

/// The SPIFFE ID of a verified peer's certificate chain (e.g. from
/// `ServerConnection::peer_certificates()` after the handshake).
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    certs.first().and_then(|leaf| check_leaf(leaf).ok())
}

fn verify_chain(
    bundles: &ArcSwap<TrustBundleSet>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, SvidError> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(CertificateDer::from(end_entity.as_ref()));
    chain.extend(
        intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_ref())),
    );
    let guard = bundles.load();
    validate_svid(&chain, &guard, now)
}

fn tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &SIG_ALGS)
}

fn tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &SIG_ALGS)
}

/// Verifies a server's X.509-SVID (used by a TLS *client*). `ServerName` is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    expected: ExpectedPeer,
}

impl SpiffeServerVerifier {
    /// A verifier accepting `expected` from the shared bundles.
    pub fn new(bundles: SharedBundles, expected: ExpectedPeer) -> Self {
        Self { bundles, expected }
    }

    /// The identity this verifier accepts.
    pub fn expected(&self) -> &ExpectedPeer {
        &self.expected
    }

    /// Validates the chain and the expected identity, returning the server's SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let got = verify_chain(&self.bundles, end_entity, intermediates, now)?;
        match &self.expected {
            ExpectedPeer::Exact(want) if *want != got => Err(SvidError::IdentityMismatch {
                expected: want.clone(),
                got,
            }),
            _ => Ok(got),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
            .map_err(to_rustls_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIG_ALGS.supported_schemes()
    }
}

/// Verifies a client's X.509-SVID (used by a TLS *server*); client auth is mandatory.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
}

impl SpiffeClientVerifier {
    /// A verifier accepting any valid SVID from the shared bundles.
    pub fn new(bundles: SharedBundles) -> Self {
        Self { bundles }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(&self.bundles, end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(to_rustls_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIG_ALGS.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
