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
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::material::Svid;
use super::IdentityError;

/// ALPN for HTTP/2 inside the mesh connection.
pub const ALPN_H2: &[u8] = crate::protocol::alpn::H2;
/// ALPN for HTTP/1.1 inside the mesh connection.
pub const ALPN_HTTP1: &[u8] = crate::protocol::alpn::HTTP1;
/// ALPN for opaque TCP inside the mesh connection.
pub const ALPN_TCP: &[u8] = crate::protocol::alpn::TCP;

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

/// Sessions the server side keeps for resumption (rustls' default size).
const SERVER_SESSIONS: usize = 256;

/// The server side's TLS session cache, emptied at every rotation. A resumed session skips
/// certificate verification on both sides, so a session from before a rotation would keep a
/// peer's old SVID in use on new connections, even after its root was removed from the bundle.
#[derive(Debug)]
pub(crate) struct ServerSessions(ArcSwap<ServerSessionMemoryCache>);

impl ServerSessions {
    pub(crate) fn new() -> Self {
        ServerSessions(ArcSwap::new(ServerSessionMemoryCache::new(SERVER_SESSIONS)))
    }

    /// Forgets every session: the next connection of every client is a full handshake.
    pub(crate) fn clear(&self) {
        self.0.store(ServerSessionMemoryCache::new(SERVER_SESSIONS));
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The mesh's server side: TLS 1.3 only, a client SVID is mandatory, ALPN `h2`, `http/1.1`,
/// `docmesh-tcp`.
pub(crate) fn server_config(
    provider: Arc<CryptoProvider>,
    svid: Arc<ArcSwap<Svid>>,
    bundles: Arc<ArcSwap<TrustBundleSet>>,
    sessions: Arc<ServerSessions>,
) -> Result<ServerConfig, IdentityError> {
    let verifier = SpiffeClientVerifier::new(bundles);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentSvid(svid)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
    cfg.session_storage = sessions;
    Ok(cfg)
}

/// The mesh's client side towards one expected peer ID: TLS 1.3 only, our SVID as client
/// certificate, the peer must present exactly `expected`; session resumption on (rustls'
/// in-memory cache, dropped with the config at every rotation: see [`ServerSessions`]).
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
