//! The `docmesh-proxy diagnose` command end to end: config file, SVID files, a service name or
//! a URL, text and JSON output, exit codes.

use std::time::Duration;

use crate::support::{closed_port, dev_ca, start_true_peer, svid, CertificateAuthority};

const CONVERTER: &str = "spiffe://example.org/ns/office/sa/converter";
const DOCSERVICE: &str = "spiffe://example.org/ns/office/sa/docservice";

struct Fixture {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Fixture {
    fn new() -> Fixture {
        let ca = dev_ca("example.org");
        let dir = tempfile::tempdir().unwrap();
        let me = svid(&ca, DOCSERVICE);
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
        start_true_peer(&self.ca, &svid(&self.ca, id)).await
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
    let port = closed_port().port();
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
