//! Identity tests: real TLS 1.3 handshakes over in-memory duplex pipes and loopback, with
//! certificates from the certs library's dev CA.

mod files;
mod workload;
pub(crate) mod workload_server;

use std::sync::Arc;
use std::time::Duration;

use docmesh_certs::ca::{CertificateAuthority, IssuedSvid, KeyAlgorithm};
use docmesh_certs::spiffe_id::SpiffeId;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::tls::{ALPN_H2, ALPN_HTTP1, ALPN_TCP};
use super::*;

pub(crate) fn ca(td: &str) -> CertificateAuthority {
    CertificateAuthority::generate(
        &td.parse().unwrap(),
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86_400),
    )
    .unwrap()
}

pub(crate) fn sid(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

pub(crate) fn issue(ca: &CertificateAuthority, id: &str) -> IssuedSvid {
    ca.issue_svid(&sid(id), Duration::from_secs(3600)).unwrap()
}

pub(crate) fn identity(ca: &CertificateAuthority, id: &str) -> Identity {
    let s = issue(ca, id);
    Identity::from_pem(
        s.cert_chain_pem.as_bytes(),
        s.key_pem.as_bytes(),
        ca.root_cert_pem().as_bytes(),
    )
    .unwrap()
}

pub(crate) type Pair = (
    std::io::Result<client::TlsStream<DuplexStream>>,
    std::io::Result<server::TlsStream<DuplexStream>>,
);

/// Runs both sides of one handshake over an in-memory pipe.
pub(crate) async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Pair {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("peer.mesh").unwrap();
    let fut = async {
        tokio::join!(
            TlsConnector::from(client).connect(name, c),
            TlsAcceptor::from(server).accept(s)
        )
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("handshake must finish")
}

/// Sends a byte each way; proves the connection carries data.
pub(crate) async fn ping(
    c: &mut client::TlsStream<DuplexStream>,
    s: &mut server::TlsStream<DuplexStream>,
) {
    c.write_all(b"p").await.unwrap();
    c.flush().await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    s.write_all(b"q").await.unwrap();
    s.flush().await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"q");
}

/// The SPIFFE ID in a peer chain.
pub(crate) fn peer_id(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> SpiffeId {
    docmesh_certs::tls::peer_spiffe_id(certs.expect("peer certificates")).expect("a SPIFFE ID")
}

/// The SVID rule a failed handshake broke (from the rustls error inside the io error).
pub(crate) fn broken_rule(e: &std::io::Error) -> Option<&'static str> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    docmesh_certs::tls::svid_error_of(tls).map(|s| s.rule())
}

const A: &str = "spiffe://mesh.test/ns/oo/sa/integrator";
const B: &str = "spiffe://mesh.test/ns/oo/sa/docservice";

#[tokio::test]
async fn mutual_tls_carries_both_spiffe_ids_and_alpn() {
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let b = identity(&ca, B);
    assert_eq!(a.spiffe_id(), sid(A));
    assert_eq!(a.svid_info().source, "fixed");
    assert!(a.svid_expiry() > std::time::SystemTime::now());
    assert_eq!(a.bundles().trust_domains().len(), 1);

    let (c, s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    ping(&mut c, &mut s).await;
    assert_eq!(peer_id(c.get_ref().1.peer_certificates()), sid(B));
    assert_eq!(peer_id(s.get_ref().1.peer_certificates()), sid(A));
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    for proto in [ALPN_HTTP1, ALPN_TCP] {
        let (c, s) = handshake(b.server_config(), a.client_config(&sid(B), &[proto])).await;
        let (c, _s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(proto));
    }
}

#[tokio::test]
async fn wrong_expected_id_fails_as_identity_mismatch() {
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let b = identity(&ca, B);
    let wrong = sid("spiffe://mesh.test/ns/oo/sa/someone-else");
    let (c, _s) = handshake(b.server_config(), a.client_config(&wrong, &[ALPN_H2])).await;
    let err = c.unwrap_err();
    assert_eq!(broken_rule(&err), Some("expected-id"), "{err}");
}

#[tokio::test]
async fn peer_from_another_ca_is_untrusted_both_ways() {
    let a = identity(&ca("mesh.test"), A);
    let b = identity(&ca("mesh.test"), B); // same trust domain, different root key
    let (c, _s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    let err = c.unwrap_err();
    assert_eq!(broken_rule(&err), Some("chain-to-bundle"), "{err}");
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let ca = ca("mesh.test");
    let b = identity(&ca, B);
    // A client that verifies the server properly but has no SVID of its own.
    let verifier = docmesh_certs::tls::SpiffeServerVerifier::new(
        b.shared_bundles(),
        docmesh_certs::tls::ExpectedPeer::Exact(sid(B)),
    );
    let client = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (c, s) = handshake(b.server_config(), Arc::new(client)).await;
    let err = s.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // TLS 1.3: the client only learns it on its first read.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).await.is_err() || buf == [0]);
    }
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let b = identity(&ca, B);
    let verifier = docmesh_certs::tls::SpiffeServerVerifier::new(
        a.shared_bundles(),
        docmesh_certs::tls::ExpectedPeer::Exact(sid(B)),
    );
    let client = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (c, s) = handshake(b.server_config(), Arc::new(client)).await;
    assert!(c.is_err());
    let err = s.unwrap_err();
    assert!(err.to_string().contains("Tls12NotOffered"), "{err}");
}

#[tokio::test]
async fn client_configs_are_cached_per_id_and_alpn_and_resume_sessions() {
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let b = identity(&ca, B);
    let c1 = a.client_config(&sid(B), &[ALPN_H2]);
    assert!(Arc::ptr_eq(&c1, &a.client_config(&sid(B), &[ALPN_H2])));
    assert!(!Arc::ptr_eq(&c1, &a.client_config(&sid(B), &[ALPN_HTTP1])));
    assert!(!Arc::ptr_eq(&c1, &a.client_config(&sid(A), &[ALPN_H2])));
    assert!(Arc::ptr_eq(&b.server_config(), &b.server_config()));

    let (c, s) = handshake(b.server_config(), c1.clone()).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    ping(&mut c, &mut s).await; // receives the session tickets
    assert_eq!(
        c.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    let (c, s) = handshake(b.server_config(), c1).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    ping(&mut c, &mut s).await;
    assert_eq!(
        c.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // The resumed session still tells the server who the client is.
    assert_eq!(peer_id(s.get_ref().1.peer_certificates()), sid(A));
}

/// Installs a new SVID for `id` from `ca` (the current bundles stay), as a source does.
fn rotate(identity: &Identity, ca: &CertificateAuthority, id: &str) -> IssuedSvid {
    let s = issue(ca, id);
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(s.key_der.clone().into());
    let bundles = (*identity.bundles()).clone();
    let svid = material::Svid::build(s.chain.clone(), key, &bundles, &provider(), "test").unwrap();
    identity.install(svid, bundles);
    s
}

/// One connection from `a` to `b` with a byte each way (so the client takes its session
/// tickets): how it was established, and the leaf the server knows the client by.
async fn session(a: &Identity, b: &Identity) -> (rustls::HandshakeKind, Vec<u8>) {
    let (c, s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    ping(&mut c, &mut s).await;
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (c.get_ref().1.handshake_kind().unwrap(), leaf)
}

#[test]
fn an_svid_renewal_is_a_rotation_but_not_a_bundle_change() {
    let other = ca("other.test").root_cert_pem().to_owned();
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let (rotations, mut bundle_changes) = (a.rotations(), a.bundle_changes());
    rotate(&a, &ca, A);
    assert_eq!(*rotations.borrow(), 1);
    assert!(
        !bundle_changes.has_changed().unwrap(),
        "same roots: no bundle change"
    );

    let mut bundles = (*a.bundles()).clone();
    bundles.merge(&TrustBundleSet::from_pem_auto(other.as_bytes(), None).unwrap());
    let s = issue(&ca, A);
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(s.key_der.clone().into());
    let svid = material::Svid::build(s.chain.clone(), key, &bundles, &provider(), "test").unwrap();
    a.install(svid, bundles);
    assert_eq!(*rotations.borrow(), 2);
    assert!(
        bundle_changes.has_changed().unwrap(),
        "a root added: a bundle change"
    );
    assert_eq!(*bundle_changes.borrow_and_update(), 1);
}

#[tokio::test]
async fn rotations_forget_tls_sessions_so_new_connections_are_verified_again() {
    use rustls::HandshakeKind::{Full, Resumed};
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let b = identity(&ca, B);
    let (kind, _) = session(&a, &b).await;
    assert_eq!(kind, Full);
    assert_eq!(
        session(&a, &b).await.0,
        Resumed,
        "sessions resume between rotations"
    );

    // The client rotates: a resumed session would carry its old leaf (resumption skips
    // certificates); its next connection is a full handshake with the new one.
    let new_a = rotate(&a, &ca, A);
    assert_eq!(session(&a, &b).await, (Full, new_a.chain[0].to_vec()));
    assert_eq!(session(&a, &b).await.0, Resumed);

    // The server rotates: the client still offers its session, the server no longer
    // accepts it (a session from before a root was removed must not let a peer in).
    rotate(&b, &ca, B);
    assert_eq!(session(&a, &b).await.0, Full);
}

#[test]
fn from_pem_rejects_bad_material_with_clear_errors() {
    let ca1 = ca("mesh.test");
    let s = issue(&ca1, A);
    let root = ca1.root_cert_pem().as_bytes();

    let err = Identity::from_pem(b"not pem", s.key_pem.as_bytes(), root).unwrap_err();
    assert!(matches!(err, IdentityError::Pem { .. }), "{err}");
    assert!(err.to_string().contains("certificate chain"), "{err}");

    let half = &s.cert_chain_pem.as_bytes()[..s.cert_chain_pem.len() / 2];
    let err = Identity::from_pem(half, s.key_pem.as_bytes(), root).unwrap_err();
    assert!(matches!(err, IdentityError::Pem { .. }), "{err}");

    let other = issue(&ca1, B);
    let err = Identity::from_pem(s.cert_chain_pem.as_bytes(), other.key_pem.as_bytes(), root)
        .unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");

    let ca2 = ca("mesh.test");
    let err = Identity::from_pem(
        s.cert_chain_pem.as_bytes(),
        s.key_pem.as_bytes(),
        ca2.root_cert_pem().as_bytes(),
    )
    .unwrap_err();
    match &err {
        IdentityError::Rejected { source, .. } => assert_eq!(source.rule(), "chain-to-bundle"),
        other => panic!("expected Rejected, got {other}"),
    }

    let now = time::OffsetDateTime::now_utc();
    let expired = ca1
        .issue_svid_with(
            &sid(A),
            now - time::Duration::hours(2),
            now - time::Duration::hours(1),
        )
        .unwrap();
    let err = Identity::from_pem(
        expired.cert_chain_pem.as_bytes(),
        expired.key_pem.as_bytes(),
        root,
    )
    .unwrap_err();
    match &err {
        IdentityError::Rejected { source, .. } => assert_eq!(source.rule(), "validity"),
        other => panic!("expected Rejected, got {other}"),
    }
}

#[tokio::test]
async fn svid_info_and_metrics_describe_the_current_svid() {
    let ca = ca("mesh.test");
    let a = identity(&ca, A);
    let info = a.svid_info();
    assert_eq!(info.spiffe_id, A);
    assert_eq!(info.trust_domains, vec!["mesh.test".to_string()]);
    assert!(info.serial.contains(':'));

    let m = crate::metrics::Metrics::new();
    a.register_metrics(&m);
    let mesh = crate::observe::metrics::MeshMetrics::register(&m, &Default::default());
    let _feed = a.on_change(move |i| {
        let unix = i
            .not_after
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        mesh.svid_loaded(&i.spiffe_id, unix);
    });
    let text = m.encode().unwrap();
    let expiry = info
        .not_after
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        text.contains(&format!(
            "docmesh_svid_expiry_timestamp_seconds{{spiffe_id=\"{A}\"}} {expiry}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("docmesh_svid_seconds_left{{spiffe_id=\"{A}\"}} 3")),
        "{text}"
    );
    assert!(text.contains("docmesh_svid_rotations_total 0"), "{text}");
    // Every family appears once (no name is registered twice).
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let n = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), n, "{text}");
}

#[test]
fn startup_timeout_names_the_wait_in_whole_milliseconds() {
    let e = super::IdentityError::StartupTimeout {
        source_kind: "files",
        waited: std::time::Duration::from_nanos(29_044_935_747),
        last: "cannot read /run/svid.pem".into(),
    };
    assert_eq!(
        e.to_string(),
        "no valid SVID from the files source within 29s 44ms: cannot read /run/svid.pem"
    );
}
