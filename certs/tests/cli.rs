//! The `docmesh-certs` command end to end: init, issue (single and list), inspect, verify,
//! interoperability with openssl in both directions, and clear errors.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{certs, fails, ok, openssl};

const ID: &str = "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice";

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn issued_certs_pass_openssl_for_every_algorithm() {
    for (alg, intermediate) in [
        ("ecdsa-p256", false),
        ("ecdsa-p256", true),
        ("ed25519", true),
        ("rsa-3072", false),
    ] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let mut args = vec![
            "init",
            "--trust-domain",
            "onlyoffice.local",
            "--out",
            "ca",
            "--algorithm",
            alg,
        ];
        if intermediate {
            args.push("--intermediate");
        }
        ok(certs(dir, &args));
        assert_eq!(mode(&dir.join("ca/root.key")), 0o600);
        ok(certs(
            dir,
            &[
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                ID,
                "--ttl",
                "24h",
                "--out",
                "svid",
            ],
        ));
        assert_eq!(mode(&dir.join("svid/svid.key")), 0o600);
        let mut v = vec!["verify", "-CAfile", "ca/root.pem"];
        if intermediate {
            v.extend(["-untrusted", "ca/intermediate.pem"]);
        }
        v.push("svid/svid.pem");
        let out = ok(openssl(dir, &v));
        assert!(out.contains("svid/svid.pem: OK"), "{alg}: {out}");
        // Both purposes hold for openssl too.
        for purpose in ["sslserver", "sslclient"] {
            let mut p = v.clone();
            p.insert(1, purpose);
            p.insert(1, "-purpose");
            ok(openssl(dir, &p));
        }
        let x = ok(openssl(
            dir,
            &["x509", "-in", "svid/svid.pem", "-noout", "-text"],
        ));
        assert!(x.contains(&format!("URI:{ID}")), "{x}");
        assert!(x.contains("CA:FALSE"), "{x}");
        let ca = ok(openssl(
            dir,
            &["x509", "-in", "ca/root.pem", "-noout", "-text"],
        ));
        assert!(
            ca.contains("URI:spiffe://onlyoffice.local") && ca.contains("CA:TRUE"),
            "{ca}"
        );
        assert!(ca.contains("Certificate Sign, CRL Sign"), "{ca}");
        // The key matches according to openssl as well.
        let k = ok(openssl(dir, &["pkey", "-in", "svid/svid.key", "-pubout"]));
        let c = ok(openssl(
            dir,
            &["x509", "-in", "svid/svid.pem", "-noout", "-pubkey"],
        ));
        assert_eq!(k, c, "{alg}");
        // And our own tools agree.
        let out = ok(certs(
            dir,
            &[
                "verify",
                "--bundle",
                "svid/bundle.pem",
                "--expect-id",
                ID,
                "--key",
                "svid/svid.key",
                "svid/svid.pem",
            ],
        ));
        assert!(out.contains(ID), "{out}");
        let out = ok(certs(
            dir,
            &["inspect", "--bundle", "ca/bundle.pem", "svid/svid.pem"],
        ));
        assert!(
            out.contains("valid X.509-SVID") && out.contains("trust domain: onlyoffice.local"),
            "{out}"
        );
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(certs(
        dir,
        &["init", "--trust-domain", "onlyoffice.local", "--out", "ca"],
    ));
    let before = std::fs::read(dir.join("ca/root.pem")).unwrap();
    let t = fails(
        certs(
            dir,
            &["init", "--trust-domain", "onlyoffice.local", "--out", "ca"],
        ),
        2,
    );
    assert!(t.contains("--force") && t.contains("root.pem"), "{t}");
    assert_eq!(std::fs::read(dir.join("ca/root.pem")).unwrap(), before);
    ok(certs(
        dir,
        &[
            "init",
            "--trust-domain",
            "onlyoffice.local",
            "--out",
            "ca",
            "--force",
        ],
    ));
    assert_ne!(std::fs::read(dir.join("ca/root.pem")).unwrap(), before);
    ok(certs(
        dir,
        &["issue", "--ca", "ca", "--spiffe-id", ID, "--out", "s"],
    ));
    let t = fails(
        certs(
            dir,
            &["issue", "--ca", "ca", "--spiffe-id", ID, "--out", "s"],
        ),
        2,
    );
    assert!(t.contains("--force"), "{t}");
    ok(certs(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            ID,
            "--out",
            "s",
            "--force",
        ],
    ));
}

#[test]
fn issue_from_list_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(certs(
        dir,
        &[
            "init",
            "--trust-domain",
            "onlyoffice.local",
            "--out",
            "ca",
            "--intermediate",
        ],
    ));
    std::fs::write(
        dir.join("svids.txt"),
        "# the demo deployment\n\
         spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice\n\
         \n\
         spiffe://onlyoffice.local/ns/onlyoffice/sa/nginx   proxy-nginx  # front door\n\
         spiffe://onlyoffice.local/ns/onlyoffice/sa/converter\n",
    )
    .unwrap();
    let out = ok(certs(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--from",
            "svids.txt",
            "--ttl",
            "12h",
            "--out",
            "out",
        ],
    ));
    for (sub, id) in [
        (
            "docservice",
            "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice",
        ),
        (
            "proxy-nginx",
            "spiffe://onlyoffice.local/ns/onlyoffice/sa/nginx",
        ),
        (
            "converter",
            "spiffe://onlyoffice.local/ns/onlyoffice/sa/converter",
        ),
    ] {
        assert!(out.contains(id), "{out}");
        let svid = format!("out/{sub}/svid.pem");
        ok(certs(
            dir,
            &[
                "verify",
                "--bundle",
                &format!("out/{sub}/bundle.pem"),
                "--expect-id",
                id,
                "--key",
                &format!("out/{sub}/svid.key"),
                &svid,
            ],
        ));
        ok(openssl(
            dir,
            &[
                "verify",
                "-CAfile",
                "ca/root.pem",
                "-untrusted",
                "ca/intermediate.pem",
                &svid,
            ],
        ));
    }
    // Bad lines are reported with their line number, and nothing is written.
    std::fs::write(
        dir.join("bad.txt"),
        "spiffe://onlyoffice.local/a\nspiffe://onlyoffice.local/b/ x\n",
    )
    .unwrap();
    let t = fails(
        certs(
            dir,
            &["issue", "--ca", "ca", "--from", "bad.txt", "--out", "bad"],
        ),
        2,
    );
    assert!(
        t.contains("bad.txt:2") && t.contains("must not end with `/`"),
        "{t}"
    );
    assert!(!dir.join("bad").exists());
    std::fs::write(
        dir.join("dup.txt"),
        "spiffe://onlyoffice.local/a/x\nspiffe://onlyoffice.local/b/x\n",
    )
    .unwrap();
    let t = fails(
        certs(
            dir,
            &["issue", "--ca", "ca", "--from", "dup.txt", "--out", "dup"],
        ),
        2,
    );
    assert!(t.contains("dup.txt:2") && t.contains("used twice"), "{t}");
    std::fs::write(
        dir.join("esc.txt"),
        "spiffe://onlyoffice.local/a ../escape\n",
    )
    .unwrap();
    let t = fails(
        certs(
            dir,
            &["issue", "--ca", "ca", "--from", "esc.txt", "--out", "esc"],
        ),
        2,
    );
    assert!(t.contains("esc.txt:1"), "{t}");
    // Re-issuing into existing output needs --force, and checks before writing anything.
    let t = fails(
        certs(
            dir,
            &["issue", "--ca", "ca", "--from", "svids.txt", "--out", "out"],
        ),
        2,
    );
    assert!(t.contains("--force"), "{t}");
}

#[test]
fn openssl_made_certificates_are_accepted() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A CA and a leaf made entirely by openssl; the CA has no SPIFFE URI SAN, so the bundle's
    // trust domain comes from --trust-domain (or the SVID's own).
    ok(openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=openssl CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ));
    ok(openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=docservice",
        ],
    ));
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=URI:{ID}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .unwrap();
    ok(openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    ));
    let out = ok(certs(dir, &["inspect", "leaf.pem"]));
    assert!(
        out.contains(ID) && out.contains("valid X.509-SVID"),
        "{out}"
    );
    let out = ok(certs(dir, &["inspect", "--bundle", "ca.pem", "leaf.pem"]));
    assert!(out.contains("verifies to"), "{out}");
    ok(certs(
        dir,
        &[
            "verify",
            "--bundle",
            "ca.pem",
            "--expect-id",
            ID,
            "--key",
            "leaf.key",
            "leaf.pem",
        ],
    ));
    ok(certs(
        dir,
        &[
            "verify",
            "--bundle",
            "ca.pem",
            "--trust-domain",
            "onlyoffice.local",
            "leaf.pem",
        ],
    ));
    // Declaring the openssl CA as another trust domain's root must not let it vouch for ours.
    let t = fails(
        certs(
            dir,
            &[
                "verify",
                "--bundle",
                "ca.pem",
                "--trust-domain",
                "other.local",
                "leaf.pem",
            ],
        ),
        1,
    );
    assert!(t.contains("own-trust-domain"), "{t}");

    // A self-signed openssl SVID (`req -x509 -addext subjectAltName=URI:...`), its own bundle.
    ok(openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ed25519",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "1",
            "-subj",
            "/CN=self",
            "-addext",
            &format!("subjectAltName=URI:{ID}"),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
        ],
    ));
    let out = ok(certs(dir, &["inspect", "self.pem"]));
    assert!(out.contains("valid X.509-SVID"), "{out}");
    ok(certs(
        dir,
        &[
            "verify", "--bundle", "self.pem", "--key", "self.key", "self.pem",
        ],
    ));
    // A plain `openssl req -x509` leaf gets CA:TRUE from the default config: named as such.
    ok(openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "plain.key",
            "-out",
            "plain.pem",
            "-days",
            "1",
            "-subj",
            "/CN=plain",
            "-addext",
            &format!("subjectAltName=URI:{ID}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    ));
    let t = fails(certs(dir, &["inspect", "plain.pem"]), 1);
    assert!(
        t.contains("leaf-not-ca") && t.contains("key-usage-present"),
        "{t}"
    );
}

#[test]
fn clear_errors_for_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(certs(
        dir,
        &[
            "init",
            "--trust-domain",
            "onlyoffice.local",
            "--out",
            "ca",
            "--validity",
            "2h",
        ],
    ));
    ok(certs(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            ID,
            "--ttl",
            "1h",
            "--out",
            "a",
        ],
    ));
    ok(certs(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://onlyoffice.local/b",
            "--ttl",
            "1h",
            "--out",
            "b",
        ],
    ));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", "missing.pem"], "cannot read missing.pem"),
        (
            vec!["inspect", "a/svid.key"],
            "contains no CERTIFICATE PEM block (found: PRIVATE KEY)",
        ),
        (
            vec!["verify", "--bundle", "a/svid.key", "a/svid.pem"],
            "contains no CERTIFICATE PEM block",
        ),
        (
            vec![
                "verify",
                "--bundle",
                "ca/bundle.pem",
                "--key",
                "b/svid.key",
                "a/svid.pem",
            ],
            "does not match the certificate",
        ),
        (
            vec![
                "verify",
                "--bundle",
                "ca/bundle.pem",
                "--key",
                "a/svid.pem",
                "a/svid.pem",
            ],
            "contains no PRIVATE KEY",
        ),
        (
            vec![
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                ID,
                "--ttl",
                "3h",
                "--out",
                "c",
            ],
            "after the CA's own validity",
        ),
        (
            vec![
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                "spiffe://onlyoffice.local:8443/x",
                "--out",
                "c",
            ],
            "must not contain a port",
        ),
        (
            vec![
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                ID,
                "--ttl",
                "soon",
                "--out",
                "c",
            ],
            "invalid duration",
        ),
        (
            vec!["issue", "--ca", "nope", "--spiffe-id", ID, "--out", "c"],
            "cannot read nope/root.pem",
        ),
        (
            vec!["init", "--trust-domain", "Only.Office", "--out", "x"],
            "invalid trust domain",
        ),
        (
            vec![
                "init",
                "--trust-domain",
                "td",
                "--algorithm",
                "dsa",
                "--out",
                "x",
            ],
            "unknown key algorithm",
        ),
        (
            vec![
                "verify",
                "--bundle",
                "ca/bundle.pem",
                "--expect-id",
                "spiffe://x/y?z",
                "a/svid.pem",
            ],
            "must not contain a query",
        ),
    ];
    for (args, want) in cases {
        let t = fails(certs(dir, &args), 2);
        assert!(t.contains(want), "{args:?}: expected {want:?} in:\n{t}");
    }
    assert!(!dir.join("c").exists() && !dir.join("x").exists());
    // Not a valid SVID (as opposed to a usage error) exits 1.
    let t = fails(
        certs(
            dir,
            &[
                "verify",
                "--bundle",
                "ca/bundle.pem",
                "--expect-id",
                "spiffe://onlyoffice.local/b",
                "a/svid.pem",
            ],
        ),
        1,
    );
    assert!(t.contains("expected-id"), "{t}");
}

#[test]
fn verify_accepts_a_spiffe_json_bundle() {
    use base64::Engine;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(certs(
        dir,
        &["init", "--trust-domain", "onlyoffice.local", "--out", "ca"],
    ));
    ok(certs(
        dir,
        &["issue", "--ca", "ca", "--spiffe-id", ID, "--out", "s"],
    ));
    let pem = std::fs::read(dir.join("ca/root.pem")).unwrap();
    let der = docmesh_certs::pem::certs(&pem, "root").unwrap().remove(0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    std::fs::write(
        dir.join("bundle.json"),
        format!(r#"{{"spiffe_sequence": 3, "keys": [{{"use": "x509-svid", "kty": "EC", "x5c": ["{b64}"]}}]}}"#),
    )
    .unwrap();
    ok(certs(
        dir,
        &[
            "verify",
            "--bundle",
            "bundle.json",
            "--expect-id",
            ID,
            "s/svid.pem",
        ],
    ));
    // Declared for another trust domain, the same roots do not vouch for ours.
    let t = fails(
        certs(
            dir,
            &[
                "verify",
                "--bundle",
                "bundle.json",
                "--trust-domain",
                "other.local",
                "s/svid.pem",
            ],
        ),
        1,
    );
    assert!(t.contains("own-trust-domain"), "{t}");
    std::fs::write(dir.join("empty.json"), r#"{"keys": []}"#).unwrap();
    let t = fails(
        certs(dir, &["verify", "--bundle", "empty.json", "s/svid.pem"]),
        2,
    );
    assert!(t.contains("x509-svid"), "{t}");
}
