use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use time::OffsetDateTime;

use super::*;
use crate::ca::{CertificateAuthority, KeyAlgorithm};

fn ca() -> CertificateAuthority {
    let td = "renew.test".parse().unwrap();
    CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))
        .unwrap()
}

fn issue(ca: &CertificateAuthority, dir: &Path, path: &str, ttl: u64) {
    let id: SpiffeId = format!("spiffe://renew.test/{path}").parse().unwrap();
    let svid = ca.issue_svid(&id, Duration::from_secs(ttl)).unwrap();
    crate::ca::write_files(dir, &svid.files(ca.root_cert_pem()), false).unwrap();
}

const POLICY: RenewPolicy = RenewPolicy {
    renew_at: 0.5,
    ttl: None,
};

#[test]
fn renews_only_what_is_due_and_keeps_id_lifetime_and_modes() {
    let ca = ca();
    let root = tempfile::tempdir().unwrap();
    issue(&ca, &root.path().join("a"), "ns/x/sa/a", 3600);
    issue(&ca, &root.path().join("deep/b"), "ns/x/sa/b", 3600);
    let key = root.path().join("a/svid.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    // The sidecars' user owns the key (as the compose certs service arranges); root can hand
    // it over, so the test checks ownership where it runs as root (CI does).
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(&key, Some(1337), Some(1337)).unwrap();
    }
    let old_a = std::fs::read(root.path().join("a/svid.pem")).unwrap();

    // Right after issue nothing is due.
    let now = OffsetDateTime::now_utc();
    let res = renew_all(&ca, ca.root_cert_pem(), root.path(), &POLICY, now).unwrap();
    assert_eq!(res.len(), 2);
    assert!(res
        .iter()
        .all(|(_, r)| matches!(r, Ok(Outcome::NotDue { .. }))));

    // 31 minutes later half of the hour has passed.
    let later = now + time::Duration::minutes(31);
    let res = renew_all(&ca, ca.root_cert_pem(), root.path(), &POLICY, later).unwrap();
    for (dir, r) in &res {
        match r {
            Ok(Outcome::Renewed { ttl, capped, .. }) => {
                assert_eq!(*ttl, Duration::from_secs(3600), "{}", dir.display());
                assert!(!capped);
            }
            other => panic!("{}: {other:?}", dir.display()),
        }
    }
    let new_a = SvidOnDisk::read(&root.path().join("a")).unwrap();
    assert_eq!(new_a.id.as_str(), "spiffe://renew.test/ns/x/sa/a");
    assert_ne!(
        std::fs::read(root.path().join("a/svid.pem")).unwrap(),
        old_a
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    if as_root {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1337, 1337));
    }
    // The new key belongs to the new cert, and the chain verifies.
    let chain = std::fs::read(root.path().join("a/svid.pem")).unwrap();
    let key_pem = std::fs::read(&key).unwrap();
    let bundle = std::fs::read(root.path().join("a/bundle.pem")).unwrap();
    let svid = crate::svid::X509Svid::from_pem(&chain, &key_pem).unwrap();
    let set = TrustBundleSet::from_pem_auto(&bundle, None).unwrap();
    validate_svid(&svid.chain, &set, UnixTime::now()).unwrap();
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(root.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn an_svid_of_another_ca_is_renewed_at_once_with_the_rotation_bundle() {
    let old_ca = ca();
    let new_ca = ca();
    let root = tempfile::tempdir().unwrap();
    issue(&old_ca, root.path(), "web", 3600);
    let both = format!("{}{}", old_ca.root_cert_pem(), new_ca.root_cert_pem());
    let res = renew_all(
        &new_ca,
        &both,
        root.path(),
        &POLICY,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    match &res[0].1 {
        Ok(Outcome::Renewed { reason, .. }) => {
            assert!(reason.contains("does not verify"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let bundle = std::fs::read_to_string(root.path().join("bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn ttl_is_capped_by_the_ca_and_bad_input_is_named() {
    let ca = ca();
    let root = tempfile::tempdir().unwrap();
    issue(&ca, root.path(), "web", 600);
    let policy = RenewPolicy {
        renew_at: 1.0,
        ttl: Some(Duration::from_secs(10 * 86400)),
    };
    let later = OffsetDateTime::now_utc() + time::Duration::minutes(11);
    match &renew_all(&ca, ca.root_cert_pem(), root.path(), &policy, later).unwrap()[0].1 {
        Ok(Outcome::Renewed { capped, .. }) => assert!(capped),
        other => panic!("{other:?}"),
    }
    let bad = RenewPolicy {
        renew_at: 1.5,
        ttl: None,
    };
    let e = renew_all(&ca, ca.root_cert_pem(), root.path(), &bad, later).unwrap_err();
    assert!(e.to_string().contains("1.5"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = find_svid_dirs(empty.path()).unwrap_err();
    assert!(e.to_string().contains("no SVIDs under"), "{e}");
}

#[test]
fn ca_expiry_is_warned_about_long_before() {
    let td = "renew.test".parse().unwrap();
    let ca = CertificateAuthority::generate(
        &td,
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(90 * 86400),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(ca_expiry_warning(&ca, Path::new("ca"), now).is_none());
    let w = ca_expiry_warning(&ca, Path::new("ca"), now + time::Duration::days(61)).unwrap();
    assert!(
        w.contains("docmesh-certs init --trust-domain renew.test --out ca.new"),
        "{w}"
    );
}
