//! The rule corpus: one certificate per broken X.509-SVID rule, generated here with rcgen
//! (no committed blobs), each rejected by `inspect` and `verify` naming the rule, never a panic.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{certs, fails, ok};
use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_certs::spiffe_id::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

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

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// Standard leaf params of `ca`, edited, signed and written as `<name>.pem` (chain).
fn write_broken(
    dir: &Path,
    ca: &CertificateAuthority,
    name: &str,
    edit: impl FnOnce(&mut CertificateParams),
) {
    let now = OffsetDateTime::now_utc();
    let mut p = ca
        .leaf_params(
            &id("spiffe://a.local/ns/demo/sa/web"),
            now - time::Duration::minutes(5),
            now + time::Duration::hours(1),
        )
        .unwrap();
    edit(&mut p);
    let issued = ca.sign_params(&p).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), issued.cert_chain_pem).unwrap();
}

#[test]
fn every_broken_rule_is_rejected_and_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let a = ca("a.local");
    let b = ca("b.local");
    let impostor = ca("a.local");
    std::fs::write(dir.join("bundle.pem"), a.root_cert_pem()).unwrap();
    let now = OffsetDateTime::now_utc();
    let hours = time::Duration::hours;

    // (file, rule named by `inspect --bundle` and `verify`, extra text the message must hold)
    let mut cases: Vec<(String, &str, &str)> = Vec::new();
    let mut add = |name: &str,
                   ca: &CertificateAuthority,
                   rule: &'static str,
                   extra: &'static str,
                   edit: Box<dyn FnOnce(&mut CertificateParams)>| {
        write_broken(dir, ca, name, edit);
        cases.push((name.to_owned(), rule, extra));
    };
    add(
        "two-uri-sans",
        &a,
        "one-uri-san",
        "found 2",
        Box::new(|p| p.subject_alt_names.push(uri("spiffe://a.local/other"))),
    );
    add(
        "no-san",
        &a,
        "one-uri-san",
        "found none",
        Box::new(|p| p.subject_alt_names.clear()),
    );
    add(
        "dns-only",
        &a,
        "one-uri-san",
        "web.a.local",
        Box::new(|p| {
            p.subject_alt_names = vec![SanType::DnsName("web.a.local".try_into().unwrap())]
        }),
    );
    add(
        "leaf-ca-true",
        &a,
        "leaf-not-ca",
        "cA=true",
        Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
    );
    add(
        "no-key-usage",
        &a,
        "key-usage-present",
        "no keyUsage",
        Box::new(|p| p.key_usages.clear()),
    );
    add(
        "no-digital-signature",
        &a,
        "digital-signature",
        "lacks digitalSignature",
        Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
    );
    add(
        "key-cert-sign",
        &a,
        "no-key-cert-sign",
        "keyCertSign",
        Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
    );
    add(
        "crl-sign",
        &a,
        "no-crl-sign",
        "cRLSign",
        Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
    );
    add(
        "eku-no-client-auth",
        &a,
        "eku-client-auth",
        "lacks clientAuth",
        Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
    );
    add(
        "eku-no-server-auth",
        &a,
        "eku-server-auth",
        "lacks serverAuth",
        Box::new(|p| {
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::CodeSigning,
            ]
        }),
    );
    add(
        "expired",
        &a,
        "validity",
        "expired",
        Box::new(move |p| {
            p.not_before = now - hours(5);
            p.not_after = now - hours(1);
        }),
    );
    add(
        "not-yet-valid",
        &a,
        "validity",
        "not valid before",
        Box::new(move |p| {
            p.not_before = now + hours(1);
            p.not_after = now + hours(5);
        }),
    );
    add(
        "wrong-trust-domain",
        &b,
        "own-trust-domain",
        "b.local",
        Box::new(|p| p.subject_alt_names = vec![uri("spiffe://b.local/ns/demo/sa/web")]),
    );
    add(
        "unknown-ca",
        &impostor,
        "chain-to-bundle",
        "does not verify",
        Box::new(|_| {}),
    );
    add(
        "trust-domain-id",
        &a,
        "workload-path",
        "no path",
        Box::new(|p| p.subject_alt_names = vec![uri("spiffe://a.local")]),
    );
    let malformed: [(&str, &str, &'static str); 11] = [
        ("id-query", "spiffe://a.local/x?y=1", "query"),
        ("id-fragment", "spiffe://a.local/x#f", "fragment"),
        ("id-port", "spiffe://a.local:8443/x", "port"),
        ("id-userinfo", "spiffe://u@a.local/x", "userinfo"),
        ("id-dot", "spiffe://a.local/x/../y", "`..`"),
        (
            "id-empty-segment",
            "spiffe://a.local/x//y",
            "empty segments",
        ),
        ("id-trailing-slash", "spiffe://a.local/x/", "end with `/`"),
        ("id-scheme", "https://a.local/x", "scheme"),
        ("id-uppercase-td", "spiffe://A.local/x", "lowercase"),
        ("id-percent", "spiffe://a.local/x%41", "percent"),
        ("id-no-td", "spiffe:///x", "no trust domain"),
    ];
    for (name, bad, extra) in malformed {
        let bad = bad.to_owned();
        add(
            name,
            &a,
            "valid-spiffe-id",
            extra,
            Box::new(move |p| p.subject_alt_names = vec![uri(&bad)]),
        );
    }
    let long = format!("spiffe://a.local/{}", "x".repeat(2100));
    add(
        "id-too-long",
        &a,
        "valid-spiffe-id",
        "2048",
        Box::new(move |p| p.subject_alt_names = vec![uri(&long)]),
    );
    // A chain whose leaf is fine but whose intermediate is missing.
    let mut with_int = ca("a.local");
    with_int
        .add_intermediate(Duration::from_secs(3600))
        .unwrap();
    let s = with_int
        .issue_svid(&id("spiffe://a.local/x"), Duration::from_secs(600))
        .unwrap();
    std::fs::write(
        dir.join("missing-intermediate.pem"),
        docmesh_certs::pem::encode_certs(&s.chain[..1]),
    )
    .unwrap();
    std::fs::write(dir.join("int-bundle.pem"), with_int.root_cert_pem()).unwrap();

    // Negative control: the unmodified parameters pass both commands.
    write_broken(dir, &a, "control", |_| {});
    ok(certs(
        dir,
        &["inspect", "--bundle", "bundle.pem", "control.pem"],
    ));
    ok(certs(
        dir,
        &["verify", "--bundle", "bundle.pem", "control.pem"],
    ));

    for (name, rule, extra) in &cases {
        let file = format!("{name}.pem");
        let t = fails(certs(dir, &["inspect", "--bundle", "bundle.pem", &file]), 1);
        assert!(
            t.contains(&format!("rule `{rule}`")) && t.contains("NOT a valid X.509-SVID"),
            "inspect {name}: want rule {rule}:\n{t}"
        );
        assert!(t.contains(extra), "inspect {name}: want {extra:?}:\n{t}");
        let t = fails(certs(dir, &["verify", "--bundle", "bundle.pem", &file]), 1);
        assert!(
            t.contains(&format!("rule `{rule}`")) && t.contains(extra),
            "verify {name}: want rule {rule} / {extra:?}:\n{t}"
        );
    }
    // Leaf-only rules are found by `inspect` even without a bundle.
    for (name, rule, _) in cases
        .iter()
        .filter(|(_, r, _)| !["own-trust-domain", "chain-to-bundle"].contains(r))
    {
        let t = fails(certs(dir, &["inspect", &format!("{name}.pem")]), 1);
        assert!(
            t.contains(&format!("rule `{rule}`")),
            "inspect {name} without bundle:\n{t}"
        );
    }
    let t = fails(
        certs(
            dir,
            &[
                "verify",
                "--bundle",
                "int-bundle.pem",
                "missing-intermediate.pem",
            ],
        ),
        1,
    );
    assert!(t.contains("rule `chain-to-bundle`"), "{t}");
    // Several rules at once are all listed.
    write_broken(dir, &a, "many", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.subject_alt_names.clear();
    });
    let t = fails(certs(dir, &["inspect", "many.pem"]), 1);
    for rule in [
        "one-uri-san",
        "leaf-not-ca",
        "digital-signature",
        "no-key-cert-sign",
    ] {
        assert!(t.contains(&format!("rule `{rule}`")), "many: {rule}:\n{t}");
    }
}

#[test]
fn garbage_pem_is_rejected_without_panic() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let a = ca("a.local");
    std::fs::write(dir.join("bundle.pem"), a.root_cert_pem()).unwrap();
    let good = a
        .issue_svid(&id("spiffe://a.local/x"), Duration::from_secs(600))
        .unwrap();
    let pem = good.cert_chain_pem.clone();
    let inner: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "no PEM blocks"),
        ("text", b"hello world\n".to_vec(), "no PEM blocks"),
        ("binary", (0..=255u8).cycle().take(3000).collect(), "PEM"),
        (
            "bad-base64",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n".to_vec(),
            "not valid PEM",
        ),
        (
            "truncated-pem",
            pem.as_bytes()[..pem.len() / 2].to_vec(),
            "not valid PEM",
        ),
        (
            "garbage-der",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n".to_vec(),
            "rule `well-formed`",
        ),
        (
            "truncated-der",
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                &inner[..inner.len() / 2 / 4 * 4]
            )
            .into_bytes(),
            "rule `well-formed`",
        ),
        (
            "key-not-cert",
            good.key_pem.clone().into_bytes(),
            "found: PRIVATE KEY",
        ),
    ];
    // Unreadable input and a broken certificate are both runtime errors: exit 1.
    for (name, bytes, want) in files {
        std::fs::write(dir.join(name), &bytes).unwrap();
        let t = fails(certs(dir, &["inspect", name]), 1);
        assert!(t.contains(want), "inspect {name}: want {want:?}:\n{t}");
        let t = fails(certs(dir, &["verify", "--bundle", "bundle.pem", name]), 1);
        assert!(
            t.contains(if want.starts_with("rule") {
                "well-formed"
            } else {
                want
            }),
            "verify {name}:\n{t}"
        );
        // As a bundle it is rejected too (never a panic, never silently empty).
        std::fs::write(dir.join("svid.pem"), &good.cert_chain_pem).unwrap();
        let o = certs(dir, &["verify", "--bundle", name, "svid.pem"]);
        assert!(!o.status.success(), "garbage bundle {name} accepted");
    }
}
