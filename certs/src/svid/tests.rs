use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use super::*;
use crate::ca::{CertificateAuthority, KeyAlgorithm};

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

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Signs standard leaf params after `edit`, returning the chain.
fn broken(
    ca: &CertificateAuthority,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> Vec<CertificateDer<'static>> {
    let mut p = ca
        .leaf_params(
            &id("spiffe://a.local/w"),
            now() - time::Duration::minutes(5),
            now() + time::Duration::hours(1),
        )
        .unwrap();
    edit(&mut p);
    ca.sign_params(&p).unwrap().chain
}

fn validate(
    chain: &[CertificateDer<'_>],
    ca: &CertificateAuthority,
) -> Result<SpiffeId, SvidError> {
    validate_svid(chain, &ca.bundle(), UnixTime::now())
}

#[test]
fn good_svid_validates_for_every_algorithm_and_with_intermediate() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let mut ca =
            CertificateAuthority::generate(&td("a.local"), alg, Duration::from_secs(86400))
                .unwrap();
        let s = ca
            .issue_svid(&id("spiffe://a.local/ns/x/sa/y"), Duration::from_secs(600))
            .unwrap();
        assert_eq!(validate(&s.chain, &ca).unwrap(), s.id);
        assert_eq!(check_leaf(&s.chain[0]).unwrap(), s.id);
        ca.add_intermediate(Duration::from_secs(3600)).unwrap();
        let s = ca
            .issue_svid(&id("spiffe://a.local/i"), Duration::from_secs(600))
            .unwrap();
        assert_eq!(s.chain.len(), 2);
        assert_eq!(validate(&s.chain, &ca).unwrap(), s.id);
        // Without the intermediate the chain does not build.
        assert_eq!(
            validate(&s.chain[..1], &ca).unwrap_err().rule(),
            "chain-to-bundle"
        );
    }
}

#[test]
fn each_broken_rule_is_named() {
    let ca = ca("a.local");
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let cases: Vec<(&str, Vec<CertificateDer<'static>>, &str)> = vec![
        (
            "two URI SANs",
            broken(&ca, |p| {
                p.subject_alt_names.push(uri("spiffe://a.local/other"))
            }),
            "one-uri-san",
        ),
        (
            "no SAN",
            broken(&ca, |p| p.subject_alt_names.clear()),
            "one-uri-san",
        ),
        (
            "DNS only",
            broken(&ca, |p| {
                p.subject_alt_names = vec![SanType::DnsName("w.a.local".try_into().unwrap())]
            }),
            "one-uri-san",
        ),
        (
            "leaf cA=true",
            broken(&ca, |p| {
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            }),
            "leaf-not-ca",
        ),
        (
            "no keyUsage",
            broken(&ca, |p| p.key_usages.clear()),
            "key-usage-present",
        ),
        (
            "no digitalSignature",
            broken(&ca, |p| p.key_usages = vec![KeyUsagePurpose::KeyAgreement]),
            "digital-signature",
        ),
        (
            "keyCertSign",
            broken(&ca, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            "no-key-cert-sign",
        ),
        (
            "cRLSign",
            broken(&ca, |p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            "no-crl-sign",
        ),
        (
            "EKU without clientAuth",
            broken(&ca, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            }),
            "eku-client-auth",
        ),
        (
            "EKU without serverAuth",
            broken(&ca, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
            }),
            "eku-server-auth",
        ),
        (
            "malformed id (query)",
            broken(&ca, |p| {
                p.subject_alt_names = vec![uri("spiffe://a.local/w?x=1")]
            }),
            "valid-spiffe-id",
        ),
        (
            "malformed id (uppercase td)",
            broken(&ca, |p| {
                p.subject_alt_names = vec![uri("spiffe://A.local/w")]
            }),
            "valid-spiffe-id",
        ),
        (
            "malformed id (http)",
            broken(&ca, |p| {
                p.subject_alt_names = vec![uri("https://a.local/w")]
            }),
            "valid-spiffe-id",
        ),
        (
            "trust domain id",
            broken(&ca, |p| p.subject_alt_names = vec![uri("spiffe://a.local")]),
            "workload-path",
        ),
        (
            "expired",
            broken(&ca, |p| {
                p.not_before = now() - time::Duration::hours(3);
                p.not_after = now() - time::Duration::hours(2);
            }),
            "validity",
        ),
        (
            "not yet valid",
            broken(&ca, |p| {
                p.not_before = now() + time::Duration::hours(2);
                p.not_after = now() + time::Duration::hours(3);
            }),
            "validity",
        ),
    ];
    for (name, chain, rule) in &cases {
        let err = validate(chain, &ca).unwrap_err();
        assert_eq!(err.rule(), *rule, "{name}: {err}");
        assert!(
            err.to_string().contains(rule),
            "{name}: message names the rule: {err}"
        );
        let report = leaf_report(&chain[0], Some(UnixTime::now()));
        assert!(
            report.violations.iter().any(|v| v.rule() == *rule),
            "{name}: report {report:?}"
        );
    }
    // Negative control: the untouched params are fine.
    assert!(validate(&broken(&ca, |_| {}), &ca).is_ok());
    // The DNS-only error lists the DNS name.
    let dns = broken(&ca, |p| {
        p.subject_alt_names = vec![SanType::DnsName("w.a.local".try_into().unwrap())]
    });
    assert!(validate(&dns, &ca)
        .unwrap_err()
        .to_string()
        .contains("w.a.local"));
}

#[test]
fn expiry_and_not_yet_valid_variants() {
    let ca = ca("a.local");
    let s = ca
        .issue_svid_with(
            &id("spiffe://a.local/w"),
            now() - time::Duration::hours(3),
            now() - time::Duration::hours(1),
        )
        .unwrap();
    assert!(matches!(
        validate(&s.chain, &ca),
        Err(SvidError::Expired { .. })
    ));
    let s = ca
        .issue_svid_with(
            &id("spiffe://a.local/w"),
            now() + time::Duration::hours(1),
            now() + time::Duration::hours(3),
        )
        .unwrap();
    assert!(matches!(
        validate(&s.chain, &ca),
        Err(SvidError::NotYetValid { .. })
    ));
    // The same SVID is valid at a time inside its window.
    let later = UnixTime::since_unix_epoch(Duration::from_secs(
        (now() + time::Duration::hours(2)).unix_timestamp() as u64,
    ));
    assert!(validate_svid(&s.chain, &ca.bundle(), later).is_ok());
}

#[test]
fn chain_must_verify_to_own_trust_domain() {
    let a = ca("a.local");
    let b = ca("b.local");
    let a2 = ca("a.local"); // impostor CA claiming a.local
    let sa = a
        .issue_svid(&id("spiffe://a.local/w"), Duration::from_secs(600))
        .unwrap();
    let sb = b
        .issue_svid(&id("spiffe://b.local/w"), Duration::from_secs(600))
        .unwrap();
    let forged = a2
        .issue_svid(&id("spiffe://a.local/w"), Duration::from_secs(600))
        .unwrap();
    let only_a = a.bundle();
    let err = validate_svid(&sb.chain, &only_a, UnixTime::now()).unwrap_err();
    assert!(matches!(err, SvidError::UnknownTrustDomain { .. }), "{err}");
    assert_eq!(err.rule(), "own-trust-domain");
    let err = validate_svid(&forged.chain, &only_a, UnixTime::now()).unwrap_err();
    assert!(matches!(err, SvidError::UntrustedChain { .. }), "{err}");
    // Same subject DN as the real CA, so webpki finds a candidate issuer whose signature fails.
    assert!(err.to_string().contains("signature"), "{err}");
    // Federation: b's root is trusted for b.local only. An SVID of b.local is accepted, but
    // b's CA cannot vouch for a.local.
    let fed = TrustBundleSet::merged([&only_a, &b.bundle()]);
    assert!(validate_svid(&sb.chain, &fed, UnixTime::now()).is_ok());
    assert!(validate_svid(&sa.chain, &fed, UnixTime::now()).is_ok());
    let b_signs_a = b
        .issue_svid(&id("spiffe://a.local/evil"), Duration::from_secs(600))
        .unwrap();
    assert_eq!(
        validate_svid(&b_signs_a.chain, &fed, UnixTime::now())
            .unwrap_err()
            .rule(),
        "chain-to-bundle"
    );
    // Rotation: both old and new roots trusted at once.
    let rot = TrustBundleSet::merged([&only_a, &a2.bundle()]);
    assert!(validate_svid(&forged.chain, &rot, UnixTime::now()).is_ok());
    assert!(validate_svid(&sa.chain, &rot, UnixTime::now()).is_ok());
}

#[test]
fn garbage_never_panics() {
    let ca = ca("a.local");
    let bundles = ca.bundle();
    assert_eq!(
        validate_svid(&[], &bundles, UnixTime::now()).unwrap_err(),
        SvidError::EmptyChain
    );
    let good = ca
        .issue_svid(&id("spiffe://a.local/w"), Duration::from_secs(600))
        .unwrap();
    let der = good.chain[0].as_ref().to_vec();
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0x30], vec![0xff; 64], b"hello".to_vec()];
    // Truncations and single-byte corruptions of a real certificate.
    for cut in (0..der.len()).step_by(7) {
        inputs.push(der[..cut].to_vec());
    }
    for i in (0..der.len()).step_by(3) {
        let mut d = der.clone();
        d[i] ^= 0x5a;
        inputs.push(d);
    }
    let mut trailing = der.clone();
    trailing.push(0);
    inputs.push(trailing.clone());
    for input in inputs {
        let c = CertificateDer::from(input.clone());
        let _ = leaf_report(&c, Some(UnixTime::now()));
        let _ = check_leaf(&c);
        let r = validate_svid(std::slice::from_ref(&c), &bundles, UnixTime::now());
        if input != der {
            assert!(r.is_err(), "corrupted input accepted");
        }
    }
    assert_eq!(
        check_leaf(&CertificateDer::from(trailing))
            .unwrap_err()
            .rule(),
        "well-formed"
    );
}

#[test]
fn x509_svid_loads_and_detects_key_mismatch() {
    let ca = ca("a.local");
    let s1 = ca
        .issue_svid(&id("spiffe://a.local/one"), Duration::from_secs(600))
        .unwrap();
    let s2 = ca
        .issue_svid(&id("spiffe://a.local/two"), Duration::from_secs(600))
        .unwrap();
    let svid = X509Svid::from_pem(s1.cert_chain_pem.as_bytes(), s1.key_pem.as_bytes()).unwrap();
    assert_eq!(svid.id, s1.id);
    assert!(svid.certified_key().is_ok());
    let err = X509Svid::from_pem(s1.cert_chain_pem.as_bytes(), s2.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, X509SvidError::KeyMismatch { .. }), "{err}");
    let err = X509Svid::from_pem(s1.key_pem.as_bytes(), s1.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    let err =
        X509Svid::from_pem(s1.cert_chain_pem.as_bytes(), s1.cert_chain_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
    let err = X509Svid::from_pem(ca.root_cert_pem().as_bytes(), s1.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, X509SvidError::Svid { .. }), "{err}");
    assert!(format!("{svid:?}").contains("redacted"));
}

#[test]
fn spiffe_crate_interop() {
    let ca = ca("a.local");
    let s = ca
        .issue_svid(&id("spiffe://a.local/w"), Duration::from_secs(600))
        .unwrap();
    let chain_der: Vec<u8> = s.chain.iter().flat_map(|c| c.as_ref().to_vec()).collect();
    let theirs = spiffe::X509Svid::parse_from_der(&chain_der, &s.key_der).unwrap();
    let ours = X509Svid::from_spiffe(&theirs).unwrap();
    assert_eq!(ours.id, s.id);
    let other = ca
        .issue_svid(&id("spiffe://a.local/v"), Duration::from_secs(600))
        .unwrap();
    assert!(matches!(
        X509Svid::from_der(s.chain.clone(), other.private_key()),
        Err(X509SvidError::KeyMismatch { .. })
    ));
    assert!(X509Svid::from_der(Vec::new(), s.private_key()).is_err());
    let mut set = spiffe::X509BundleSet::new();
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new("a.local").unwrap(),
        ca.root_cert_der().as_ref(),
    )
    .unwrap();
    set.add_bundle(bundle);
    let bundles = TrustBundleSet::from_spiffe_bundle_set(&set).unwrap();
    assert_eq!(
        validate_svid(&s.chain, &bundles, UnixTime::now()).unwrap(),
        s.id
    );
}
