//! Hostile clients through a real inbound sidecar (raw bytes over TCP on 127.0.0.1): skipping
//! TLS to skip authorization, request smuggling, invalid bytes, absolute-form and CONNECT
//! requests, spoofed identity headers, oversized chunk extensions, and TLS clients without a
//! certificate or from another trust domain. The app records exactly what reaches it; after
//! every attack the proxy still serves normal traffic.

use std::sync::Arc;

use crate::limits_support::*;
use docmesh_proxy::authz::Authorizer;
use docmesh_proxy::config::authz::AuthzConfig;
use docmesh_proxy::config::inbound::InboundMode;

const SECRET: &str = "document-server-secret-0123456789";

fn jwt_everywhere() -> Arc<Authorizer> {
    let cfg: AuthzConfig = toml::from_str(&format!(
        r#"
        [jwt]
        enabled = true
        secret = "{SECRET}"
        "#
    ))
    .unwrap();
    Arc::new(Authorizer::from_config(&cfg).unwrap())
}

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Permissive mode with `authz.jwt.ports` empty (every HTTP port): plaintext HTTP goes through
/// the JWT check like mTLS traffic; plaintext that is not recognisably HTTP is closed.
#[tokio::test]
async fn skipping_tls_in_permissive_mode_does_not_skip_the_jwt_check() {
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            mode: InboundMode::Permissive,
            authz: Some(jwt_everywhere()),
            ..InboundOptions::default()
        },
    )
    .await;
    let files = b"GET /files HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";
    expect_answer(side.addr, files, 401, &["docmesh-error: unauthenticated"]).await;
    // A leading CRLF (which many HTTP servers skip) is not taken for opaque TCP.
    let text = raw_exchange(
        side.addr,
        b"\r\nGET /files HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 0, "closed, nothing answered: {text}");
    // A method the detector does not know is not a way around either.
    let text = raw_exchange(
        side.addr,
        b"PROPFIND /files HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 0, "{text}");
    assert!(app.raw_text().is_empty(), "{}", app.raw_text());

    // A spoofed identity header is dropped even when the token is valid.
    let req = format!(
        "GET /files HTTP/1.1\r\nhost: app\r\nauthorization: Bearer {}\r\n\
         docmesh-client-id: spiffe://example.org/ns/oo/sa/admin\r\nconnection: close\r\n\r\n",
        token()
    );
    expect_answer(side.addr, req.as_bytes(), 200, &[]).await;
    let seen = app.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("docmesh-client-id").is_empty(), "{seen:?}");
}

/// The same with `[authz]` off: permissive plaintext still works for HTTP and opaque TCP.
#[tokio::test]
async fn permissive_plaintext_without_authz_is_still_forwarded() {
    let app = RecordingApp::start().await;
    let side = start_inbound(app.addr, InboundOptions::default()).await;
    still_serving(side.addr).await;
    assert_eq!(app.requests().len(), 1);
}

const BAD_REQUEST: &str = "docmesh-error: bad-request";

const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";

/// Sends `attack` followed by a normal request on one connection; returns the client's view.
async fn attack(side: &Sidecar, attack: &[u8]) -> String {
    let mut bytes = attack.to_vec();
    bytes.extend_from_slice(AFTER);
    raw_exchange(side.addr, &bytes).await
}

/// What must hold after any attack: no smuggled request reached the app, and every request the
/// app saw has one unambiguous framing.
fn assert_unambiguous(app: &RecordingApp) {
    for r in app.requests() {
        assert!(
            !r.uri.contains("smuggled"),
            "smuggled request reached the app: {r:?}"
        );
        let cl = r.header("content-length").len();
        let te = r.header("transfer-encoding").len();
        assert!(
            cl <= 1 && !(cl == 1 && te > 0),
            "ambiguous framing reached the app: {r:?}"
        );
        assert!(r.header("host").len() <= 1, "{r:?}");
        assert!(r.uri.starts_with('/'), "origin-form only: {r:?}");
    }
    // (A smuggling attempt may still reach the app as body bytes of a well-framed request.)
}

#[tokio::test]
async fn smuggling_and_malformed_requests_are_refused_or_normalised() {
    let app = RecordingApp::start().await;
    let side = start_inbound(app.addr, InboundOptions::default()).await;
    let mut chunk_ext =
        b"POST /ext HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n5;e=".to_vec();
    chunk_ext.extend(std::iter::repeat_n(b'a', 100_000));
    chunk_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    // (name, bytes, statuses the client may see first: refused, or served normalised)
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("CL.TE", b"POST /a HTTP/1.1\r\nhost: app\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n".to_vec(), &[200, 400]),
        ("TE.CL", b"POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n1c\r\nGPOST /smuggled HTTP/1.1\r\n\r\n\r\n0\r\n\r\n".to_vec(), &[200, 400]),
        // Framed for a CL-trusting hop: not valid chunked, so the body fails at the proxy.
        ("TE.CL, invalid chunks", b"POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\nGPOST /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("conflicting CL", b"POST /a HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(), &[400]),
        ("obfuscated TE", b"POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: xchunked\r\n\r\n".to_vec(), &[400, 501]),
        ("TE gzip, chunked", b"POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("obs-fold", b"GET /a HTTP/1.1\r\nhost: app\r\nx-a: b\r\n c\r\n\r\n".to_vec(), &[400]),
        ("NUL in value", b"GET /a HTTP/1.1\r\nhost: app\r\nx-a: b\x00c\r\n\r\n".to_vec(), &[400]),
        ("CR in value", b"GET /a HTTP/1.1\r\nhost: app\r\nx-a: b\rc\r\n\r\n".to_vec(), &[400]),
        ("space in name", b"GET /a HTTP/1.1\r\nhost: app\r\nx a: b\r\n\r\n".to_vec(), &[400]),
        ("two Hosts", b"GET /a HTTP/1.1\r\nhost: app\r\nhost: evil\r\n\r\n".to_vec(), &[400]),
        ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n".to_vec(), &[400]),
        ("chunk extension flood", chunk_ext, &[400]),
    ];
    for (name, bytes, allowed) in cases {
        let before = app.requests().len();
        let text = attack(&side, &bytes).await;
        let status = status_of(&text);
        assert!(allowed.contains(&status), "{name}: got {status}: {text}");
        if status == 400 {
            let new = &app.requests()[before..];
            assert!(
                new.iter().all(|r| r.uri == "/after"),
                "{name}: refused, yet the app saw {new:?}"
            );
        }
        assert_unambiguous(&app);
        still_serving(side.addr).await;
    }
    // docmesh's own refusals say why.
    let text = attack(
        &side,
        b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(text.contains(BAD_REQUEST), "{text}");
    assert_te_cl_is_a_bad_request(&side, &app).await;

    // Absolute-form is served in origin-form with the target's authority as Host.
    let before = app.requests().len();
    let absolute =
        b"GET http://docs.example/x?y=1 HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n";
    expect_answer(side.addr, absolute, 200, &[]).await;
    let r = &app.requests()[before];
    assert_eq!(r.uri, "/x?y=1");
    assert_eq!(r.header("host"), ["docs.example"]);
    assert_unambiguous(&app);
}

/// TE.CL bodies that are not valid chunked framing (what a CL-trusting hop would forward):
/// the client's body fails at the proxy, which answers `400 bad-request` naming the framing
/// error (not a `502` blaming the app); a chunked body cut short by the client's close gets
/// the same. The app sees at most a request whose chunked body was aborted.
async fn assert_te_cl_is_a_bad_request(side: &Sidecar, app: &RecordingApp) {
    use tokio::io::AsyncWriteExt;
    let head =
        b"POST /a HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
    for (body, why) in [
        (
            &b"GPOST /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n"[..],
            "chunk size",
        ),
        (
            &b"5c\r\nGPOST /smuggled HTTP/1.1\r\n\r\n"[..],
            "end of file",
        ),
    ] {
        let before = rejections(&side.metrics, "bad-request");
        let mut s = tokio::net::TcpStream::connect(side.addr).await.unwrap();
        s.write_all(head).await.unwrap();
        s.write_all(body).await.unwrap();
        s.shutdown().await.unwrap();
        let text = read_to_close(&mut s).await;
        let parts = [BAD_REQUEST, "request body could not be read", why];
        assert_answer(&text, 400, &parts);
        assert_eq!(rejections(&side.metrics, "bad-request"), before + 1.0);
        assert_unambiguous(app);
        still_serving(side.addr).await;
    }
}

/// The same hostile requests sent by the local app to an outbound listener: refused or
/// normalised the same way, never a 502.
#[tokio::test]
async fn smuggling_through_an_outbound_listener_is_refused_or_normalised() {
    let app = RecordingApp::start().await;
    let out = start_outbound(
        app.addr,
        docmesh_proxy::config::outbound::Protocol::Http1,
        Default::default(),
    )
    .await;
    let text = attack(&out, b"POST /a HTTP/1.1\r\nhost: app\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_answer(&text, 200, &[]);
    let text = attack(&out, b"GET /a HTTP/1.1\r\nhost: app\r\nhost: evil\r\n\r\n").await;
    assert_answer(&text, 400, &[BAD_REQUEST]);
    assert_te_cl_is_a_bad_request(&out, &app).await;
}

const SERVER: &str = "spiffe://example.org/ns/oo/sa/documentserver";

/// Accepts any server certificate (a hostile client does not care who the server is).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client of `version` that accepts any server certificate (client auth still to choose).
fn trusting_any_server(
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
}

/// Connects with `config`, sends one HTTP/1.1 request and reads until the close; returns
/// what came back (empty when the server refused the handshake).
async fn tls_request(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("docmesh").unwrap();
    let Ok(Ok(mut tls)) = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    else {
        return String::new();
    };
    let _ = tls
        .write_all(b"GET /secret HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = bounded(tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plaintext_no_client_cert_tls12_and_foreign_trust_domain_are_refused_and_counted() {
    let ca = dev_ca("example.org");
    let other = dev_ca("other.org");
    let app = RecordingApp::start().await;
    let side = start_inbound(
        app.addr,
        InboundOptions {
            mode: InboundMode::Strict,
            mesh: docmesh_proxy::inbound::MeshServer::Mtls(identity_for(&ca, SERVER, &[&ca])),
            ..InboundOptions::default()
        },
    )
    .await;

    // Plaintext HTTP on the mTLS port.
    let text = raw_exchange(side.addr, b"GET /secret HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert!(text.is_empty(), "{text}");
    assert_eq!(
        metric(&side.metrics, "docmesh_inbound_plaintext_refused_total"),
        1.0
    );

    // TLS without a client certificate.
    let mut no_cert = trusting_any_server(&rustls::version::TLS13).with_no_client_auth();
    no_cert.alpn_protocols = vec![b"http/1.1".to_vec()];
    let text = tls_request(side.addr, Arc::new(no_cert)).await;
    assert!(!text.contains("200"), "{text}");

    // A valid SVID from another trust domain (that trusts our root, so only we refuse).
    let foreign = identity_for(
        &other,
        "spiffe://other.org/ns/x/sa/intruder",
        &[&ca, &other],
    );
    let config = foreign.client_config(&SERVER.parse().unwrap(), &[b"http/1.1"]);
    let text = tls_request(side.addr, config).await;
    assert!(!text.contains("200"), "{text}");

    // A valid SVID of our own trust domain over TLS 1.2: the mesh hop is TLS 1.3 only.
    let valid = ca
        .issue_svid(
            &"spiffe://example.org/ns/oo/sa/integrator".parse().unwrap(),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(valid.key_der.clone().into());
    let mut tls12 = trusting_any_server(&rustls::version::TLS12)
        .with_client_auth_cert(valid.chain.clone(), key)
        .unwrap();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let text = tls_request(side.addr, Arc::new(tls12)).await;
    assert!(!text.contains("200"), "{text}");

    assert_eq!(
        metric(
            &side.metrics,
            "docmesh_inbound_tls_handshake_failures_total"
        ),
        3.0,
        "{}",
        side.metrics.encode().unwrap()
    );
    assert!(
        app.raw_text().is_empty(),
        "nothing forwarded: {}",
        app.raw_text()
    );

    // A legitimate peer still gets through.
    let good = identity_for(&ca, "spiffe://example.org/ns/oo/sa/integrator", &[&ca]);
    let text = tls_request(
        side.addr,
        good.client_config(&SERVER.parse().unwrap(), &[b"http/1.1"]),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
}
