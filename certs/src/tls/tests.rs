use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::ca::{CertificateAuthority, IssuedSvid, KeyAlgorithm};
use crate::spiffe_id::TrustDomain;

fn td(s: &str) -> TrustDomain {
    s.parse().unwrap()
}

fn id(s: &str) -> SpiffeId {
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

fn shared(b: TrustBundleSet) -> SharedBundles {
    Arc::new(ArcSwap::from_pointee(b))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(svid: &IssuedSvid, bundles: SharedBundles) -> Arc<ServerConfig> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundles)))
        .with_single_cert(svid.chain.clone(), svid.private_key())
        .unwrap();
    Arc::new(cfg)
}

fn client_config(
    svid: Option<&IssuedSvid>,
    bundles: SharedBundles,
    expected: ExpectedPeer,
) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(bundles, expected)));
    let cfg = match svid {
        Some(s) => b
            .with_client_auth_cert(s.chain.clone(), s.private_key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// One real TLS handshake over 127.0.0.1; returns (server result with the client's ID,
/// client result).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (Result<SpiffeId, std::io::Error>, Result<(), std::io::Error>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or(&[]))
            .ok_or_else(|| std::io::Error::other("no peer SPIFFE ID"))?;
        tls.write_all(b"ok").await?;
        tls.shutdown().await?;
        Ok(peer)
    });
    let cli = async move {
        let tcp = TcpStream::connect(addr).await?;
        // Deliberately a name that matches nothing: ServerName must be ignored.
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        assert_eq!(buf, b"ok");
        Ok(())
    };
    let bounded = Duration::from_secs(10);
    let c = tokio::time::timeout(bounded, cli)
        .await
        .expect("client timed out");
    let s = tokio::time::timeout(bounded, srv)
        .await
        .expect("server timed out")
        .unwrap();
    (s, c)
}

fn svid_err(e: &std::io::Error) -> SvidError {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"));
    svid_error_of(inner)
        .unwrap_or_else(|| panic!("not an SvidError: {inner:?}"))
        .clone()
}

#[tokio::test]
async fn mutual_tls_by_spiffe_id() {
    let a = ca("a.local");
    let srv = a
        .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
        .unwrap();
    let cli = a
        .issue_svid(&id("spiffe://a.local/client"), Duration::from_secs(600))
        .unwrap();
    let b = shared(a.bundle());
    let (s, c) = handshake(
        server_config(&srv, b.clone()),
        client_config(Some(&cli), b.clone(), ExpectedPeer::Exact(srv.id.clone())),
    )
    .await;
    c.unwrap();
    assert_eq!(s.unwrap(), cli.id);
    let (s, c) = handshake(
        server_config(&srv, b.clone()),
        client_config(Some(&cli), b, ExpectedPeer::AnyInBundle),
    )
    .await;
    c.unwrap();
    assert_eq!(s.unwrap(), cli.id);
}

#[tokio::test]
async fn identity_mismatch_is_distinguishable() {
    let a = ca("a.local");
    let srv = a
        .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
        .unwrap();
    let cli = a
        .issue_svid(&id("spiffe://a.local/client"), Duration::from_secs(600))
        .unwrap();
    let b = shared(a.bundle());
    let want = id("spiffe://a.local/someone-else");
    let (_, c) = handshake(
        server_config(&srv, b.clone()),
        client_config(Some(&cli), b, ExpectedPeer::Exact(want.clone())),
    )
    .await;
    assert_eq!(
        svid_err(&c.unwrap_err()),
        SvidError::IdentityMismatch {
            expected: want,
            got: srv.id.clone()
        }
    );
}

#[tokio::test]
async fn untrusted_server_and_client_are_rejected() {
    let a = ca("a.local");
    let evil = ca("a.local");
    let other = ca("b.local");
    let b = shared(a.bundle());
    let good_srv = a
        .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
        .unwrap();
    let good_cli = a
        .issue_svid(&id("spiffe://a.local/client"), Duration::from_secs(600))
        .unwrap();
    // Server from an impostor CA: the client refuses it.
    let bad_srv = evil
        .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
        .unwrap();
    let (_, c) = handshake(
        server_config(&bad_srv, b.clone()),
        client_config(Some(&good_cli), b.clone(), ExpectedPeer::AnyInBundle),
    )
    .await;
    assert_eq!(svid_err(&c.unwrap_err()).rule(), "chain-to-bundle");
    // Client from a trust domain we have no bundle for: the server refuses it.
    let foreign_cli = other
        .issue_svid(&id("spiffe://b.local/client"), Duration::from_secs(600))
        .unwrap();
    let (s, _) = handshake(
        server_config(&good_srv, b.clone()),
        client_config(Some(&foreign_cli), b.clone(), ExpectedPeer::AnyInBundle),
    )
    .await;
    assert_eq!(svid_err(&s.unwrap_err()).rule(), "own-trust-domain");
    // No client certificate at all: mandatory client auth fails.
    let (s, _) = handshake(
        server_config(&good_srv, b.clone()),
        client_config(None, b, ExpectedPeer::AnyInBundle),
    )
    .await;
    assert!(s.is_err());
}

#[tokio::test]
async fn bundle_swap_takes_effect_without_new_config() {
    let old = ca("a.local");
    let new = ca("a.local");
    let srv = new
        .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
        .unwrap();
    let cli = new
        .issue_svid(&id("spiffe://a.local/client"), Duration::from_secs(600))
        .unwrap();
    let b = shared(old.bundle());
    let scfg = server_config(&srv, b.clone());
    let ccfg = client_config(Some(&cli), b.clone(), ExpectedPeer::Exact(srv.id.clone()));
    let (_, c) = handshake(scfg.clone(), ccfg.clone()).await;
    assert!(c.is_err());
    b.store(Arc::new(TrustBundleSet::merged([
        &old.bundle(),
        &new.bundle(),
    ])));
    let (s, c) = handshake(scfg, ccfg).await;
    c.unwrap();
    assert_eq!(s.unwrap(), cli.id);
}

#[test]
fn helpers_on_non_svid_input() {
    assert!(peer_spiffe_id(&[]).is_none());
    assert!(svid_error_of(&rustls::Error::General("x".into())).is_none());
    let e = to_rustls_error(SvidError::EmptyChain);
    assert_eq!(svid_error_of(&e), Some(&SvidError::EmptyChain));
}

#[tokio::test]
async fn handshakes_with_every_key_algorithm_and_an_intermediate() {
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa3072] {
        let mut ca =
            CertificateAuthority::generate(&td("a.local"), alg, Duration::from_secs(86400))
                .unwrap();
        ca.add_intermediate(Duration::from_secs(3600)).unwrap();
        let srv = ca
            .issue_svid(&id("spiffe://a.local/server"), Duration::from_secs(600))
            .unwrap();
        let cli = ca
            .issue_svid(&id("spiffe://a.local/client"), Duration::from_secs(600))
            .unwrap();
        let b = shared(ca.bundle());
        let (s, c) = handshake(
            server_config(&srv, b.clone()),
            client_config(Some(&cli), b, ExpectedPeer::Exact(srv.id.clone())),
        )
        .await;
        c.unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(s.unwrap(), cli.id, "{alg}");
    }
}
