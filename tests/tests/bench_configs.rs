//! The benchmark's proxy configurations are accepted by the real programs: `nginx -t` and
//! `haproxy -c` for both sides of their pairs (HAProxy with HTTP/1.1 and with HTTP/2 on the
//! mesh hop), and docmesh's own config loader for the docmesh pair (the benchmark itself is
//! never run by the test suite).

use std::path::Path;
use std::process::Command;

use docmesh_tests::bench::configs::{self, MeshAlpn, PairPorts};
use docmesh_tests::bench::pki::{Pki, SERVER_ID};
use docmesh_tests::bench::tools;

const PORTS: PairPorts = PairPorts {
    outbound: 18001,
    inbound: 18002,
    backend: 18003,
};

fn program(bin: &str) -> std::path::PathBuf {
    tools::find(bin).unwrap_or_else(|| {
        panic!("{bin} is not installed: run tests/scripts/install-deps.sh (apt-get install {bin})")
    })
}

fn assert_accepted(what: &str, cmd: &mut Command, config: &str) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} rejected the benchmark config ({}):\n{}{}\nconfig:\n{config}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn nginx_accepts_both_sides_of_its_pair() {
    let nginx = program("nginx");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    for (role, text) in [
        (
            "outbound",
            configs::nginx_outbound(dir.path(), &pki, PORTS, 11_000),
        ),
        (
            "inbound",
            configs::nginx_inbound(dir.path(), &pki, PORTS, 11_000),
        ),
    ] {
        assert!(text.contains("worker_processes 1;"), "{text}");
        assert!(text.contains("worker_connections 11000;"), "{text}");
        assert!(text.contains("TLSv1.3"), "{text}");
        let cfg = write(dir.path(), &format!("nginx-{role}.conf"), &text);
        assert_accepted(
            &format!("nginx -t ({role})"),
            Command::new(&nginx)
                .arg("-t")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("startup.log"))
                .arg("-c")
                .arg(&cfg),
            &text,
        );
    }
}

#[test]
fn haproxy_accepts_both_sides_of_its_pairs() {
    let haproxy = program("haproxy");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    for (alpn, token) in [
        (MeshAlpn::Http1, "alpn http/1.1"),
        (MeshAlpn::H2, "alpn h2"),
    ] {
        for (role, text) in [
            (
                "outbound",
                configs::haproxy_outbound(&pki, PORTS, alpn, 10_200),
            ),
            (
                "inbound",
                configs::haproxy_inbound(&pki, PORTS, alpn, 10_200),
            ),
        ] {
            assert!(text.contains("nbthread 1"), "{text}");
            assert!(text.contains("verify required"), "{text}");
            assert!(text.contains(token), "{alpn:?} {role}: {text}");
            assert!(text.contains("maxconn 10200"), "{text}");
            let cfg = write(dir.path(), &format!("haproxy-{alpn:?}-{role}.cfg"), &text);
            assert_accepted(
                &format!("haproxy -c ({alpn:?} {role})"),
                Command::new(&haproxy).arg("-c").arg("-f").arg(&cfg),
                &text,
            );
        }
    }
}

#[test]
fn docmesh_loads_both_sides_of_its_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let out = write(
        dir.path(),
        "out.toml",
        &configs::docmesh_outbound(&pki, PORTS),
    );
    let c = docmesh_proxy::check::load(Some(&out)).unwrap();
    assert!(!c.outbound.transparent && !c.inbound.transparent);
    assert_eq!(c.outbound.listeners.len(), 1);
    assert_eq!(c.outbound.listeners[0].listen.port(), PORTS.outbound);
    assert_eq!(c.outbound.services[0].spiffe_id, SERVER_ID);
    let inb = write(
        dir.path(),
        "in.toml",
        &configs::docmesh_inbound(&pki, PORTS),
    );
    let c = docmesh_proxy::check::load(Some(&inb)).unwrap();
    assert_eq!(c.inbound.ports.len(), 1);
    assert_eq!(c.inbound.ports[0].app_port, PORTS.backend);
    assert!(!c.observability.access_log.enabled);
    // The connection-scale test holds 10 000 idle client connections on one listener.
    assert!(c.limits.max_connections_per_listener > 10_000);
    assert!(c.limits.max_connections > 10_000);
}

#[test]
fn wrk_summary_is_parsed() {
    let out = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n\
               \x20 120000 requests in 2.00s, 130.00MB read\n\
               \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
               \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  59999.50\nTransfer/sec: 65MB\n";
    let t = docmesh_tests::bench::load::parse_wrk(out).unwrap();
    assert_eq!(t.requests, 120000);
    assert!((t.seconds - 2.0).abs() < 1e-9);
    assert!((t.rps - 59999.5).abs() < 1e-9);
    assert_eq!(t.errors, 7);
    assert!(docmesh_tests::bench::load::parse_wrk("garbage").is_err());
}
