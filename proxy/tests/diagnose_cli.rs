//! The `docmesh-proxy diagnose` command end to end: config file, SVID files, a service name or
//! a URL, text and JSON output, exit codes.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_certs::tls::SpiffeClientVerifier;
use docmesh_certs::{SpiffeId, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CONVERTER: &str = "spiffe://example.org/ns/office/sa/converter";
const DOCSERVICE: &str = "spiffe://example.org/ns/office/sa/docservice";

struct Fixture {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Fixture {
    fn new() -> Fixture {
        let td: TrustDomain = "example.org".parse().unwrap();
        let ca =
            CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(3600))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let me = ca
            .issue_svid(
                &DOCSERVICE.parse::<SpiffeId>().unwrap(),
                Duration::from_secs(600),
            )
            .unwrap();
        std::fs::write(dir.path().join("svid.pem"), &me.cert_chain_pem).unwrap();
        std::fs::write(dir.path().join("svid.key"), &me.key_pem).unwrap();
        std::fs::write(dir.path().join("bundle.pem"), ca.root_cert_pem()).unwrap();
        Fixture { dir, ca }
    }

    /// A config whose `converter` service is at `port` and must be `CONVERTER`.
    fn config(&self, port: u16) -> std::path::PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            r#"
[identity]
cert = "{d}/svid.pem"
key = "{d}/svid.key"
bundle = "{d}/bundle.pem"

[[outbound.services]]
name = "converter"
addresses = ["127.0.0.1:{port}"]
spiffe_id = "{CONVERTER}"

[resilience.services.converter.health_check]
path = "/healthcheck"
expect_body = "true"
"#
        );
        let path = self.dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A TLS 1.3 peer presenting `id` and answering `200 true`.
    async fn peer(&self, id: &str) -> u16 {
        let svid = self
            .ca
            .issue_svid(&id.parse::<SpiffeId>().unwrap(), Duration::from_secs(600))
            .unwrap();
        let bundles = Arc::new(ArcSwap::from_pointee(self.ca.bundle()));
        let config =
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundles)))
                .with_single_cert(svid.chain.clone(), svid.private_key())
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue")
                            .await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        port
    }
}

async fn diagnose(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
            .arg("diagnose")
            .args(args)
            .env_remove("DOCMESH_CONFIG")
            .output(),
    )
    .await
    .expect("diagnose finishes within 60 s")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn service_by_name_healthy_then_wrong_identity() {
    let f = Fixture::new();
    let port = f.peer(CONVERTER).await;
    let cfg = f.config(port);
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) =
        diagnose(&["--config", cfg, "converter", "--path", "/healthcheck"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all steps passed"), "{out}");
    assert!(out.contains(&format!("{CONVERTER} (as expected)")), "{out}");

    // Another workload at the converter's address.
    let port = f.peer(DOCSERVICE).await;
    let cfg = f.config(port);
    let (code, out, err) =
        diagnose(&["--config", cfg.to_str().unwrap(), "converter", "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["finding"]["cause"], "identity-mismatch");
    assert_eq!(v["expected_id"], CONVERTER);
}

#[tokio::test]
async fn url_target_and_closed_port() {
    let f = Fixture::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = f.config(port);
    let url = format!("https://127.0.0.1:{port}/");
    let (code, out, err) = diagnose(&["--config", cfg.to_str().unwrap(), &url]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("cause: connect-refused"), "{out}");
    assert!(
        out.contains(&format!("expecting {CONVERTER}")),
        "the URL matched the service: {out}"
    );
    assert!(out.contains("check:"), "{out}");
}

#[tokio::test]
async fn bad_arguments_exit_2_with_a_reason() {
    let f = Fixture::new();
    let cfg = f.config(1);
    let (code, _, err) = diagnose(&["--config", cfg.to_str().unwrap(), "no-such-service"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("no-such-service") && err.contains("outbound.services"),
        "{err}"
    );
    let missing = f.dir.path().join("missing.toml");
    let (code, _, err) = diagnose(&["--config", missing.to_str().unwrap(), "converter"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");
}
