//! The install/cleanup flow on a fake machine: one restore call per family, verification,
//! backend choice, and the errors an operator sees.

mod common;

use common::{run, FakeHost, EMPTY_NAT};
use docmesh_init::options::Options;
use docmesh_init::rules::{self, Family};

/// What the fake's `*-save` shows after a successful install.
fn installed_save(opts: &Options, family: Family) -> String {
    let mut s = EMPTY_NAT.replace("COMMIT\n", "");
    for c in rules::CHAINS {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in rules::expected_save_lines(opts, family) {
        s.push_str(&l);
        s.push('\n');
    }
    s + "COMMIT\n"
}

#[test]
fn one_restore_call_per_family() {
    let mut host = FakeHost::new();
    // The fake does not apply the input, so show installed rules on every read.
    host.saves.insert(
        "iptables-nft-save".into(),
        installed_save(&Options::default(), Family::V4),
    );
    host.saves.insert(
        "ip6tables-nft-save".into(),
        installed_save(&Options::default(), Family::V6),
    );
    let out = run(&host, &[]).unwrap();
    assert!(
        out.contains("IPv4 rules installed with iptables-nft-restore"),
        "{out}"
    );
    assert!(
        out.contains("IPv6 rules installed with ip6tables-nft-restore"),
        "{out}"
    );
    for bin in ["iptables-nft-restore", "ip6tables-nft-restore"] {
        let calls = host.calls_of(bin);
        assert_eq!(calls.len(), 1, "{bin}: {calls:?}");
        assert_eq!(calls[0].1, vec!["--noflush"]);
        let input = calls[0].2.as_deref().unwrap();
        assert!(input.starts_with("*nat\n") && input.ends_with("COMMIT\n"));
    }
    assert!(host.calls_of("iptables-legacy-restore").is_empty());
}

#[test]
fn install_fails_when_the_kernel_shows_other_rules() {
    let host = FakeHost::new(); // the save after restore still shows an empty table
    let err = run(&host, &["--ipv6", "off"]).unwrap_err();
    assert!(
        err.contains("does not hold the rules docmesh-init wrote"),
        "{err}"
    );
}

#[test]
fn auto_backend_prefers_the_one_with_rules() {
    let mut host = FakeHost::new();
    host.saves.insert(
        "iptables-legacy-save".into(),
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n".into(),
    );
    let out = run(&host, &["--dry-run", "--ipv6", "off"]).unwrap();
    assert!(out.contains("iptables-legacy-restore --noflush"), "{out}");
    let out = run(&host, &["--dry-run", "--ipv6", "off", "--backend", "nft"]).unwrap();
    assert!(out.contains("iptables-nft-restore --noflush"), "{out}");
    // Only legacy installed.
    let mut host = FakeHost::new();
    host.installed.retain(|b| !b.contains("-nft"));
    let out = run(&host, &["--dry-run", "--ipv6", "off"]).unwrap();
    assert!(out.contains("iptables-legacy-restore"), "{out}");
    let err = run(&host, &["--backend", "nft"]).unwrap_err();
    assert!(
        err.contains("iptables-nft-restore is not installed"),
        "{err}"
    );
}

#[test]
fn operator_errors_name_the_cause() {
    let mut host = FakeHost::new();
    host.net_admin = false;
    let err = run(&host, &[]).unwrap_err();
    assert!(err.contains("lacks CAP_NET_ADMIN"), "{err}");
    assert!(host.calls.borrow().is_empty());

    let mut host = FakeHost::new();
    host.net_raw = false;
    let err = run(&host, &["--backend", "legacy"]).unwrap_err();
    assert!(err.contains("CAP_NET_RAW"), "{err}");

    let mut host = FakeHost::new();
    host.installed.clear();
    let err = run(&host, &[]).unwrap_err();
    assert!(err.contains("no iptables-restore found"), "{err}");

    let mut host = FakeHost::new();
    host.failures.insert(
        "iptables-nft-save".into(),
        "iptables-nft-save v1.8.9: Table does not exist (do you need to insmod?)".into(),
    );
    let err = run(&host, &[]).unwrap_err();
    assert!(
        err.starts_with("IPv4: the kernel offers no nat table"),
        "{err}"
    );

    // Missing IPv6 nat under --ipv6 auto: IPv4 proceeds, IPv6 is skipped with a note.
    let mut host = FakeHost::new();
    host.failures.insert(
        "ip6tables-nft-save".into(),
        "ip6tables-nft-save: Table does not exist (do you need to insmod?)".into(),
    );
    let out = run(&host, &["--dry-run"]).unwrap();
    assert!(out.contains("no IPv6 nat table; IPv6 left alone"), "{out}");
    let err = run(&host, &["--ipv6", "on"]).unwrap_err();
    assert!(
        err.starts_with("IPv6: the kernel offers no nat table"),
        "{err}"
    );

    let mut host = FakeHost::new();
    host.failures.insert(
        "iptables-nft-save".into(),
        "Could not fetch rule set generation id: Permission denied (you must be root)".into(),
    );
    let err = run(&host, &[]).unwrap_err();
    assert!(err.contains("needs CAP_NET_ADMIN"), "{err}");
}
