//! The mTLS side of the inbound hop: the server config the identity provides, the client's
//! verified identity, and the watch that closes a connection whose client is no longer trusted.

use std::net::SocketAddr;
use std::sync::Arc;

use docmesh_certs::SpiffeId;

/// The SPIFFE ID the calling workload proved with its client SVID; attached to every inbound
/// HTTP request's extensions (`req.extensions().get::<PeerIdentity>()`) so that authorization
/// can read it. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    spiffe_id: Arc<SpiffeId>,
    addr: SocketAddr,
}

impl PeerIdentity {
    /// A verified peer identity and the peer's socket address.
    pub fn new(spiffe_id: SpiffeId, addr: SocketAddr) -> Self {
        PeerIdentity {
            spiffe_id: Arc::new(spiffe_id),
            addr,
        }
    }

    /// The peer's SPIFFE ID, e.g. `spiffe://example.org/ns/oo/sa/integrator`.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The peer's address (its sidecar's outbound socket).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Provides the rustls server config of the mesh hop (implemented by the identity module's
/// `Identity`): TLS 1.3 only, client SVID required and verified against the bundles, ALPN
/// `h2`, `http/1.1`, `docmesh-tcp`.
pub trait ServerTls: Send + Sync + 'static {
    /// The current server config; called per connection, so it must be cheap (an `Arc`
    /// clone of a config built once).
    fn server_config(&self) -> Arc<rustls::ServerConfig>;

    /// Wakes on every change of the trust bundles (`None`: they never change).
    fn bundle_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Whether a client chain verified at an earlier handshake still verifies against the
    /// current bundles; connections whose client no longer does are wound down after a
    /// change (a TLS connection is verified only at its handshake).
    fn still_trusts(&self, _chain: &[rustls_pki_types::CertificateDer<'static>]) -> bool {
        true
    }
}

impl ServerTls for crate::identity::Identity {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        crate::identity::Identity::server_config(self)
    }

    fn bundle_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(crate::identity::Identity::bundle_changes(self))
    }

    fn still_trusts(&self, chain: &[rustls_pki_types::CertificateDer<'static>]) -> bool {
        use rustls::server::danger::ClientCertVerifier as _;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        docmesh_certs::tls::SpiffeClientVerifier::new(self.shared_bundles())
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .is_ok()
    }
}

/// Resolves once the trust of `chain` is lost: after a change of `server`'s trust bundles
/// that no longer verify it. Never resolves when the bundles do not change (an SVID renewal
/// alone re-verifies nothing, so frequent renewals cost open connections nothing).
pub(super) async fn trust_lost(
    server: &dyn ServerTls,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) {
    let Some(mut changes) = server.bundle_changes() else {
        return std::future::pending().await;
    };
    while changes.changed().await.is_ok() {
        if !server.still_trusts(chain) {
            return;
        }
    }
    std::future::pending().await
}

/// How the inbound side secures the hop.
#[derive(Clone)]
pub enum MeshServer {
    /// No TLS: every connection is plaintext (tests of the non-TLS path, with permissive mode).
    Plaintext,
    /// mTLS with a required client SVID.
    Mtls(Arc<dyn ServerTls>),
}

impl std::fmt::Debug for MeshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshServer::Plaintext => "MeshServer::Plaintext",
            MeshServer::Mtls(_) => "MeshServer::Mtls",
        })
    }
}
