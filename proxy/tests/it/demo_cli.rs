//! `docmesh-proxy demo` as the README runs it: it must finish by itself, exit 0, and tell what
//! happened (identities, the two calls, the two named failures, the shutdown).

use std::time::{Duration, Instant};

#[tokio::test]
async fn demo_runs_the_mesh_and_explains_it() {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
            .arg("demo")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo must finish by itself")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    let integrator = "spiffe://demo.docmesh.local/ns/portal/sa/integrator";
    let docserver = "spiffe://demo.docmesh.local/ns/onlyoffice/sa/documentserver";
    // /certs of both sidecars.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("integrator") && l.contains(integrator) && l.contains("serial")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("documentserver") && l.contains(docserver) && l.contains("serial")),
        "{stdout}"
    );
    // Each app learned its caller's verified SPIFFE ID from its sidecar.
    assert!(
        stdout.contains(&format!("the document server saw caller: {integrator}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("the integrator saw caller: {docserver}")),
        "{stdout}"
    );
    // The command and the callback went through.
    assert!(
        stdout.contains("answer: 200 {\"error\":0,\"key\":\"demo-doc-1\"}"),
        "{stdout}"
    );
    assert!(stdout.contains("answer: 200 {\"error\":0}"), "{stdout}");
    // The two failures, with their causes and details.
    assert!(
        stdout.contains("answer: 502, docmesh-error: identity-mismatch"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("\"cause\":\"identity-mismatch\"")
                && l.contains(docserver)
                && l.contains("spiffe://demo.docmesh.local/ns/onlyoffice/sa/converter")),
        "the detail names what was presented and what was expected:\n{stdout}"
    );
    assert!(
        stdout.contains("answer: 502, docmesh-error: connect-refused"),
        "{stdout}"
    );
    assert!(stdout.contains("\"hop\":\"inbound\""), "{stdout}");
    assert!(
        stdout.contains("both sidecars drained and stopped"),
        "{stdout}"
    );

    // The temporary CA and SVID files are gone.
    let dir = stdout
        .lines()
        .find_map(|l| l.split("SVIDs written to ").nth(1))
        .expect("the demo names its directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} was left behind"
    );
}
