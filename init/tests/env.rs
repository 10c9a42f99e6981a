//! Every option can come from a `DOCMESH_INIT_*` environment variable (Pod specs, compose).
//! One test in its own binary, because the environment is process-wide.

mod common;

use common::{run, FakeHost};

#[test]
fn options_from_environment() {
    let vars = [
        ("DOCMESH_INIT_INBOUND_PORT", "16006"),
        ("DOCMESH_INIT_OUTBOUND_PORT", "16001"),
        ("DOCMESH_INIT_INBOUND_PORTS", "80,443"),
        ("DOCMESH_INIT_EXCLUDE_INBOUND_PORTS", "22"),
        ("DOCMESH_INIT_EXCLUDE_OUTBOUND_PORTS", "25"),
        ("DOCMESH_INIT_EXCLUDE_OUTBOUND_CIDRS", "169.254.0.0/16"),
        ("DOCMESH_INIT_INCLUDE_OUTBOUND_CIDRS", "10.0.0.0/8"),
        ("DOCMESH_INIT_PROXY_UID", "2000"),
        ("DOCMESH_INIT_PROXY_GID", "2001"),
        ("DOCMESH_INIT_BACKEND", "legacy"),
        ("DOCMESH_INIT_IPV6", "off"),
        ("DOCMESH_INIT_DRY_RUN", "true"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let host = FakeHost::new();
    let out = run(&host, &[]).unwrap();
    for needle in [
        "iptables-legacy-restore --noflush",
        "--dport 80 -m comment --comment \"docmesh: redirect inbound port 80\"",
        "--dport 443",
        "REDIRECT --to-ports 16006",
        "REDIRECT --to-ports 16001",
        "--dport 25 -m comment --comment \"docmesh: outbound port 25 excluded\"",
        "-d 169.254.0.0/16",
        "-d 10.0.0.0/8",
        "--uid-owner 2000",
        "--gid-owner 2001",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(!out.contains("IPv6"), "{out}");
    assert!(
        !out.contains("--dport 22 "),
        "22 is not in the listed inbound ports:\n{out}"
    );
    assert!(
        host.calls_of("iptables-legacy-restore").is_empty(),
        "dry run"
    );

    std::env::set_var("DOCMESH_INIT_EXCLUDE_INBOUND_PORTS", "443");
    let err = run(&FakeHost::new(), &[]).unwrap_err();
    assert!(err.contains("inbound port 443 is both listed"), "{err}");
    std::env::set_var("DOCMESH_INIT_CLEANUP", "1");
    std::env::remove_var("DOCMESH_INIT_EXCLUDE_INBOUND_PORTS");
    let out = run(&FakeHost::new(), &[]).unwrap();
    assert!(out.contains("no docmesh rules present"), "{out}");
}
