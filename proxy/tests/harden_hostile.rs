//! Hostile clients through a real inbound sidecar (raw bytes over TCP on 127.0.0.1): skipping
//! TLS to skip authorization, request smuggling, invalid bytes, absolute-form and CONNECT
//! requests, spoofed identity headers, oversized chunk extensions, and TLS clients without a
//! certificate or from another trust domain. The app records exactly what reaches it; after
//! every attack the proxy still serves normal traffic.

mod harden_support;

use std::sync::Arc;

use docmesh_proxy::authz::Authorizer;
use docmesh_proxy::config::authz::AuthzConfig;
use docmesh_proxy::config::inbound::InboundMode;
use harden_support::*;

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
    let text = raw_exchange(
        side.addr,
        b"GET /files HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 401, "{text}");
    assert!(text.contains("docmesh-error: unauthenticated"), "{text}");
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
    let text = raw_exchange(side.addr, req.as_bytes()).await;
    assert_eq!(status_of(&text), 200, "{text}");
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
