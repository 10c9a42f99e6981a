//! `docmesh-certs renew`, one shot and `--watch`, as the compose certs service runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{certs, fails, ok};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TD: &str = "onlyoffice.local";
/// Only against hangs: the test itself waits for events, not for time.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

fn setup(ttl: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("svids.list"),
        "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice\n\
         spiffe://onlyoffice.local/ns/onlyoffice/sa/converter conv\n",
    )
    .unwrap();
    ok(certs(
        d.path(),
        &["init", "--trust-domain", TD, "--out", "ca"],
    ));
    ok(certs(
        d.path(),
        &[
            "issue",
            "--ca",
            "ca",
            "--from",
            "svids.list",
            "--out",
            "svids",
            "--ttl",
            ttl,
        ],
    ));
    d
}

#[test]
fn one_shot_renews_only_due_svids_and_names_bad_input() {
    let d = setup("24h");
    let dir = d.path();
    let before = std::fs::read(dir.join("svids/conv/svid.pem")).unwrap();
    let t = ok(certs(dir, &["renew", "--ca", "ca", "--dir", "svids"]));
    assert!(t.contains("2 up to date"), "{t}");
    assert_eq!(
        std::fs::read(dir.join("svids/conv/svid.pem")).unwrap(),
        before
    );

    // A share of zero is refused; the smallest share renews everything now.
    let t = fails(
        certs(
            dir,
            &["renew", "--ca", "ca", "--dir", "svids", "--renew-at", "0"],
        ),
        1,
    );
    assert!(t.contains("renew-at must be"), "{t}");
    let t = ok(certs(
        dir,
        &[
            "renew",
            "--ca",
            "ca",
            "--dir",
            "svids",
            "--renew-at",
            "0.000001",
            "--ttl",
            "2h",
        ],
    ));
    assert!(
        t.contains("renewed spiffe://onlyoffice.local/ns/onlyoffice/sa/converter in svids/conv"),
        "{t}"
    );
    assert!(t.contains("valid 2h"), "{t}");
    assert_ne!(
        std::fs::read(dir.join("svids/conv/svid.pem")).unwrap(),
        before
    );
    ok(certs(
        dir,
        &[
            "verify",
            "--bundle",
            "svids/conv/bundle.pem",
            "--key",
            "svids/conv/svid.key",
            "--expect-id",
            "spiffe://onlyoffice.local/ns/onlyoffice/sa/converter",
            "svids/conv/svid.pem",
        ],
    ));

    let t = fails(certs(dir, &["renew", "--ca", "ca", "--dir", "ca"]), 1);
    assert!(t.contains("no SVIDs under ca"), "{t}");
    let t = fails(certs(dir, &["renew", "--dir", "svids"]), 2);
    assert!(t.contains("--ca"), "{t}");
}

#[test]
fn watch_renews_before_expiry_and_exits_0_on_sigterm() {
    let d = setup("2s");
    let mut child = Command::new(env!("CARGO_BIN_EXE_docmesh-certs"))
        .args(["renew", "--ca", "ca", "--dir", "svids", "--renew-at", "0.5"])
        .args(["--ttl", "1h", "--watch", "--interval", "200ms"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines arrive through a channel so a hung child fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || rx.recv_timeout(HANG_GUARD);
    let mut renewed = Vec::new();
    while renewed.len() < 2 {
        match next() {
            Ok(line) if line.starts_with("renewed ") => renewed.push(line),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no renewal from --watch ({e}); saw {renewed:?}");
            }
        }
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let rest: Vec<String> = std::iter::from_fn(|| next().ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    // Renewed with the new lifetime; the next passes found nothing more to do.
    assert!(
        renewed.iter().all(|l| l.contains("valid 1h")),
        "{renewed:?}"
    );
    assert!(!rest.iter().any(|l| l.starts_with("renewed ")), "{rest:?}");
}
