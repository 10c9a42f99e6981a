//! Attacks through the transparent (iptables-redirected) path, in network namespaces, against
//! real sidecar processes (UID 1337, `docmesh-init` rules). Pod A is a meshed client, pod B a
//! meshed server (an HTTP app on 8080 that records every request head it gets), pod C an
//! attacker without a sidecar that reaches B's IP directly, so B's PREROUTING rules hand its
//! connections to B's inbound listener:
//!
//! - slowloris over mTLS (C holds a valid SVID: an insider) is cut off after B's
//!   `limits.header_read_timeout` while A's requests keep being served;
//! - plaintext to the strict mTLS port is closed, counted, and never reaches the app;
//! - a connection flood over B's `limits.max_connections_per_listener` is refused at once and
//!   counted; once it ends B serves again;
//! - an oversized request head from A's app (between 1× and 2× A's `limits.max_header_bytes`)
//!   gets `431` with `docmesh-error: request-header-too-large` from A's outbound transparent
//!   listener, and nothing reaches B.
//!
//! Needs root; fails saying so otherwise.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docmesh_proxy::identity::Identity;
use docmesh_tests::netns::probe::Responder;
use docmesh_tests::netns::sidecar::{curl, metric, url};
use docmesh_tests::netns::{Mesh, Pod};

const TD: &str = "harden.docmesh.test";
/// B's `limits.header_read_timeout`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// B's `limits.max_connections_per_listener`.
const PER_LISTENER: usize = 8;
/// Connections the flood opens.
const FLOOD: usize = 20;
/// A's `limits.max_header_bytes`.
const MAX_HEADER_BYTES: usize = 4096;
/// Every wait is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, at most [`DEADLINE`]; panics with `what` after that.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} (waited {DEADLINE:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a slowloris client saw: when the server closed (after the handshake) and the bytes it
/// answered, if any.
struct SlowlorisEnd {
    after: Duration,
    sent: usize,
    answer: String,
}

/// From the current thread (inside the attacker's pod): mTLS to `target` with `tls`, then a
/// request head one byte every 100 ms, never finished, until the server closes (bounded).
fn slowloris(target: SocketAddr, tls: Arc<rustls::ClientConfig>) -> SlowlorisEnd {
    let tcp = TcpStream::connect_timeout(&target, DEADLINE).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
    let conn = rustls::ClientConnection::new(tls, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .expect("mTLS handshake with B");
    }
    let start = Instant::now();
    let head = b"GET /slowloris HTTP/1.1\r\nhost: b\r\nx-slow: ";
    let mut answer = Vec::new();
    let mut sent = 0;
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the slowloris connection is still open after {DEADLINE:?} ({sent} bytes sent)"
        );
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).and_then(|()| s.flush()).is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    SlowlorisEnd {
        after: start.elapsed(),
        sent,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// Sends `bytes` from inside `pod` to `target` and reads until the server closes (bounded).
fn plaintext_exchange(pod: &Pod, target: SocketAddr, bytes: &'static [u8]) -> Vec<u8> {
    pod.enter(move || {
        let mut s = TcpStream::connect_timeout(&target, DEADLINE).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
        out
    })
    .unwrap()
}

/// True once the server closed `s` (EOF or reset); false while it is open and silent.
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    s.set_nonblocking(true).unwrap();
    match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

#[test]
fn netns_attacks_through_the_transparent_path_are_cut_off_and_normal_traffic_is_served() {
    let mesh = Mesh::new(
        TD,
        &["a", "b", "c"],
        env!("CARGO_BIN_EXE_docmesh-netns-proxy"),
    );
    let (a, b, c) = (mesh.pod("a"), mesh.pod("b"), mesh.pod("c"));
    let (ca, id) = (&mesh.ca, |pod: &str| mesh.id(pod));

    let app = Responder::http_echo(b, "0.0.0.0:8080".parse().unwrap()).unwrap();
    // A: a meshed client; its outbound knows B's service. Pooled mesh connections idle out
    // before B's short header read timeout closes them.
    let a_config = format!(
        "[inbound]\nmode = \"strict\"\n\n[outbound]\npool_idle_timeout = \"300ms\"\n\n\
         [[outbound.services]]\nname = \"b\"\naddresses = [\"{}:8080\"]\nspiffe_id = \"{}\"\n\n\
         [limits]\nmax_header_bytes = {MAX_HEADER_BYTES}\n",
        b.ipv4,
        id("b")
    );
    mesh.start_sidecar(a, &a_config);
    // B: strict mTLS with a short header read timeout and a small per-listener limit.
    let b_config = format!(
        "[inbound]\nmode = \"strict\"\nhandshake_timeout = \"5s\"\n\n[limits]\n\
         header_read_timeout = \"{}ms\"\nmax_connections_per_listener = {PER_LISTENER}\n",
        HEADER_READ_TIMEOUT.as_millis()
    );
    mesh.start_sidecar(b, &b_config);
    let b_port = SocketAddr::new(IpAddr::V4(b.ipv4), 8080);
    let normal = |path: &str| {
        let (status, text, _) = curl(a, &[&url(b_port.ip(), 8080, path)]);
        assert_eq!(status, 200, "A → B {path}: {text}");
        assert!(text.contains(&format!("GET {path} HTTP/1.1")), "{text}");
    };
    normal("/before");

    // 1. Slowloris over mTLS from C, while A is served.
    let svid = ca
        .issue_svid(&id("c").parse().unwrap(), Duration::from_secs(3600))
        .unwrap();
    let c_identity = Identity::from_pem(
        svid.cert_chain_pem.as_bytes(),
        svid.key_pem.as_bytes(),
        ca.root_cert_pem().as_bytes(),
    )
    .unwrap();
    let tls = c_identity.client_config(&id("b").parse().unwrap(), &[b"http/1.1"]);
    let end = std::thread::scope(|scope| {
        let attack = scope.spawn(|| c.enter(move || slowloris(b_port, tls)).unwrap());
        for i in 0..3 {
            normal(&format!("/during-slowloris-{i}"));
        }
        attack.join().unwrap()
    });
    eprintln!(
        "slowloris cut off {:?} after the handshake ({} bytes sent), answer {:?}",
        end.after, end.sent, end.answer
    );
    assert!(
        end.after >= HEADER_READ_TIMEOUT.mul_f32(0.8) && end.after < HEADER_READ_TIMEOUT * 5,
        "cut off after {:?}, header_read_timeout is {HEADER_READ_TIMEOUT:?}",
        end.after
    );
    assert!(
        end.answer.is_empty() || end.answer.starts_with("HTTP/1.1 408"),
        "the slowloris client got: {:?}",
        end.answer
    );

    // 2. Plaintext from C to the strict mTLS port: closed without an answer and counted.
    let refused = "docmesh_inbound_plaintext_refused_total";
    let before = metric(b, refused);
    let reply = plaintext_exchange(
        c,
        b_port,
        b"GET /plaintext-marker HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert!(
        reply.is_empty(),
        "B answered plaintext: {:?}",
        String::from_utf8_lossy(&reply)
    );
    wait_for("the plaintext connection must be counted", || {
        (metric(b, refused) >= before + 1.0).then_some(())
    });
    normal("/after-plaintext");

    // 3. A flood over the per-listener limit: each connection sends the first byte of a TLS
    //    record and stalls, holding its slot for up to inbound.handshake_timeout.
    let listener_refusals = "docmesh_connections_refused_total{reason=\"listener\"}";
    let handshake_failures = "docmesh_inbound_tls_handshake_failures_total";
    let (refused_before, failures_before) =
        (metric(b, listener_refusals), metric(b, handshake_failures));
    let flood: Vec<TcpStream> = c
        .enter(move || {
            (0..FLOOD)
                .map(|_| {
                    let mut s = TcpStream::connect_timeout(&b_port, DEADLINE).unwrap();
                    s.write_all(&[0x16]).unwrap();
                    s
                })
                .collect()
        })
        .unwrap();
    let over = FLOOD - PER_LISTENER;
    let closed = wait_for("connections over the limit must be closed at once", || {
        let n = flood.iter().filter(|s| closed_by_peer(s)).count();
        (n >= over).then_some(n)
    });
    assert!(
        closed < FLOOD,
        "B closed all {FLOOD} connections: none was admitted"
    );
    let held = FLOOD - closed;
    let counted = metric(b, listener_refusals) - refused_before;
    eprintln!("flood: {held} held, {closed} refused ({counted} counted)");
    assert!(
        counted >= over as f64,
        "{counted} refusals counted for {closed} closed connections"
    );
    drop(flood);
    // The held connections end as failed handshakes, which frees their slots.
    wait_for("the flood's slots must be freed", || {
        (metric(b, handshake_failures) - failures_before >= held as f64).then_some(())
    });
    normal("/after-flood");

    // 4. An oversized head from A's app through A's outbound transparent listener.
    let big = format!("x-big: {}", "a".repeat(MAX_HEADER_BYTES + 1000));
    let (status, text, _) = curl(a, &["-H", &big, &url(b_port.ip(), 8080, "/oversized")]);
    assert_eq!(status, 431, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("docmesh-error: request-header-too-large"),
        "{text}"
    );
    normal("/after-oversized");

    // Nothing of the attacks reached B's app; every normal request did.
    let heads = app.heads();
    for marker in ["/slowloris", "/plaintext-marker", "/oversized"] {
        assert!(
            !heads.iter().any(|h| h.contains(marker)),
            "{marker} reached B's app: {heads:?}"
        );
    }
    for path in [
        "/before",
        "/during-slowloris-2",
        "/after-flood",
        "/after-oversized",
    ] {
        assert!(
            heads.iter().any(|h| h.contains(&format!("GET {path} "))),
            "{path} missing at B's app: {heads:?}"
        );
    }
}
