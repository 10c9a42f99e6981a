//! The proxy and `diagnose` name the same cause (issue 21): every failure below is produced for
//! real (a refused port, a plaintext peer, an untrusted chain, the wrong SPIFFE ID, a peer that
//! closes without answering), then a request through an
//! outbound sidecar reads the cause from `docmesh-error`, and `diagnose` probes the same
//! address with the same identity. Both must be the expected cause. (Dropped packets are in
//! the network-namespace tier: `diagnose_net` proves `diagnose`'s side here.)

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::*;
use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};
use docmesh_proxy::diagnose::{diagnose, Target, Timeouts, TlsClient};
use docmesh_proxy::lifecycle::Lifecycle;
use docmesh_proxy::metrics::Metrics;
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

/// The cause the outbound sidecar puts into `docmesh-error` for a GET to `peer`.
async fn proxy_cause(peer: SocketAddr, hop: &Hop) -> String {
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
    let outbound = start_outbound(
        vec![peer.to_string()],
        &opts,
        &Lifecycle::new(),
        &Metrics::new(),
    )
    .await;
    let mut c = h1_client(outbound).await;
    let resp = bounded(c.send_request(get("/healthcheck", "documentserver")))
        .await
        .unwrap();
    resp.headers()
        .get("docmesh-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| format!("(none: status {})", resp.status()))
}

/// The cause `diagnose` names for `peer`.
async fn diagnose_cause(peer: SocketAddr, hop: &Hop) -> String {
    let (scheme, client) = match hop {
        Hop::Mtls { ours, roots } => ("https", Some(diagnose_client(ours, roots))),
        Hop::Plain => ("http", None),
    };
    let mut target = Target::from_url(&format!("{scheme}://{peer}/healthcheck")).unwrap();
    target.expected_id = Some(SERVER_ID.to_owned());
    let report = bounded(diagnose(&target, client.as_ref(), &Timeouts::default())).await;
    report
        .finding
        .map_or_else(|| "(healthy)".into(), |f| f.cause)
}

/// A port where nothing listens.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
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
        // Not yet in the table: a peer that rejects our SVID. With TLS 1.3 its alert comes after
        // our side of the handshake; `diagnose` sometimes reads a reset instead of the alert
        // and says `upstream-reset` (about one run in three), while the proxy says
        // `tls-rejected-by-peer`. Open disagreement of issue 21.
        ("upstream-reset", start_closing_server().await, Hop::Plain),
    ];
    let mut disagreements = Vec::new();
    for (want, peer, hop) in &cases {
        let by_proxy = proxy_cause(*peer, hop).await;
        let by_diagnose = diagnose_cause(*peer, hop).await;
        if (by_proxy.as_str(), by_diagnose.as_str()) != (*want, *want) {
            disagreements.push(format!(
                "{want} at {peer}: proxy says {by_proxy}, diagnose says {by_diagnose}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
