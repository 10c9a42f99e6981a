//! `docmesh-proxy check` run as a real process: exit status, field paths, env overrides.

use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"));
    cmd.arg("check").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[outbound]
transparent = false
[[outbound.services]]
name = "documentserver"
addresses = ["127.0.0.1:16080"]
spiffe_id = "spiffe://example.org/ns/oo/sa/documentserver"
[[outbound.listeners]]
listen = "127.0.0.1:18000"
service = "documentserver"
"#;

#[test]
fn a_valid_file_passes() {
    let (ok, out, err) = check(GOOD, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(
        out.contains("1 service(s), 1 explicit listener(s)"),
        "{out}"
    );
}

#[test]
fn every_problem_is_named_by_its_field_path() {
    let bad = r#"
[inbound]
mode = "lenient"
[outbound]
detect_timout = "1s"
[[outbound.services]]
name = "documentserver"
addresses = ["documentserver"]
spiffe_id = "spiffe://example.org/ns/oo/sa/documentserver"
[[outbound.services]]
name = "documentserver"
addresses = ["10.0.0.1:80"]
spiffe_id = "spiffe://example.org/x"
[[outbound.listeners]]
listen = "127.0.0.1:18000"
service = "docserver"
"#;
    let (ok, out, err) = check(bad, &[]);
    assert!(!ok, "{out}{err}");
    for path in [
        "inbound.mode:",
        "outbound.detect_timout:",
        "outbound.services[0].addresses[0]:",
        "outbound.services[1].name:",
        "outbound.listeners[0].service:",
    ] {
        assert!(err.contains(path), "missing {path} in:\n{err}");
    }
    assert!(err.contains("5 problem(s)"), "{err}");
}

#[test]
fn environment_overrides_apply_and_are_named_when_wrong() {
    let (ok, out, err) = check(
        GOOD,
        &[(
            "DOCMESH_OUTBOUND__SERVICES__0__SPIFFE_ID",
            "http://not-spiffe/x",
        )],
    );
    assert!(!ok, "{out}{err}");
    assert!(err.contains("outbound.services[0].spiffe_id:"), "{err}");

    let (ok, out, err) = check(GOOD, &[("DOCMESH_INBOUND__MODE", "sloppy")]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("inbound.mode:") && err.contains("DOCMESH_INBOUND__MODE"),
        "{err}"
    );

    let (ok, out, err) = check(GOOD, &[("DOCMESH_OUTBOUND__TRANSPARENT", "true")]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("transparent 127.0.0.1:15001"), "{out}");
}

#[test]
fn unreadable_and_malformed_files_are_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
        .args(["check", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let (ok, _, err) = check("[outbound\n", &[]);
    assert!(!ok);
    assert!(err.contains("not valid TOML"), "{err}");
}

#[test]
fn a_bad_thread_count_stops_run_with_an_error_naming_it_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, GOOD).unwrap();
    for bad in ["many", "0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_docmesh-proxy"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Exit status 1 (an error), not an abort by signal.
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "TOKIO_WORKER_THREADS=\"{bad}\" is not a positive whole number"
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
