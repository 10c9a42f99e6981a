//! `diagnose` over real mTLS handshakes with dev-CA SVIDs: a healthy peer, the wrong identity
//! (checked by diagnose, and refused by an exact-ID verifier), an untrusted chain, and a peer
//! that rejects our SVID.

use std::sync::Arc;

use crate::support::{
    dev_ca, start_true_peer, svid, CertificateAuthority, IssuedSvid, TrustBundleSet,
};
use arc_swap::ArcSwap;
use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};
use docmesh_proxy::diagnose::{diagnose, Report, StepStatus, Target, Timeouts, TlsClient};

const CONVERTER: &str = "spiffe://example.org/ns/office/sa/converter";
const DOCSERVICE: &str = "spiffe://example.org/ns/office/sa/docservice";

fn ca() -> CertificateAuthority {
    dev_ca("example.org")
}

fn shared(ca: &CertificateAuthority) -> Arc<ArcSwap<TrustBundleSet>> {
    Arc::new(ArcSwap::from_pointee(ca.bundle()))
}

/// A docmesh-like inbound presenting `server`, trusting `server_ca`, answering `200 true`.
async fn peer(server_ca: &CertificateAuthority, server: &IssuedSvid) -> u16 {
    start_true_peer(server_ca, server).await
}

fn client(ca: &CertificateAuthority, me: &IssuedSvid, expected: ExpectedPeer) -> TlsClient {
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(shared(ca), expected)))
        .with_client_auth_cert(me.chain.clone(), me.private_key())
        .unwrap();
    TlsClient {
        config: Arc::new(config),
        our_id: Some(me.id.to_string()),
    }
}

fn target(port: u16, expected: &str) -> Target {
    let mut t = Target::from_url(&format!("https://127.0.0.1:{port}/healthcheck")).unwrap();
    t.expected_id = Some(expected.to_owned());
    t.expect_body = Some("true".into());
    t
}

fn step(r: &Report, name: &str) -> StepStatus {
    r.steps.iter().find(|s| s.name == name).unwrap().status
}

fn cause(r: &Report) -> &str {
    r.finding.as_ref().map_or("", |f| f.cause.as_str())
}

#[tokio::test]
async fn healthy_mesh_hop() {
    let ca = ca();
    let port = peer(&ca, &svid(&ca, CONVERTER)).await;
    let c = client(&ca, &svid(&ca, DOCSERVICE), ExpectedPeer::AnyInBundle);
    let r = diagnose(&target(port, CONVERTER), Some(&c), &Timeouts::default()).await;
    assert!(r.ok, "{}", r.to_text());
    let text = r.to_text();
    assert!(
        text.contains(&format!("{CONVERTER} (as expected)")),
        "{text}"
    );
    assert!(text.contains("all steps passed"), "{text}");
}

#[tokio::test]
async fn wrong_identity_is_named_with_expected_and_got() {
    let ca = ca();
    let port = peer(&ca, &svid(&ca, DOCSERVICE)).await;
    // Diagnose's own check (client accepts any SVID of the bundle).
    let c = client(&ca, &svid(&ca, DOCSERVICE), ExpectedPeer::AnyInBundle);
    let r = diagnose(&target(port, CONVERTER), Some(&c), &Timeouts::default()).await;
    assert_eq!(cause(&r), "identity-mismatch", "{}", r.to_text());
    assert_eq!(step(&r, "tls"), StepStatus::Ok);
    assert_eq!(step(&r, "identity"), StepStatus::Failed);
    let f = r.finding.clone().unwrap();
    assert!(
        f.summary.contains(CONVERTER) && f.summary.contains(DOCSERVICE),
        "{f:?}"
    );

    // The data path's verifier (exact ID) refuses in the handshake: same finding.
    let exact = ExpectedPeer::Exact(CONVERTER.parse().unwrap());
    let c = client(&ca, &svid(&ca, DOCSERVICE), exact);
    let r = diagnose(&target(port, CONVERTER), Some(&c), &Timeouts::default()).await;
    assert_eq!(cause(&r), "identity-mismatch", "{}", r.to_text());
    assert_eq!(step(&r, "identity"), StepStatus::Failed);
}

#[tokio::test]
async fn untrusted_chain() {
    let (ours, theirs) = (ca(), ca());
    let port = peer(&theirs, &svid(&theirs, CONVERTER)).await;
    let c = client(&ours, &svid(&ours, DOCSERVICE), ExpectedPeer::AnyInBundle);
    let r = diagnose(&target(port, CONVERTER), Some(&c), &Timeouts::default()).await;
    assert_eq!(cause(&r), "tls-untrusted-peer", "{}", r.to_text());
    assert_eq!(step(&r, "tls"), StepStatus::Failed);
    let summary = r.finding.unwrap().summary;
    assert!(summary.contains("trust bundle"), "{summary}");
}

#[tokio::test]
async fn peer_rejecting_our_svid() {
    let (ours, theirs) = (ca(), ca());
    let port = peer(&theirs, &svid(&theirs, CONVERTER)).await;
    // We trust the peer's CA, but our own SVID comes from a CA the peer does not trust.
    let c = client(&theirs, &svid(&ours, DOCSERVICE), ExpectedPeer::AnyInBundle);
    let r = diagnose(&target(port, CONVERTER), Some(&c), &Timeouts::default()).await;
    assert_eq!(cause(&r), "tls-rejected-by-peer", "{}", r.to_text());
}
