//! The files source: startup, rotation under an open connection, and the half-written-file race.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::identity::{IdentityConfig, IdentitySource};
use crate::identity::files::{load_initial, PollOutcome, Watcher};
use crate::lifecycle::Lifecycle;

fn cfg(dir: &Path, reload: Duration) -> IdentityConfig {
    IdentityConfig {
        source: IdentitySource::Files,
        cert: dir.join("svid.pem"),
        key: dir.join("svid.key"),
        bundle: dir.join("bundle.pem"),
        reload_interval: reload,
        startup_timeout: Duration::from_secs(10),
        ..IdentityConfig::default()
    }
}

fn write(cfg: &IdentityConfig, s: &IssuedSvid, bundle: &str) {
    std::fs::write(&cfg.cert, &s.cert_chain_pem).unwrap();
    std::fs::write(&cfg.key, &s.key_pem).unwrap();
    std::fs::write(&cfg.bundle, bundle).unwrap();
}

fn leaf(s: &IssuedSvid) -> Vec<u8> {
    s.chain[0].as_ref().to_vec()
}

#[tokio::test]
async fn rotation_reaches_new_handshakes_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("mesh.test");
    let cfg = cfg(dir.path(), Duration::from_millis(20));
    let first = issue(&ca, B);
    write(&cfg, &first, ca.root_cert_pem());

    let lifecycle = Lifecycle::new();
    let b = Identity::start(&cfg, &lifecycle).await.unwrap();
    assert!(
        lifecycle.is_ready(),
        "the identity gate opens once the SVID is loaded"
    );
    assert_eq!(b.spiffe_id(), sid(B));
    assert_eq!(b.svid_info().source, "files");
    let a = identity(&ca, A);

    // One connection opened before the rotation, in each direction.
    let (c, s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    let (mut old_c, mut old_s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        old_c.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        leaf(&first)
    );
    let (c, s) = handshake(a.server_config(), b.client_config(&sid(A), &[ALPN_TCP])).await;
    let (mut old_c2, mut old_s2) = (c.unwrap(), s.unwrap());

    let mut rotations = b.rotations();
    let second = issue(&ca, B);
    write(&cfg, &second, ca.root_cert_pem());
    tokio::time::timeout(Duration::from_secs(10), rotations.changed())
        .await
        .expect("the watcher must pick up the new files")
        .unwrap();
    assert_eq!(b.svid_info().rotations, 1);
    assert_ne!(b.svid_info().serial, "");

    // Open connections keep working.
    ping(&mut old_c, &mut old_s).await;
    ping(&mut old_c2, &mut old_s2).await;

    // New handshakes present the new SVID, as server and as client.
    let fresh = a.client_config(&sid(B), &[ALPN_HTTP1]); // no cached session
    let (c, s) = handshake(b.server_config(), fresh).await;
    let (c, _s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        c.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        leaf(&second)
    );
    let (c, s) = handshake(a.server_config(), b.client_config(&sid(A), &[ALPN_H2])).await;
    let (_c, s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        leaf(&second)
    );
}

#[tokio::test]
async fn half_written_or_mismatched_files_keep_the_old_svid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("mesh.test");
    let cfg = cfg(dir.path(), Duration::from_secs(3600));
    let first = issue(&ca, B);
    write(&cfg, &first, ca.root_cert_pem());
    let (b, fp) = load_initial(&cfg).await.unwrap();
    let mut w = Watcher::new(cfg.clone(), fp);
    let serial = b.svid_info().serial;

    assert_eq!(w.poll(&b).await, PollOutcome::Unchanged);

    // The writer got half way through the new certificate.
    let second = issue(&ca, B);
    let pem = &second.cert_chain_pem;
    std::fs::write(&cfg.cert, &pem[..pem.len() / 2]).unwrap();
    match w.poll(&b).await {
        PollOutcome::Rejected(why) => assert!(why.contains("svid.pem"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(b.svid_info().serial, serial);
    assert_eq!(w.poll(&b).await, PollOutcome::Unchanged, "same bad version");

    // The whole certificate is there, the key is still the old one.
    std::fs::write(&cfg.cert, pem).unwrap();
    match w.poll(&b).await {
        PollOutcome::Rejected(why) => assert!(why.contains("does not match"), "{why}"),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    assert_eq!(b.svid_info().serial, serial);
    let a = identity(&ca, A);
    let (c, _s) = handshake(b.server_config(), a.client_config(&sid(B), &[ALPN_H2])).await;
    assert_eq!(
        c.unwrap().get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        leaf(&first)
    );

    // The key arrives: the pair is installed.
    std::fs::write(&cfg.key, &second.key_pem).unwrap();
    assert_eq!(w.poll(&b).await, PollOutcome::Installed);
    assert_ne!(b.svid_info().serial, serial);
    assert_eq!(w.poll(&b).await, PollOutcome::Unchanged);

    // A deleted file is a read error, and the SVID stays.
    std::fs::remove_file(&cfg.bundle).unwrap();
    match w.poll(&b).await {
        PollOutcome::ReadError(why) => assert!(why.contains("bundle.pem"), "{why}"),
        other => panic!("expected a read error, got {other:?}"),
    }
    assert_eq!(b.spiffe_id(), sid(B));
}

#[tokio::test]
async fn a_new_bundle_with_old_and_new_roots_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = ca("mesh.test");
    let new_ca = ca("mesh.test");
    let cfg = cfg(dir.path(), Duration::from_secs(3600));
    write(&cfg, &issue(&old_ca, B), old_ca.root_cert_pem());
    let (b, fp) = load_initial(&cfg).await.unwrap();
    let mut w = Watcher::new(cfg.clone(), fp);
    let peer_on_new_ca = identity(&new_ca, A);
    let (c, s) = handshake(
        peer_on_new_ca.server_config(),
        b.client_config(&sid(A), &[ALPN_H2]),
    )
    .await;
    assert!(c.is_err() || s.is_err(), "new CA not trusted yet");

    // CA rotation: the bundle holds old and new roots, our SVID is from the new CA.
    let both = format!("{}{}", old_ca.root_cert_pem(), new_ca.root_cert_pem());
    write(&cfg, &issue(&new_ca, B), &both);
    assert_eq!(w.poll(&b).await, PollOutcome::Installed);
    let (c, s) = handshake(
        peer_on_new_ca.server_config(),
        b.client_config(&sid(A), &[ALPN_H2]),
    )
    .await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn startup_waits_for_files_and_times_out_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("mesh.test");
    let mut c = cfg(dir.path(), Duration::from_millis(20));

    c.startup_timeout = Duration::ZERO;
    let lifecycle = Lifecycle::new();
    let err = Identity::start(&c, &lifecycle).await.unwrap_err();
    assert!(matches!(err, IdentityError::StartupTimeout { .. }), "{err}");
    assert!(err.to_string().contains("svid.pem"), "{err}");
    assert_eq!(lifecycle.closed_gates(), vec![READY_GATE.to_string()]);

    // Files that appear after startup began are picked up.
    c.startup_timeout = Duration::from_secs(20);
    let lifecycle = Lifecycle::new();
    let starting = tokio::spawn({
        let (c, l) = (c.clone(), lifecycle.clone());
        async move { Identity::start(&c, &l).await }
    });
    write(&c, &issue(&ca, B), ca.root_cert_pem());
    let id = tokio::time::timeout(Duration::from_secs(15), starting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id.spiffe_id(), sid(B));
    assert!(lifecycle.is_ready());
}
