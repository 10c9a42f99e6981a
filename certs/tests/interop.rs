//! What `docmesh-certs` issues and exports, checked by independent tools: openssl verifies
//! every kind of certificate (with and without an intermediate CA); curl and Node.js
//! (`NODE_EXTRA_CA_CERTS`) trust an ingress certificate through the exported CA PEM, served by
//! a real TLS server on loopback; PyJWT and pyca/cryptography read the exported SPIFFE bundle
//! JSON (tests/scripts/install-deps.sh installs node, curl and the Python packages).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{certs, fails, ok, openssl, text};

const TD: &str = "onlyoffice.local";
const ID: &str = "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice";
const INGRESS_BODY: &str = "hello from the ingress\n";

fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    match Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run {program} ({e}); tests/scripts/install-deps.sh installs it"),
    }
}

fn verify(dir: &Path, extra: &[&str], cert: &str) -> Output {
    let mut args = vec!["verify", "-CAfile", "ca/root.pem"];
    args.extend_from_slice(extra);
    args.push(cert);
    openssl(dir, &args)
}

#[test]
fn openssl_verifies_every_kind_issued() {
    for intermediate in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let mut init = vec!["init", "--trust-domain", TD, "--out", "ca"];
        if intermediate {
            init.push("--intermediate");
        }
        ok(certs(dir, &init));
        ok(certs(
            dir,
            &["issue", "--ca", "ca", "--spiffe-id", ID, "--out", "svid"],
        ));
        let t = ok(certs(
            dir,
            &[
                "issue",
                "--ca",
                "ca",
                "--dns",
                "office.example",
                "--ip",
                "10.0.0.7",
                "--out",
                "server",
            ],
        ));
        assert!(t.contains("server auth, valid 1day"), "{t}");
        ok(certs(
            dir,
            &[
                "issue", "--ca", "ca", "--dns", "app", "--client", "--out", "client",
            ],
        ));
        ok(certs(
            dir,
            &[
                "issue", "--ca", "ca", "--dns", "both", "--server", "--client", "--out", "both",
            ],
        ));
        // The chain files hold the intermediate, so openssl gets them as untrusted too.
        let cases = [
            ("svid/svid.pem", "sslserver", true),
            ("svid/svid.pem", "sslclient", true),
            ("server/tls.crt", "sslserver", true),
            ("server/tls.crt", "sslclient", false),
            ("client/tls.crt", "sslclient", true),
            ("client/tls.crt", "sslserver", false),
            ("both/tls.crt", "sslserver", true),
            ("both/tls.crt", "sslclient", true),
        ];
        for (cert, purpose, want) in cases {
            let o = verify(dir, &["-untrusted", cert, "-purpose", purpose], cert);
            assert_eq!(
                o.status.success() && text(&o).contains(": OK"),
                want,
                "openssl verify -purpose {purpose} {cert} (intermediate: {intermediate}):\n{}",
                text(&o)
            );
        }
        let o = openssl(
            dir,
            &[
                "x509",
                "-in",
                "server/tls.crt",
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        let sans = text(&o);
        assert!(
            sans.contains("DNS:office.example") && sans.contains("IP Address:10.0.0.7"),
            "{sans}"
        );
        // The key belongs to the certificate.
        let pubkey = |args: &[&str]| text(&openssl(dir, args));
        assert_eq!(
            pubkey(&["x509", "-in", "server/tls.crt", "-noout", "-pubkey"]),
            pubkey(&["pkey", "-in", "server/tls.key", "-pubout"])
        );
        // Bad input is named, not accepted.
        let t = fails(
            certs(dir, &["issue", "--ca", "ca", "--dns", "a b", "--out", "x"]),
            1,
        );
        assert!(t.contains("DNS name \"a b\""), "{t}");
        let t = fails(
            certs(
                dir,
                &["issue", "--ca", "ca", "--ip", "10.0.0.300", "--out", "x"],
            ),
            2,
        );
        assert!(t.contains("10.0.0.300"), "{t}");
        assert!(!dir.join("x").exists());
    }
}

/// Serves `cert`/`key` over TLS on 127.0.0.1 (any port) from a background thread: each
/// connection gets one HTTP/1.1 200 answer. Returns the port.
fn start_ingress(cert: &Path, key: &Path) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain = docmesh_certs::pem::certs(&std::fs::read(cert).unwrap(), "tls.crt").unwrap();
    let key = docmesh_certs::pem::private_key(&std::fs::read(key).unwrap(), "tls.key").unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // Handshake failures are the clients' negative checks: just drop them.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = vec![0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{INGRESS_BODY}",
                        INGRESS_BODY.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    port
}

const NODE_GET: &str = "require('https').get(process.argv[1], r => { let b = ''; \
    r.on('data', d => b += d); r.on('end', () => { process.stdout.write(b); \
    process.exit(r.statusCode === 200 ? 0 : 3); }); }).on('error', e => { \
    console.error(e.code || e.message); process.exit(4); });";

#[test]
fn curl_and_node_trust_the_ingress_through_the_exported_ca() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(certs(
        dir,
        &[
            "init",
            "--trust-domain",
            TD,
            "--out",
            "ca",
            "--intermediate",
        ],
    ));
    ok(certs(
        dir,
        &[
            "issue",
            "--ca",
            "ca",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            "ingress",
        ],
    ));
    let t = ok(certs(
        dir,
        &["export", "--ca", "ca", "--out", "trust/internal-ca.pem"],
    ));
    assert!(t.contains("trust/internal-ca.pem"), "{t}");
    let exported = std::fs::read_to_string(dir.join("trust/internal-ca.pem")).unwrap();
    assert_eq!(
        exported,
        std::fs::read_to_string(dir.join("ca/root.pem")).unwrap()
    );
    let port = start_ingress(&dir.join("ingress/tls.crt"), &dir.join("ingress/tls.key"));

    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}/");
        // curl: trusted with the exported CA, refused without it.
        let o = run(
            dir,
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                "trust/internal-ca.pem",
                &url,
            ],
            &[],
        );
        assert_eq!(ok(o), INGRESS_BODY, "curl {url}");
        let o = run(dir, "curl", &["-sS", "--max-time", "20", &url], &[]);
        assert!(
            !o.status.success(),
            "curl must not trust {url} without the CA"
        );
        // Node.js: NODE_EXTRA_CA_CERTS as OnlyOffice's containers use it.
        let node =
            |env: &[(&str, &str)]| run(dir, "timeout", &["30", "node", "-e", NODE_GET, &url], env);
        let o = node(&[("NODE_EXTRA_CA_CERTS", "trust/internal-ca.pem")]);
        assert_eq!(ok(o), INGRESS_BODY, "node {url}");
        let o = node(&[]);
        assert_eq!(
            o.status.code(),
            Some(4),
            "node must not trust {url} without the CA: {}",
            text(&o)
        );
    }
}

const PY_READ_BUNDLE: &str = r#"
import base64, hashlib, json, sys
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

doc = json.load(open(sys.argv[1]))
assert isinstance(doc["spiffe_sequence"], int) and doc["spiffe_sequence"] > 0, doc
jwks = jwt.PyJWKSet.from_dict(doc)
spki = serialization.PublicFormat.SubjectPublicKeyInfo
der = serialization.Encoding.DER
for raw, key in zip(doc["keys"], jwks.keys):
    assert raw["use"] == "x509-svid", raw
    cert = x509.load_der_x509_certificate(base64.b64decode(raw["x5c"][0]))
    # The JWK's public key is the certificate's.
    assert key.key.public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    print(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest())
"#;

fn sha256_of_pem_cert(dir: &Path, file: &str) -> String {
    let o = openssl(
        dir,
        &["x509", "-in", file, "-noout", "-fingerprint", "-sha256"],
    );
    let t = text(&o);
    t.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

#[test]
fn pyjwt_reads_the_exported_spiffe_bundle_json() {
    for alg in ["ecdsa-p256", "ed25519", "rsa-3072"] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        ok(certs(
            dir,
            &[
                "init",
                "--trust-domain",
                TD,
                "--out",
                "ca",
                "--algorithm",
                alg,
            ],
        ));
        ok(certs(
            dir,
            &[
                "init",
                "--trust-domain",
                TD,
                "--out",
                "ca2",
                "--algorithm",
                alg,
            ],
        ));
        // A rotation bundle: both roots.
        let both = std::fs::read_to_string(dir.join("ca/root.pem")).unwrap()
            + &std::fs::read_to_string(dir.join("ca2/root.pem")).unwrap();
        std::fs::write(dir.join("ca/bundle.pem"), both).unwrap();
        ok(certs(
            dir,
            &[
                "export",
                "--ca",
                "ca",
                "--format",
                "spiffe-json",
                "--out",
                "bundle.json",
            ],
        ));
        std::fs::write(dir.join("read.py"), PY_READ_BUNDLE).unwrap();
        let o = run(dir, "python3", &["read.py", "bundle.json"], &[]);
        let printed = ok(o);
        let want = format!(
            "{}\n{}\n",
            sha256_of_pem_cert(dir, "ca/root.pem"),
            sha256_of_pem_cert(dir, "ca2/root.pem")
        );
        assert_eq!(printed, want, "{alg}");
        // Our own reader accepts it as well (verify with a JSON bundle).
        ok(certs(
            dir,
            &["issue", "--ca", "ca", "--spiffe-id", ID, "--out", "s"],
        ));
        ok(certs(
            dir,
            &[
                "verify",
                "--bundle",
                "bundle.json",
                "--trust-domain",
                TD,
                "s/svid.pem",
            ],
        ));
    }
}
