//! Golden tests: the exact `iptables-restore` input (`--dry-run` output) for a range of option
//! sets and starting states, and the exact messages for contradictory options. Expected
//! outputs live in tests/golden/; `DOCMESH_UPDATE_GOLDEN=1 cargo test -p docmesh-init`
//! rewrites them (review the diff before committing).

mod common;

use std::path::PathBuf;

use common::{run, FakeHost};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("DOCMESH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with DOCMESH_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "golden file {} differs", path.display());
}

fn dry(name: &str, host: &FakeHost, args: &[&str]) {
    let mut argv = vec!["--dry-run"];
    argv.extend_from_slice(args);
    let out = run(host, &argv).unwrap();
    golden(name, &format!("# args: {}\n{out}", args.join(" ")));
    // A dry run never changes anything.
    assert!(host
        .calls
        .borrow()
        .iter()
        .all(|c| !c.0.ends_with("-restore")));
}

#[test]
fn option_sets() {
    let h = FakeHost::new;
    dry("defaults", &h(), &[]);
    dry(
        "excluded_ports",
        &h(),
        &[
            "--exclude-inbound-ports",
            "22,15020",
            "--exclude-outbound-ports",
            "25, 3306",
        ],
    );
    dry(
        "listed_inbound_ports",
        &h(),
        &["--inbound-ports", "80,8000", "--ipv6", "off"],
    );
    dry(
        "no_inbound_capture",
        &h(),
        &["--inbound-ports", "", "--ipv6", "off"],
    );
    dry(
        "include_and_exclude_cidrs",
        &h(),
        &[
            "--include-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
            "--exclude-outbound-cidrs",
            "192.168.0.0/16,2001:db8::/32",
        ],
    );
    dry(
        "include_ipv4_only",
        &h(),
        &["--include-outbound-cidrs", "10.96.0.0/12"],
    );
    dry(
        "custom_ports_and_ids",
        &h(),
        &[
            "--inbound-port",
            "16006",
            "--outbound-port",
            "16001",
            "--proxy-uid",
            "1000,1001",
            "--proxy-gid",
            "",
            "--backend",
            "legacy",
        ],
    );
    let mut no6 = h();
    no6.ipv6 = false;
    dry("namespace_without_ipv6", &no6, &[]);
}

/// A second run against a namespace that already holds docmesh's rules (plus a duplicate jump
/// and someone else's rule) only refills docmesh's chains and drops the duplicate.
#[test]
fn rerun_and_cleanup() {
    let installed = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :DOCMESH_INBOUND - [0:0]\n:DOCMESH_INBOUND_REDIRECT - [0:0]\n:DOCMESH_OUTPUT - [0:0]\n:DOCMESH_OUTPUT_REDIRECT - [0:0]\n\
         -A PREROUTING -p tcp -m comment --comment \"docmesh: capture inbound tcp\" -j DOCMESH_INBOUND\n\
         -A OUTPUT -p tcp -m tcp --dport 53 -j ACCEPT\n\
         -A OUTPUT -p tcp -m comment --comment \"docmesh: capture outbound tcp\" -j DOCMESH_OUTPUT\n\
         -A OUTPUT -p tcp -m comment --comment \"docmesh: capture outbound tcp\" -j DOCMESH_OUTPUT\n\
         -A DOCMESH_OUTPUT -m comment --comment \"docmesh: redirect outbound tcp\" -j DOCMESH_OUTPUT_REDIRECT\n\
         COMMIT\n"
    );
    let mut host = FakeHost::new();
    host.ipv6 = false;
    host.saves.insert("iptables-nft-save".into(), installed);
    dry(
        "rerun_over_existing",
        &host,
        &["--exclude-outbound-ports", "53"],
    );
    dry("cleanup_existing", &host, &["--cleanup"]);
    dry("cleanup_nothing", &FakeHost::new(), &["--cleanup"]);
}

#[test]
fn contradictory_options() {
    let cases: &[&[&str]] = &[
        &["--inbound-ports", "80,22", "--exclude-inbound-ports", "22"],
        &[
            "--include-outbound-cidrs",
            "10.0.0.0/8",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12",
        ],
        &[
            "--include-outbound-cidrs",
            "fd00::/8",
            "--exclude-outbound-cidrs",
            "fd00:1::/32",
        ],
        &["--exclude-outbound-cidrs", "10.1.2.3/8"],
        &["--exclude-outbound-cidrs", "10.0.0.0/33"],
        &["--exclude-outbound-cidrs", "kube-dns"],
        &["--exclude-inbound-ports", "ssh"],
        &["--exclude-outbound-ports", "70000"],
        &["--inbound-port", "15001"],
        &["--inbound-ports", "15001"],
        &["--proxy-uid", "", "--proxy-gid", ""],
        &["--proxy-uid", "istio-proxy"],
        &["--backend", "iptables"],
    ];
    let mut text = String::new();
    for args in cases {
        let host = FakeHost::new();
        let err = run(&host, args).unwrap_err();
        assert!(host.calls.borrow().is_empty(), "{args:?} ran a command");
        let first = err.lines().next().unwrap_or_default();
        text.push_str(&format!("{}\n  => {first}\n", args.join(" ")));
    }
    golden("errors", &text);
}
