//! rustls configurations built from the live identity: the SVID is read from an `ArcSwap` at
//! every handshake, and the bundles through the certs library's verifiers, so a rotation needs
//! no new configuration and open connections are never touched.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use docmesh_certs::bundle::TrustBundleSet;
use docmesh_certs::spiffe_id::SpiffeId;
use docmesh_certs::tls::{ExpectedPeer, SpiffeClientVerifier, SpiffeServerVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::material::Svid;
use super::IdentityError;

/// ALPN for HTTP/2 inside the mesh connection.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1 inside the mesh connection.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for opaque TCP inside the mesh connection.
pub const ALPN_TCP: &[u8] = b"docmesh-tcp";

/// Presents whatever SVID is current at handshake time, on both sides.
pub(crate) struct CurrentSvid(pub(crate) Arc<ArcSwap<Svid>>);

impl fmt::Debug for CurrentSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CurrentSvid")
            .field(&self.0.load().spiffe_id.to_string())
            .finish()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified_key.clone())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The mesh's server side: TLS 1.3 only, a client SVID is mandatory, ALPN `h2`, `http/1.1`,
/// `docmesh-tcp`.
pub(crate) fn server_config(
    provider: Arc<CryptoProvider>,
    svid: Arc<ArcSwap<Svid>>,
    bundles: Arc<ArcSwap<TrustBundleSet>>,
) -> Result<ServerConfig, IdentityError> {
    let verifier = SpiffeClientVerifier::new(bundles);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentSvid(svid)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
    Ok(cfg)
}

/// The mesh's client side towards one expected peer ID: TLS 1.3 only, our SVID as client
/// certificate, the peer must present exactly `expected`; session resumption on (rustls'
/// in-memory cache).
pub(crate) fn client_config(
    provider: Arc<CryptoProvider>,
    svid: Arc<ArcSwap<Svid>>,
    bundles: Arc<ArcSwap<TrustBundleSet>>,
    expected: &SpiffeId,
    alpn: &[&[u8]],
) -> Result<ClientConfig, IdentityError> {
    let verifier = SpiffeServerVerifier::new(bundles, ExpectedPeer::Exact(expected.clone()));
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentSvid(svid)));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::default();
    Ok(cfg)
}
