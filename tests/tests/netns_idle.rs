//! Pools that respect their idle limits, with real sidecars in network namespaces: pod A's
//! sidecar keeps a mesh connection to pod B's (HTTP/1.1, the default, and HTTP/2); then a
//! firewall rule in A silently drops that established flow (as a NAT or conntrack table that
//! forgot it does: no RST, no ICMP). The next request must succeed on a new connection (the
//! unanswered TCP keep-alive probes, or the HTTP/2 keep-alive PING, retired the dead one),
//! not hang or fail; and an idle mesh connection is closed when `outbound.pool_idle_timeout`
//! passes, not kept for minutes. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use docmesh_tests::netns::probe::Responder;
use docmesh_tests::netns::sidecar::{self, url};
use docmesh_tests::netns::{Mesh, Pod};

/// Local ports of A's established TCP connections to `dst` (the sidecar's mesh connections;
/// curl's own connections are gone once curl exits).
fn established(pod: &Pod, dst: SocketAddr) -> Vec<u16> {
    let out = pod
        .stdout(&[
            "ss",
            "-Htn",
            "state",
            "established",
            "dst",
            &dst.to_string(),
        ])
        .unwrap();
    out.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(2)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn iptables(pod: &Pod, args: &[&str]) {
    let mut v = vec!["iptables"];
    v.extend_from_slice(args);
    pod.exec(&v).unwrap();
}

#[test]
fn netns_idle_http1_mesh_connections_are_retired_on_time_and_after_a_silent_drop() {
    retired_on_time_and_after_a_silent_drop("idle1.docmesh.test", false);
}

#[test]
fn netns_idle_http2_mesh_connections_are_retired_on_time_and_after_a_silent_drop() {
    retired_on_time_and_after_a_silent_drop("idle2.docmesh.test", true);
}

/// Idle limit of the pool in these tests: longer than the time a dead flow takes to be found
/// (HTTP/2: a PING unanswered for 1 s after 1 s idle; HTTP/1.1: three TCP keep-alive probes a
/// second apart after 1 s idle, so about 4 s), so that the retirement after the drop is the
/// liveness check's doing, not the idle limit's.
const POOL_IDLE: Duration = Duration::from_secs(8);

fn retired_on_time_and_after_a_silent_drop(trust_domain: &str, mesh_http2: bool) {
    let mesh = Mesh::new(
        trust_domain,
        &["a", "b"],
        env!("CARGO_BIN_EXE_docmesh-netns-proxy"),
    );
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let _app = Responder::http_echo(b, SocketAddr::new("0.0.0.0".parse().unwrap(), 8080)).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(b.ipv4), 8080);
    let a_config = format!(
        "[inbound]\nmode = \"strict\"\n[outbound]\npool_idle_timeout = \"{}s\"\n\
         h2_keep_alive_interval = \"1s\"\nh2_keep_alive_timeout = \"1s\"\nmesh_http2 = {mesh_http2}\n\
         [[outbound.services]]\nname = \"b\"\naddresses = [\"{dst}\"]\nspiffe_id = \"{}\"\n",
        POOL_IDLE.as_secs(),
        mesh.id("b")
    );
    mesh.start_sidecar(a, &a_config);
    mesh.start_sidecar(b, "[inbound]\nmode = \"strict\"\n");

    let (status, text, _) = sidecar::curl(a, &[&url(dst.ip(), 8080, "/first")]);
    assert_eq!(status, 200, "{text}");
    let first = established(a, dst);
    assert_eq!(
        first.len(),
        1,
        "one pooled mesh connection (HTTP/2: {mesh_http2}): {first:?}"
    );
    let port = first[0].to_string();

    // The flow is dropped silently in both directions, from now on.
    iptables(
        a,
        &["-I", "OUTPUT", "-p", "tcp", "--sport", &port, "-j", "DROP"],
    );
    iptables(
        a,
        &["-I", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
    );
    // Liveness checks every second (see POOL_IDLE): the dead connection is retired after
    // 5 s, before its idle limit would have closed it.
    std::thread::sleep(Duration::from_secs(5));
    let (status, text, elapsed) = sidecar::curl(a, &[&url(dst.ip(), 8080, "/after-drop")]);
    eprintln!("request after the silent drop: {status} in {elapsed:?}");
    assert_eq!(status, 200, "the request went into the dead flow: {text}");
    let second = established(a, dst);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "a new connection carried it");

    // Idle for longer than pool_idle_timeout: the pool closes it by itself.
    std::thread::sleep(POOL_IDLE - Duration::from_secs(2));
    assert_eq!(
        established(a, dst),
        second,
        "still open before its idle limit"
    );
    std::thread::sleep(Duration::from_secs(3));
    let left = established(a, dst);
    assert!(
        left.is_empty(),
        "idle mesh connections still open after {:?}: {left:?}",
        POOL_IDLE + Duration::from_secs(1)
    );
    let (status, text, _) = sidecar::curl(a, &[&url(dst.ip(), 8080, "/after-idle")]);
    assert_eq!(status, 200, "{text}");
}
