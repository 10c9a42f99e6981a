//! The proxy and `diagnose` name the same cause (issue 21): every failure below is produced for
//! real (a refused port, a plaintext peer, an untrusted chain, the wrong SPIFFE ID, a peer that
//! closes without answering), then a request through an
//! outbound sidecar reads the cause from `docmesh-error`, and `diagnose` probes the same
//! address with the same identity. Both must be the expected cause. Dropped packets come from
//! a listener whose accept queue is full (the kernel drops further SYNs, as a firewall that
//! drops would); slow headers from an app that reads the request and never answers. An HTTP/2
//! client reaching an HTTP/1.1-only app (`upstream-not-http2`) is the proxy's alone: `diagnose`
//! speaks HTTP/1.1 (see `classify`'s test against a real HTTP/1.1 server).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::*;
use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};
use docmesh_proxy::config::resilience::ResilienceConfig;
use docmesh_proxy::diagnose::{diagnose, Target, Timeouts, TlsClient};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How the failing peer is reached.
enum Hop {
    /// Mesh hop with mTLS: our SVID `ours`, trusting the PEM roots `roots`.
    Mtls {
        ours: Box<IssuedSvid>,
        roots: String,
    },
    /// Plaintext (an app reached without TLS).
    Plain,
}

/// A TLS client for `diagnose` with the same SVID and roots as the outbound, accepting any
/// SVID in the bundle so that the identity step can name what the peer presented.
fn diagnose_client(ours: &IssuedSvid, pem: &str) -> TlsClient {
    let bundles = TrustBundleSet::from_pem_auto(pem.as_bytes(), None).unwrap();
    let bundles = Arc::new(arc_swap::ArcSwap::from_pointee(bundles));
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundles,
            ExpectedPeer::AnyInBundle,
        )))
        .with_client_auth_cert(ours.chain.clone(), ours.private_key())
        .unwrap();
    TlsClient {
        config: Arc::new(config),
        our_id: Some(ours.id.to_string()),
    }
}

/// The cause the outbound sidecar puts into `docmesh-error` for a GET to `peer` (with the
/// error body when it is not `expected`).
async fn proxy_cause(peer: SocketAddr, hop: &Hop, expected: &str) -> String {
    proxy_cause_with(peer, hop, None, expected).await
}

/// Like [`proxy_cause`] with a `[resilience]` section on the outbound.
async fn proxy_cause_with(
    peer: SocketAddr,
    hop: &Hop,
    resilience: Option<&str>,
    expected: &str,
) -> String {
    let resilience: Option<ResilienceConfig> = resilience.map(|t| toml::from_str(t).unwrap());
    let opts = match hop {
        Hop::Mtls { ours, roots } => {
            let me = Arc::new(
                docmesh_proxy::identity::Identity::from_pem(
                    ours.cert_chain_pem.as_bytes(),
                    ours.key_pem.as_bytes(),
                    roots.as_bytes(),
                )
                .unwrap(),
            );
            mtls_options(me.clone(), me)
        }
        Hop::Plain => PairOptions::default(),
    };
    let outbound = start_outbound_with(
        vec![peer.to_string()],
        &opts,
        &Lifecycle::new(),
        &Metrics::new(),
        resilience.as_ref(),
    )
    .await;
    let mut c = h1_client(outbound).await;
    let resp = bounded(c.send_request(get("/healthcheck", "documentserver")))
        .await
        .unwrap();
    let status = resp.status();
    let cause = resp
        .headers()
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    match cause {
        // The detail helps when the table fails; the cause alone is compared.
        Some(c) if c != expected => format!("{c} ({body})"),
        Some(c) => c,
        None => format!("(none: status {status})"),
    }
}

/// The cause `diagnose` names for `peer`.
async fn diagnose_cause(peer: SocketAddr, hop: &Hop) -> String {
    diagnose_cause_with(peer, hop, &Timeouts::default()).await
}

/// Like [`diagnose_cause`] with the given timeouts.
async fn diagnose_cause_with(peer: SocketAddr, hop: &Hop, timeouts: &Timeouts) -> String {
    let (scheme, client) = match hop {
        Hop::Mtls { ours, roots } => ("https", Some(diagnose_client(ours, roots))),
        Hop::Plain => ("http", None),
    };
    let mut target = Target::from_url(&format!("{scheme}://{peer}/healthcheck")).unwrap();
    target.expected_id = Some(SERVER_ID.to_owned());
    let report = bounded(diagnose(&target, client.as_ref(), timeouts)).await;
    report
        .finding
        .map_or_else(|| "(healthy)".into(), |f| f.cause)
}

/// Reads a request and closes without answering.
async fn start_closing_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_diagnose_name_the_same_cause() {
    let ca = dev_ca("example.org");
    let rogue = dev_ca("example.org");
    let mesh = |roots: &[&CertificateAuthority]| Hop::Mtls {
        ours: Box::new(svid(&ca, CLIENT_ID)),
        roots: roots.iter().map(|c| c.root_cert_pem()).collect(),
    };
    let impostor = "spiffe://example.org/ns/oo/sa/impostor";
    let plain_app = start_http_app().await;
    let cases: Vec<(&str, SocketAddr, Hop)> = vec![
        ("connect-refused", closed_port(), mesh(&[&ca])),
        ("connect-refused", closed_port(), Hop::Plain),
        ("tls-plaintext-peer", plain_app, mesh(&[&ca])),
        (
            "tls-untrusted-peer",
            loopback(start_true_peer(&rogue, &svid(&rogue, SERVER_ID)).await),
            mesh(&[&ca]),
        ),
        (
            "identity-mismatch",
            loopback(start_true_peer(&ca, &svid(&ca, impostor)).await),
            mesh(&[&ca]),
        ),
        // The peer trusts another CA for its clients: it rejects our SVID after our side of
        // the TLS 1.3 handshake ended (`diagnose` waits for that verdict before the request).
        (
            "tls-rejected-by-peer",
            loopback(start_true_peer(&rogue, &svid(&ca, SERVER_ID)).await),
            mesh(&[&ca]),
        ),
        ("upstream-reset", start_closing_server().await, Hop::Plain),
    ];
    let mut disagreements = Vec::new();
    for (want, peer, hop) in &cases {
        let by_proxy = proxy_cause(*peer, hop, want).await;
        let by_diagnose = diagnose_cause(*peer, hop).await;
        if (by_proxy.as_str(), by_diagnose.as_str()) != (*want, *want) {
            disagreements.push(format!(
                "{want} at {peer}: proxy says {by_proxy}, diagnose says {by_diagnose}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// A listener that never accepts, its accept queue filled: the kernel drops every further SYN,
/// as a firewall that drops packets would. The returned sockets keep the queue full.
async fn start_dropping_listener() -> (SocketAddr, socket2::Socket, Vec<tokio::net::TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&loopback(0).into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    // A backlog of 0 holds one connection; a few more make sure the queue is full whatever
    // the kernel rounds the backlog to. Connects that are themselves dropped are abandoned.
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fill.push(c);
        }
    }
    (addr, s, fill)
}

/// Reads requests and never answers.
async fn start_silent_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_named_alike() {
    let short = "[defaults.timeouts]\nconnect = \"300ms\"\nresponse_headers = \"500ms\"\n\
                 [defaults.retry]\nmax_attempts = 1\n";
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        response: Duration::from_millis(500),
        ..Timeouts::default()
    };
    let (dropping, _listener, _fill) = start_dropping_listener().await;
    let silent = start_silent_app().await;
    let mut disagreements = Vec::new();
    for (want, peer) in [("connect-timeout", dropping), ("response-timeout", silent)] {
        let by_proxy = proxy_cause_with(peer, &Hop::Plain, Some(short), want).await;
        let by_diagnose = diagnose_cause_with(peer, &Hop::Plain, &timeouts).await;
        if (by_proxy.as_str(), by_diagnose.as_str()) != (want, want) {
            disagreements.push(format!(
                "{want} at {peer}: proxy says {by_proxy}, diagnose says {by_diagnose}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// An app that speaks HTTP/1.1 only (hyper's HTTP/1 server): it answers the HTTP/2 preface
/// with an HTTP/1.1 error, as nginx or a Node.js server do.
async fn start_http1_only_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The proxy's alone (`diagnose` speaks HTTP/1.1): an HTTP/2 caller whose request reaches an
/// HTTP/1.1-only app through the pair is told that the app does not speak HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_caller_of_an_http1_only_app_is_told_so() {
    let ca = dev_ca("example.org");
    let pair = Pair::start(start_http1_only_app().await, healthy_mtls(&ca)).await;
    let mut c = h2_client(pair.outbound).await;
    let resp = bounded(c.send_request(get("/", "documentserver")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let cause = resp.headers().get("docmesh-error").cloned();
    let body = text(resp).await;
    assert_eq!(
        cause.as_ref().and_then(|v| v.to_str().ok()),
        Some("upstream-not-http2"),
        "{body}"
    );
    assert!(body.contains("does not speak HTTP/2"), "{body}");
}
