//! Helpers shared by the `docmesh-certs` CLI tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `docmesh-certs` binary in `dir`.
pub fn certs(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_docmesh-certs"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run docmesh-certs");
    // A panic exits with 101: never acceptable, whatever the input.
    assert_ne!(
        out.status.code(),
        Some(101),
        "docmesh-certs panicked on {args:?}: {}",
        text(&out)
    );
    assert!(
        out.status.code().is_some(),
        "docmesh-certs killed by a signal on {args:?}"
    );
    out
}

/// Runs `openssl` in `dir`, failing clearly if it is not installed.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("these tests need the `openssl` command line tool; install it (e.g. apt-get install openssl)")
        }
        Err(e) => panic!("cannot run openssl: {e}"),
    }
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts success and returns the text.
pub fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(
        o.status.success(),
        "expected success, got {:?}:\n{t}",
        o.status
    );
    t
}

/// Asserts failure with `code` and returns the text.
pub fn fails(o: Output, code: i32) -> String {
    let t = text(&o);
    assert_eq!(o.status.code(), Some(code), "expected exit {code}:\n{t}");
    t
}
