//! The `docmesh-init` binary itself: exit codes and the message an unprivileged run prints.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_docmesh-init");

/// Runs the binary without privileges: as `nobody` via setpriv when the test runs as root,
/// else as the current (unprivileged) user.
fn unprivileged(args: &[&str]) -> std::process::Output {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args(args).output().expect("run docmesh-init")
}

#[test]
fn without_net_admin_it_fails_and_says_what_is_missing() {
    let out = unprivileged(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks CAP_NET_ADMIN"), "{err}");
    assert!(err.contains("NET_ADMIN"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["--exclude-outbound-cidrs", "10.0.0.1/8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 10.0.0.0/8"));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DOCMESH_INIT_EXCLUDE_OUTBOUND_CIDRS"));
}
