//! The development CA: certificate shapes, leaf rules for every algorithm, validity caps,
//! files on disk (an integration test so that `ca` stays below `svid` and `bundle`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use docmesh_certs::ca::*;
use docmesh_certs::spiffe_id::{SpiffeId, TrustDomain};
use docmesh_certs::svid::{check_leaf, validate_svid};

fn td() -> TrustDomain {
    "onlyoffice.local".parse().unwrap()
}

fn id() -> SpiffeId {
    "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice"
        .parse()
        .unwrap()
}

const DAY: Duration = Duration::from_secs(86400);

#[test]
fn ca_certificate_shape() {
    let ca = CertificateAuthority::generate(&td(), KeyAlgorithm::default(), DAY).unwrap();
    let (_, x) = X509Certificate::from_der(ca.root_cert_der().as_ref()).unwrap();
    assert!(x.is_ca());
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let san = x.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://onlyoffice.local")]
    );
    assert_eq!(
        docmesh_certs::bundle::trust_domain_of_ca(ca.root_cert_der()),
        Some(td())
    );
}

#[test]
fn leaves_of_every_algorithm_follow_the_rules() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa3072,
    ] {
        let ca = CertificateAuthority::generate(&td(), alg, DAY).unwrap();
        let s = ca.issue_svid(&id(), Duration::from_secs(3600)).unwrap();
        assert_eq!(check_leaf(&s.chain[0]).unwrap(), id(), "{alg}");
        assert_eq!(
            validate_svid(&s.chain, &ca.bundle(), UnixTime::now()).unwrap(),
            id()
        );
        let (_, x) = X509Certificate::from_der(s.chain[0].as_ref()).unwrap();
        let ku = x.key_usage().unwrap().unwrap().value;
        assert_eq!(ku.key_encipherment(), alg == KeyAlgorithm::Rsa3072, "{alg}");
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!x.is_ca());
        assert!(
            x.basic_constraints().unwrap().is_some(),
            "cA=false is explicit"
        );
        assert!(s.to_x509_svid().certified_key().is_ok());
        assert_eq!(alg.to_string().parse::<KeyAlgorithm>().unwrap(), alg);
    }
    assert!("dsa".parse::<KeyAlgorithm>().is_err());
}

#[test]
fn ttl_beyond_ca_validity_is_an_error() {
    let ca =
        CertificateAuthority::generate(&td(), KeyAlgorithm::EcdsaP256, Duration::from_secs(3600))
            .unwrap();
    let err = ca.issue_svid(&id(), DAY).unwrap_err();
    assert!(matches!(err, CaError::TtlBeyondCa { .. }), "{err}");
    assert!(ca.issue_svid(&id(), Duration::from_secs(600)).is_ok());
    assert!(matches!(
        ca.issue_svid(&id(), Duration::ZERO),
        Err(CaError::BadValidity(_))
    ));
    let now = OffsetDateTime::now_utc();
    assert!(matches!(
        ca.issue_svid_with(&id(), now, now),
        Err(CaError::BadValidity(_))
    ));
}

#[test]
fn intermediate_signs_and_is_capped_by_root() {
    let mut ca = CertificateAuthority::generate(&td(), KeyAlgorithm::EcdsaP256, DAY).unwrap();
    ca.add_intermediate(DAY * 10).unwrap();
    assert!(ca.not_after() <= OffsetDateTime::now_utc() + time::Duration::days(1));
    let s = ca.issue_svid(&id(), Duration::from_secs(600)).unwrap();
    assert_eq!(s.chain.len(), 2);
    assert_eq!(s.chain[1], *ca.intermediate_cert_der().unwrap());
    assert!(validate_svid(&s.chain, &ca.bundle(), UnixTime::now()).is_ok());
}

#[test]
fn write_load_round_trip_and_overwrite_protection() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateAuthority::generate(&td(), KeyAlgorithm::Ed25519, DAY).unwrap();
    ca.add_intermediate(DAY).unwrap();
    let paths = ca.write_to(dir.path(), false).unwrap();
    assert_eq!(paths.len(), 5);
    for (name, mode) in [
        ("root.key", 0o600),
        ("intermediate.key", 0o600),
        ("root.pem", 0o644),
    ] {
        let m = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{name}");
    }
    let before = std::fs::read(dir.path().join("root.pem")).unwrap();
    let err = ca.write_to(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("root.pem")).unwrap(), before);
    // Force overwrites and re-applies 0600 even if the mode was loosened.
    std::fs::set_permissions(
        dir.path().join("root.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ca.write_to(dir.path(), true).unwrap();
    let m = std::fs::metadata(dir.path().join("root.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(m, 0o600);

    let loaded = CertificateAuthority::load_dir(dir.path(), None).unwrap();
    assert_eq!(loaded.trust_domain(), &td());
    assert_eq!(loaded.algorithm(), KeyAlgorithm::Ed25519);
    let s = loaded.issue_svid(&id(), Duration::from_secs(600)).unwrap();
    assert!(validate_svid(&s.chain, &ca.bundle(), UnixTime::now()).is_ok());
    let files = s.files(ca.root_cert_pem());
    assert_eq!(files.iter().filter(|f| f.secret).count(), 1);
}

#[test]
fn loading_rejects_mismatched_keys_and_non_ca_certs() {
    let a = CertificateAuthority::generate(&td(), KeyAlgorithm::EcdsaP256, DAY).unwrap();
    let b = CertificateAuthority::generate(&td(), KeyAlgorithm::EcdsaP256, DAY).unwrap();
    let err = CertificateAuthority::from_pem(
        a.root_cert_pem().as_bytes(),
        b.root_key_pem().as_bytes(),
        None,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    let s = a.issue_svid(&id(), Duration::from_secs(600)).unwrap();
    let err = CertificateAuthority::from_pem(
        s.cert_chain_pem.as_bytes(),
        s.key_pem.as_bytes(),
        None,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::NotACa { .. }), "{err}");
    let err = CertificateAuthority::from_pem(b"junk", a.root_key_pem().as_bytes(), None, None)
        .unwrap_err();
    assert!(matches!(err, CaError::Pem(_)), "{err}");
    let err =
        CertificateAuthority::load_dir(std::path::Path::new("/nonexistent-dir"), None).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/root.pem"),
        "{err}"
    );
}
