//! The `docmesh-certs` command end to end: init, issue (single and list), inspect, verify,
//! interoperability with openssl in both directions, and clear errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{certs, fails, ok, openssl};

const ID: &str = "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice";
const TD: &str = "onlyoffice.local";
/// `openssl req -newkey` arguments for a P-256 key.
const P256: &[&str] = &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `docmesh-certs init --trust-domain onlyoffice.local --out ca` plus `extra`; must succeed.
fn init_ca(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["init", "--trust-domain", TD, "--out", "ca"];
    args.extend_from_slice(extra);
    ok(certs(dir, &args))
}

/// The arguments of `docmesh-certs issue --ca ca --spiffe-id id --out out` plus `extra`.
fn issue_args<'a>(id: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["issue", "--ca", "ca", "--spiffe-id", id, "--out", out];
    args.extend_from_slice(extra);
    args
}

/// `docmesh-certs issue` (see [`issue_args`]); must succeed.
fn issue(dir: &Path, id: &str, out: &str, extra: &[&str]) -> String {
    ok(certs(dir, &issue_args(id, out, extra)))
}

/// The arguments of `docmesh-certs issue --ca ca --from list --out out` plus `extra`.
fn issue_from_args<'a>(list: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["issue", "--ca", "ca", "--from", list, "--out", out];
    args.extend_from_slice(extra);
    args
}

/// The arguments of `docmesh-certs verify --bundle bundle <extra> svid`.
fn verify_args<'a>(bundle: &'a str, extra: &[&'a str], svid: &'a str) -> Vec<&'a str> {
    let mut args = vec!["verify", "--bundle", bundle];
    args.extend_from_slice(extra);
    args.push(svid);
    args
}

/// Runs `docmesh-certs verify` (see [`verify_args`]).
fn verify(dir: &Path, bundle: &str, extra: &[&str], svid: &str) -> Output {
    certs(dir, &verify_args(bundle, extra, svid))
}

/// `openssl req -x509 -newkey <newkey> -nodes -keyout key -out pem -days days -subj subj`
/// with one `-addext` per entry of `exts`; must succeed.
fn openssl_self_signed(
    dir: &Path,
    newkey: &[&str],
    (key, pem): (&str, &str),
    days: &str,
    subj: &str,
    exts: &[&str],
) -> String {
    let mut args = vec!["req", "-x509", "-newkey"];
    args.extend_from_slice(newkey);
    args.extend([
        "-nodes", "-keyout", key, "-out", pem, "-days", days, "-subj", subj,
    ]);
    for e in exts {
        args.extend(["-addext", e]);
    }
    ok(openssl(dir, &args))
}

/// `openssl x509 -in pem -noout <what>`; must succeed.
fn openssl_x509(dir: &Path, pem: &str, what: &str) -> String {
    ok(openssl(dir, &["x509", "-in", pem, "-noout", what]))
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
        let mut extra = vec!["--algorithm", alg];
        if intermediate {
            extra.push("--intermediate");
        }
        init_ca(dir, &extra);
        assert_eq!(mode(&dir.join("ca/root.key")), 0o600);
        issue(dir, ID, "svid", &["--ttl", "24h"]);
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
        let x = openssl_x509(dir, "svid/svid.pem", "-text");
        assert!(x.contains(&format!("URI:{ID}")), "{x}");
        assert!(x.contains("CA:FALSE"), "{x}");
        let ca = openssl_x509(dir, "ca/root.pem", "-text");
        assert!(
            ca.contains("URI:spiffe://onlyoffice.local") && ca.contains("CA:TRUE"),
            "{ca}"
        );
        assert!(ca.contains("Certificate Sign, CRL Sign"), "{ca}");
        // The key matches according to openssl as well.
        let k = ok(openssl(dir, &["pkey", "-in", "svid/svid.key", "-pubout"]));
        let c = openssl_x509(dir, "svid/svid.pem", "-pubkey");
        assert_eq!(k, c, "{alg}");
        // And our own tools agree.
        let out = ok(verify(
            dir,
            "svid/bundle.pem",
            &["--expect-id", ID, "--key", "svid/svid.key"],
            "svid/svid.pem",
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
    init_ca(dir, &[]);
    let before = std::fs::read(dir.join("ca/root.pem")).unwrap();
    let t = fails(
        certs(dir, &["init", "--trust-domain", TD, "--out", "ca"]),
        1,
    );
    assert!(t.contains("--force") && t.contains("root.pem"), "{t}");
    assert_eq!(std::fs::read(dir.join("ca/root.pem")).unwrap(), before);
    init_ca(dir, &["--force"]);
    assert_ne!(std::fs::read(dir.join("ca/root.pem")).unwrap(), before);
    issue(dir, ID, "s", &[]);
    let t = fails(certs(dir, &issue_args(ID, "s", &[])), 1);
    assert!(t.contains("--force"), "{t}");
    issue(dir, ID, "s", &["--force"]);
}

#[test]
fn issue_from_list_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    init_ca(dir, &["--intermediate"]);
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
        &issue_from_args("svids.txt", "out", &["--ttl", "12h"]),
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
        let key = format!("out/{sub}/svid.key");
        ok(verify(
            dir,
            &format!("out/{sub}/bundle.pem"),
            &["--expect-id", id, "--key", &key],
            &svid,
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
    let bad_list = |name: &str, text: &str, out: &str| -> String {
        std::fs::write(dir.join(name), text).unwrap();
        fails(certs(dir, &issue_from_args(name, out, &[])), 1)
    };
    let t = bad_list(
        "bad.txt",
        "spiffe://onlyoffice.local/a\nspiffe://onlyoffice.local/b/ x\n",
        "bad",
    );
    assert!(
        t.contains("bad.txt:2") && t.contains("must not end with `/`"),
        "{t}"
    );
    assert!(!dir.join("bad").exists());
    let t = bad_list(
        "dup.txt",
        "spiffe://onlyoffice.local/a/x\nspiffe://onlyoffice.local/b/x\n",
        "dup",
    );
    assert!(t.contains("dup.txt:2") && t.contains("used twice"), "{t}");
    let t = bad_list("esc.txt", "spiffe://onlyoffice.local/a ../escape\n", "esc");
    assert!(t.contains("esc.txt:1"), "{t}");
    // Re-issuing into existing output needs --force, and checks before writing anything.
    let t = fails(certs(dir, &issue_from_args("svids.txt", "out", &[])), 1);
    assert!(t.contains("--force"), "{t}");
}

#[test]
fn openssl_made_certificates_are_accepted() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A CA and a leaf made entirely by openssl; the CA has no SPIFFE URI SAN, so the bundle's
    // trust domain comes from --trust-domain (or the SVID's own).
    openssl_self_signed(
        dir,
        P256,
        ("ca.key", "ca.pem"),
        "2",
        "/CN=openssl CA",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let mut csr = vec!["req", "-new", "-newkey"];
    csr.extend_from_slice(P256);
    csr.extend([
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=docservice",
    ]);
    ok(openssl(dir, &csr));
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
    ok(verify(
        dir,
        "ca.pem",
        &["--expect-id", ID, "--key", "leaf.key"],
        "leaf.pem",
    ));
    ok(verify(dir, "ca.pem", &["--trust-domain", TD], "leaf.pem"));
    // Declaring the openssl CA as another trust domain's root must not let it vouch for ours.
    let t = fails(
        verify(
            dir,
            "ca.pem",
            &["--trust-domain", "other.local"],
            "leaf.pem",
        ),
        1,
    );
    assert!(t.contains("own-trust-domain"), "{t}");

    // A self-signed openssl SVID (`req -x509 -addext subjectAltName=URI:...`), its own bundle.
    let san = format!("subjectAltName=URI:{ID}");
    openssl_self_signed(
        dir,
        &["ed25519"],
        ("self.key", "self.pem"),
        "1",
        "/CN=self",
        &[
            &san,
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth,clientAuth",
        ],
    );
    let out = ok(certs(dir, &["inspect", "self.pem"]));
    assert!(out.contains("valid X.509-SVID"), "{out}");
    ok(verify(dir, "self.pem", &["--key", "self.key"], "self.pem"));
    // A plain `openssl req -x509` leaf gets CA:TRUE from the default config: named as such.
    openssl_self_signed(
        dir,
        P256,
        ("plain.key", "plain.pem"),
        "1",
        "/CN=plain",
        &[&san, "basicConstraints=critical,CA:TRUE"],
    );
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
    init_ca(dir, &["--validity", "2h"]);
    issue(dir, ID, "a", &["--ttl", "1h"]);
    issue(dir, "spiffe://onlyoffice.local/b", "b", &["--ttl", "1h"]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", "missing.pem"], "cannot read missing.pem"),
        (
            vec!["inspect", "a/svid.key"],
            "contains no CERTIFICATE PEM block (found: PRIVATE KEY)",
        ),
        (
            verify_args("a/svid.key", &[], "a/svid.pem"),
            "contains no CERTIFICATE PEM block",
        ),
        (
            verify_args("ca/bundle.pem", &["--key", "b/svid.key"], "a/svid.pem"),
            "does not match the certificate",
        ),
        (
            verify_args("ca/bundle.pem", &["--key", "a/svid.pem"], "a/svid.pem"),
            "contains no PRIVATE KEY",
        ),
        (
            issue_args(ID, "c", &["--ttl", "3h"]),
            "after the CA's own validity",
        ),
        (
            issue_args("spiffe://onlyoffice.local:8443/x", "c", &[]),
            "must not contain a port",
        ),
        (issue_args(ID, "c", &["--ttl", "soon"]), "invalid duration"),
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
            verify_args(
                "ca/bundle.pem",
                &["--expect-id", "spiffe://x/y?z"],
                "a/svid.pem",
            ),
            "must not contain a query",
        ),
    ];
    // Runtime errors exit 1; usage errors (clap) exit 2.
    for (args, want) in cases {
        let t = fails(certs(dir, &args), 1);
        assert!(t.contains(want), "{args:?}: expected {want:?} in:\n{t}");
    }
    assert!(!dir.join("c").exists() && !dir.join("x").exists());
    let t = fails(certs(dir, &["issue", "--ca", "ca", "--out", "c"]), 2);
    assert!(t.contains("--spiffe-id"), "{t}");
    // Not a valid SVID (as opposed to a usage error) exits 1.
    let t = fails(
        verify(
            dir,
            "ca/bundle.pem",
            &["--expect-id", "spiffe://onlyoffice.local/b"],
            "a/svid.pem",
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
    init_ca(dir, &[]);
    issue(dir, ID, "s", &[]);
    let pem = std::fs::read(dir.join("ca/root.pem")).unwrap();
    let der = docmesh_certs::pem::certs(&pem, "root").unwrap().remove(0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    std::fs::write(
        dir.join("bundle.json"),
        format!(r#"{{"spiffe_sequence": 3, "keys": [{{"use": "x509-svid", "kty": "EC", "x5c": ["{b64}"]}}]}}"#),
    )
    .unwrap();
    ok(verify(
        dir,
        "bundle.json",
        &["--expect-id", ID],
        "s/svid.pem",
    ));
    // Declared for another trust domain, the same roots do not vouch for ours.
    let t = fails(
        verify(
            dir,
            "bundle.json",
            &["--trust-domain", "other.local"],
            "s/svid.pem",
        ),
        1,
    );
    assert!(t.contains("own-trust-domain"), "{t}");
    std::fs::write(dir.join("empty.json"), r#"{"keys": []}"#).unwrap();
    let t = fails(verify(dir, "empty.json", &[], "s/svid.pem"), 1);
    assert!(t.contains("x509-svid"), "{t}");
}
