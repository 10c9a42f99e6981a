//! The Workload API source against the in-test Workload API server.

use std::time::Duration;

use super::workload_server::{raw_fetch, WorkloadApiServer, X509Svid, X509SvidResponse};
use super::*;
use crate::config::identity::{IdentityConfig, IdentitySource};
use crate::lifecycle::Lifecycle;

fn response(ca: &CertificateAuthority, s: &IssuedSvid) -> X509SvidResponse {
    X509SvidResponse {
        svids: vec![X509Svid {
            spiffe_id: s.id.to_string(),
            x509_svid: s.chain.iter().flat_map(|c| c.as_ref().to_vec()).collect(),
            x509_svid_key: s.key_der.clone(),
            bundle: ca.root_cert_der().as_ref().to_vec(),
            hint: String::new(),
        }],
        ..Default::default()
    }
}

fn cfg(server: &WorkloadApiServer) -> IdentityConfig {
    IdentityConfig {
        source: IdentitySource::WorkloadApi,
        workload_api_socket: Some(server.endpoint()),
        startup_timeout: Duration::from_secs(10),
        ..IdentityConfig::default()
    }
}

#[tokio::test]
async fn initial_svid_then_streamed_rotation_and_bundle_update() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("mesh.test");
    let first = issue(&ca, B);
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"), response(&ca, &first));

    let lifecycle = Lifecycle::new();
    let b = Identity::start(&cfg(&server), &lifecycle).await.unwrap();
    assert!(lifecycle.is_ready());
    assert_eq!(b.spiffe_id(), sid(B));
    assert_eq!(b.svid_info().source, "workload-api");
    assert_eq!(b.certified_key().cert[0].as_ref(), first.chain[0].as_ref());
    assert!(server.calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let a = identity(&ca, A);
    let (c, s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    let (mut old_c, mut old_s) = (c.unwrap(), s.unwrap());

    // A rotation streamed by the agent.
    let mut rotations = b.rotations();
    let second = issue(&ca, B);
    server.publish(response(&ca, &second));
    tokio::time::timeout(Duration::from_secs(10), rotations.changed())
        .await
        .expect("the streamed rotation must arrive")
        .unwrap();
    assert_eq!(b.certified_key().cert[0].as_ref(), second.chain[0].as_ref());
    ping(&mut old_c, &mut old_s).await;
    let (c, _s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_HTTP1])).await;
    assert_eq!(
        c.unwrap().get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        second.chain[0].as_ref()
    );

    // A federated bundle arrives: peers of that trust domain become verifiable.
    // The partner already trusts us (its bundle holds both roots).
    let partner_ca = super::ca("partner.test");
    let p = issue(&partner_ca, "spiffe://partner.test/ns/x/sa/editor");
    let partner = Identity::from_pem(
        p.cert_chain_pem.as_bytes(),
        p.key_pem.as_bytes(),
        format!("{}{}", partner_ca.root_cert_pem(), ca.root_cert_pem()).as_bytes(),
    )
    .unwrap();
    let (c, s) = handshake(
        partner.server_config(),
        b.client_config(&sid("spiffe://partner.test/ns/x/sa/editor"), &[ALPN_H2]),
    )
    .await;
    assert!(c.is_err() || s.is_err(), "partner not trusted yet");
    let mut resp = response(&ca, &second);
    resp.federated_bundles.insert(
        "spiffe://partner.test".into(),
        partner_ca.root_cert_der().as_ref().to_vec(),
    );
    server.publish(resp);
    tokio::time::timeout(Duration::from_secs(10), rotations.changed())
        .await
        .expect("the bundle update must arrive")
        .unwrap();
    assert_eq!(
        b.svid_info().trust_domains,
        vec!["mesh.test".to_string(), "partner.test".to_string()]
    );
    let (c, s) = handshake(
        partner.server_config(),
        b.client_config(&sid("spiffe://partner.test/ns/x/sa/editor"), &[ALPN_H2]),
    )
    .await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn calls_without_the_security_header_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("mesh.test");
    let socket = dir.path().join("agent.sock");
    let server = WorkloadApiServer::start(&socket, response(&ca, &issue(&ca, B)));
    assert_eq!(
        raw_fetch(&socket, false).await,
        tonic::Code::InvalidArgument
    );
    assert_eq!(server.rejected.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(raw_fetch(&socket, true).await, tonic::Code::Ok);
}

#[tokio::test]
async fn an_unreachable_agent_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = IdentityConfig {
        source: IdentitySource::WorkloadApi,
        workload_api_socket: Some(format!("unix://{}", dir.path().join("none.sock").display())),
        startup_timeout: Duration::from_millis(300),
        ..IdentityConfig::default()
    };
    let lifecycle = Lifecycle::new();
    let err = Identity::start(&c, &lifecycle).await.unwrap_err();
    assert!(err.to_string().contains("none.sock"), "{err}");
    assert!(!lifecycle.is_ready());
}
