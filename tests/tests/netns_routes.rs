//! `[[outbound.routes]]` in transparent mode: pod A's unmodified client always calls
//! docservice at B's IP; A's sidecar (iptables redirect, original destination = B) splits the
//! requests 80/20 between docservice (pod B) and docservice-canary (pod C) and sends
//! `x-canary: 1` to C. The counts come from the apps themselves, within a 5-sigma binomial
//! bound, and agree with A's per-backend metrics. Needs root.

use std::net::SocketAddr;

use docmesh_tests::netns::probe::Responder;
use docmesh_tests::netns::sidecar::{self, url};
use docmesh_tests::netns::Mesh;

/// Every sidecar of this test: strict inbound, then `extra`.
fn sidecar_config(extra: &str) -> String {
    format!("[inbound]\nmode = \"strict\"\n\n{extra}")
}

#[test]
fn netns_routes_split_and_header_match_in_transparent_mode() {
    let mesh = Mesh::new(
        "routes.docmesh.test",
        &["a", "b", "c"],
        env!("CARGO_BIN_EXE_docmesh-netns-proxy"),
    );
    let (a, b, c) = (mesh.pod("a"), mesh.pod("b"), mesh.pod("c"));
    let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let stable = Responder::http_echo(b, any).unwrap();
    let canary = Responder::http_echo(c, any).unwrap();
    let a_config = format!(
        r#"
[outbound]
[[outbound.services]]
name = "docservice"
addresses = ["{b}:8080"]
spiffe_id = "{idb}"
[[outbound.services]]
name = "docservice-canary"
addresses = ["{c}:8080"]
spiffe_id = "{idc}"
[[outbound.routes]]
service = "docservice"
backends = [
  {{ service = "docservice", weight = 80 }},
  {{ service = "docservice-canary", weight = 20 }},
]
matches = [{{ kind = "header", name = "x-canary", value = "1", backend = "docservice-canary" }}]
"#,
        b = b.ipv4,
        c = c.ipv4,
        idb = mesh.id("b"),
        idc = mesh.id("c"),
    );
    mesh.start_sidecar(a, &sidecar_config(&a_config));
    mesh.start_sidecar(b, &sidecar_config(""));
    mesh.start_sidecar(c, &sidecar_config(""));

    // The app in A always calls B's address; the split decides who answers.
    let n = 200u32;
    for i in 0..n {
        let (status, text, _) =
            sidecar::curl(a, &[&url(b.ipv4.into(), 8080, &format!("/split-{i}"))]);
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(&mesh.id("a")),
            "the app did not see A's identity: {text}"
        );
    }
    let (to_b, to_c) = (stable.heads().len() as f64, canary.heads().len() as f64);
    assert_eq!(
        to_b + to_c,
        f64::from(n),
        "every request reached one of the two apps"
    );
    eprintln!("80/20 split in transparent mode: B {to_b}, C {to_c} of {n}");
    let (p, nf) = (0.2, f64::from(n));
    let sigma = (nf * p * (1.0 - p)).sqrt();
    assert!(
        (to_c - nf * p).abs() <= 5.0 * sigma,
        "{to_c} of {n} requests reached the canary; expected {} ± {:.0} (5 sigma)",
        nf * p,
        5.0 * sigma
    );
    // The header route: all to C.
    for _ in 0..10 {
        let (status, text, _) = sidecar::curl(
            a,
            &["-H", "x-canary: 1", &url(b.ipv4.into(), 8080, "/tester")],
        );
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(canary.heads().len() as f64, to_c + 10.0);
    assert_eq!(stable.heads().len() as f64, to_b);
    // A's metrics agree with the apps.
    let weighted_c = sidecar::metric(
        a,
        "docmesh_route_backend_requests_total{service=\"docservice\",backend=\"docservice-canary\",reason=\"weight\"}",
    );
    assert_eq!(weighted_c, to_c);
}
