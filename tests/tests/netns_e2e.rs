//! End to end through real sidecars: pods A and B in network namespaces, each with
//! `docmesh-init` rules and `docmesh-proxy` running as UID 1337, and unmodified apps. A plain
//! HTTP client in A calls B's IP and port; the call crosses the wire as mTLS (TLS records, no
//! plaintext, on B's wire) and reaches B's app through B's sidecar, which hands it A's SPIFFE
//! ID; B's authorization refuses A where it must (403). Rerunning docmesh-init changes nothing,
//! `--cleanup` restores direct traffic. Also: opaque server-speaks-first TCP, connect-refused
//! (502) and a DROP rule (504 connect-timeout), over IPv4 and IPv6. Needs root; fails saying
//! so otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use docmesh_tests::netns::capture;
use docmesh_tests::netns::probe::{ask, Responder};
use docmesh_tests::netns::sidecar::{self, init, url, Sidecar, APP};
use docmesh_tests::netns::{Mesh, Pod};

const TD: &str = "e2e.docmesh.test";
const CONNECT_TIMEOUT_MS: u64 = 500;

/// Starts a pod's sidecar: strict inbound, the default transparent listeners (with their IPv6
/// twins), and what `extra` adds (services, authorization).
fn start_sidecar(mesh: &Mesh, pod: &Pod, extra: &str) -> Sidecar {
    let config = format!(
        "[inbound]\nmode = \"strict\"\n\n[outbound]\nconnect_timeout = \"{CONNECT_TIMEOUT_MS}ms\"\n{extra}"
    );
    mesh.start_sidecar(pod, &config)
}

/// `curl` inside the pod as the app user, with a forged identity header: (status,
/// headers+body, elapsed).
fn curl(pod: &Pod, url: &str) -> (u16, String, Duration) {
    let forged = format!("docmesh-client-id: spiffe://{TD}/pod/forged");
    sidecar::curl(pod, &["-H", &forged, url])
}

#[test]
fn netns_e2e_http_and_tcp_through_both_sidecars() {
    let mesh = Mesh::new(TD, &["a", "b"], env!("CARGO_BIN_EXE_docmesh-netns-proxy"));
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let id = |pod: &str| mesh.id(pod);

    // One service per (family, port): the resilience layer balances a service's requests over
    // all of its endpoints, and the IPv6 checks must really travel over IPv6.
    let mut b_hosts = vec![("v4", b.ipv4.to_string())];
    if let Some(v6) = b.ipv6 {
        b_hosts.push(("v6", format!("[{v6}]")));
    }
    let mut a_services = String::new();
    for (fam, host) in &b_hosts {
        for (name, port) in [("http", 8080), ("tcp", 7000), ("private", 8081)] {
            a_services.push_str(&format!(
                "[[outbound.services]]\nname = \"b-{name}-{fam}\"\naddresses = [\"{host}:{port}\"]\nspiffe_id = \"{}\"\n\n",
                id("b")
            ));
        }
    }
    // B's apps, unmodified: HTTP echo on 8080, a server-speaks-first service on 7000.
    let mut families = vec![IpAddr::V4(b.ipv4)];
    families.extend(b.ipv6.map(IpAddr::V6));
    let mut apps = Vec::new();
    for ip in &families {
        let any: IpAddr = if ip.is_ipv6() {
            "::".parse().unwrap()
        } else {
            "0.0.0.0".parse().unwrap()
        };
        apps.push(Responder::http_echo(b, SocketAddr::new(any, 8080)).unwrap());
        apps.push(Responder::peer(b, SocketAddr::new(any, 7000), "B-TCP").unwrap());
    }

    let a_sidecar = start_sidecar(&mesh, a, &a_services);
    // B's authorization: port 8081 only for an identity nobody has (8080 and 7000 stay open to
    // every authenticated peer).
    let b_authz =
        format!("[[authz.spiffe]]\nport = 8081\nallow = [\"spiffe://{TD}/pod/nobody\"]\n");
    start_sidecar(&mesh, b, &b_authz);

    for &ip in &families {
        let fam = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
        // HTTP: reaches B's app through both sidecars, as mTLS on the wire, with A's identity.
        let marker = format!("/e2e-plaintext-marker-{}", fam.to_lowercase());
        let proto = if ip.is_ipv6() { "ip6" } else { "ip" };
        let cap = mesh
            .topo
            .capture(b, &format!("{proto} and tcp port 8080"))
            .unwrap();
        let (status, text, _) = curl(a, &url(ip, 8080, &marker));
        let wire = cap.finish().unwrap();
        assert_eq!(status, 200, "{fam}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("get {marker} http/1.1")),
            "{fam}: {text}"
        );
        // B's app was called by B's sidecar over loopback, not by A directly, and learned A's
        // verified SPIFFE ID (the forged copy the client sent was replaced).
        assert!(lower.contains("peer: 127.0.0.1:"), "{fam}: {text}");
        assert!(
            lower.contains(&format!("docmesh-client-id: {}\r\n", id("a"))),
            "{fam}: B's app did not learn A's SPIFFE ID:\n{text}"
        );
        assert!(
            !lower.contains("pod/forged"),
            "{fam}: forged identity reached the app:\n{text}"
        );
        assert!(
            capture::has_tls_handshake(&wire),
            "{fam}: no TLS handshake on B's wire ({} bytes captured)",
            wire.len()
        );
        assert!(
            !capture::contains(&wire, marker.as_bytes()),
            "{fam}: the request path crossed the wire in plaintext"
        );

        // Opaque TCP, server speaks first: B's app answers, and sees B's sidecar (loopback)
        // as its peer, not A.
        let cap = mesh
            .topo
            .capture(b, &format!("{proto} and tcp port 7000"))
            .unwrap();
        let got = ask(a, Some(APP), SocketAddr::new(ip, 7000))
            .unwrap_or_else(|e| panic!("{fam}: opaque TCP: {e}"));
        let wire = cap.finish().unwrap();
        assert!(got.starts_with("B-TCP 127.0.0.1:"), "{fam}: {got}");
        assert!(
            !capture::contains(&wire, b"B-TCP"),
            "{fam}: opaque TCP in plaintext"
        );
        assert!(
            capture::has_tls_handshake(&wire),
            "{fam}: no TLS on the opaque hop"
        );
    }

    // Rerunning docmesh-init under running sidecars changes no rule and breaks nothing;
    // cleanup in both pods restores direct traffic (B's app sees A itself, no identity header);
    // installing again puts the mesh back.
    let ip = families[0];
    let rules = a.rules("iptables-save", Some("nat")).unwrap();
    init(a, &[]);
    assert_eq!(a.rules("iptables-save", Some("nat")).unwrap(), rules);
    let (status, text, _) = curl(a, &url(ip, 8080, "/after-rerun"));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&id("a")), "{text}");
    for pod in [a, b] {
        init(pod, &["--cleanup"]);
    }
    let (status, text, _) = curl(a, &url(ip, 8080, "/direct"));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!("peer: {}:", a.ipv4)),
        "not direct:\n{text}"
    );
    assert!(
        !text.contains("docmesh-client-id: spiffe://e2e.docmesh.test/pod/a"),
        "{text}"
    );
    for pod in [a, b] {
        init(pod, &[]);
    }
    let (status, text, _) = curl(a, &url(ip, 8080, "/meshed-again"));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("peer: 127.0.0.1:") && text.contains(&id("a")),
        "{text}"
    );

    // Authorization with real identities: B's sidecar refuses A on 8081 with 403 forbidden.
    for &ip in &families {
        let (status, text, _) = curl(a, &url(ip, 8081, "/private"));
        assert_eq!(status, 403, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("docmesh-error: forbidden"),
            "{text}"
        );
    }

    // B's app stopped: A's client gets 502 connect-refused.
    drop(apps);
    for &ip in &families {
        let (status, text, _) = curl(a, &url(ip, 8080, "/refused"));
        assert_eq!(status, 502, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("docmesh-error: connect-refused"),
            "{text}"
        );
    }

    // B cut off by a DROP rule. A fresh A sidecar first, so no pooled connection to B exists
    // and the request needs a new TCP connection.
    a.kill_children();
    a_sidecar.spawn(a);
    // B cut off by a DROP rule: 504 connect-timeout, within the configured connect timeout
    // (plus retries' share; bounded generously, the point is that it does not hang).
    b.exec(&[
        "iptables",
        "-I",
        "INPUT",
        "-s",
        &a.ipv4.to_string(),
        "-j",
        "DROP",
    ])
    .unwrap();
    if let Some(v6) = a.ipv6 {
        b.exec(&[
            "ip6tables",
            "-I",
            "INPUT",
            "-s",
            &v6.to_string(),
            "-j",
            "DROP",
        ])
        .unwrap();
    }
    for &ip in &families {
        let (status, text, elapsed) = curl(a, &url(ip, 8080, "/dropped"));
        eprintln!("{ip}: {status} after {elapsed:?}");
        assert_eq!(status, 504, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("docmesh-error: connect-timeout"),
            "{text}"
        );
        assert!(
            elapsed >= Duration::from_millis(CONNECT_TIMEOUT_MS)
                && elapsed < Duration::from_secs(8),
            "504 after {elapsed:?} with a {CONNECT_TIMEOUT_MS} ms connect timeout"
        );
    }
}
