//! Interoperability: tokens made by PyJWT (an independent implementation) in both OnlyOffice
//! shapes verify, and the RFC 7515 appendix A.1 HS256 vector verifies.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::authz_support::*;
use docmesh_proxy::authz::{CLIENT_ID_HEADER, TENANT_HEADER};
use docmesh_proxy::errors::Cause;

const SECRET: &str = "onlyoffice-shared-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn pyjwt_tokens_verify_in_both_onlyoffice_shapes_and_every_algorithm() {
    let t = now();
    let py = pyjwt(t, SECRET);
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", format!("{SECRET}\n").as_bytes());
    let jwks = write(dir.path(), "jwks.json", py.jwks.as_bytes());
    let cfg = format!(
        r#"
        [jwt]
        enabled = true
        secret_file = "{secret}"
        jwks_file = "{jwks}"
        "#
    );
    let az = authorizer(&cfg).with_clock(move || t);
    let caller_id = "spiffe://onlyoffice.local/ns/portal/sa/integrator";
    let caller = Some(caller_id);

    // Header form (`{"payload": {...}}`) with `Authorization: Bearer`, every algorithm.
    for name in [
        "hs256_header",
        "hs384_header",
        "hs512_header",
        "rs256",
        "es256",
        "eddsa",
    ] {
        let bearer = format!("Bearer {}", py.tokens[name]);
        let out = decide(
            &az,
            8000,
            caller,
            "POST",
            "/coauthoring/CommandService.ashx",
            &[("authorization", &bearer), ("host", "documentserver:8000")],
            br#"{"c":"info","key":"doc-1"}"#,
        )
        .await;
        assert_eq!(out.allowed().as_deref(), Some("documentserver"), "{name}");
        assert_eq!(out.headers[TENANT_HEADER], "documentserver", "{name}");
        assert_eq!(out.headers[CLIENT_ID_HEADER], caller_id, "{name}");
    }
    // The body form signed by PyJWT verifies from the header too (the shape is only claims).
    for name in ["hs256_body", "hs384_body", "hs512_body"] {
        let bearer = format!("Bearer {}", py.tokens[name]);
        let out = decide(
            &az,
            8000,
            caller,
            "POST",
            "/ConvertService.ashx",
            &[("authorization", &bearer)],
            b"{}",
        )
        .await;
        assert_eq!(out.allowed().as_deref(), Some("localhost"), "{name}");
    }

    // A token whose kid names a key pinned to another algorithm is refused.
    let bearer = format!("Bearer {}", py.tokens["rs256_wrong_kid"]);
    decide(
        &az,
        8000,
        caller,
        "POST",
        "/x",
        &[("authorization", &bearer)],
        b"",
    )
    .await
    .denied(Cause::Unauthenticated, "no JWKS key with kid \"ec-1\"");

    // A PyJWT token with one payload character changed fails its signature.
    let tok = &py.tokens["hs256_header"];
    let mut parts: Vec<String> = tok.split('.').map(str::to_string).collect();
    let payload = serde_json::json!({"payload": {"c": "drop", "key": "doc-1"}, "iat": t});
    parts[1] = b64(payload.to_string().as_bytes());
    let bearer = format!("Bearer {}", parts.join("."));
    decide(
        &az,
        8000,
        caller,
        "POST",
        "/x",
        &[("authorization", &bearer)],
        b"",
    )
    .await
    .denied(Cause::Unauthenticated, "bad signature (HS256)");
}

#[tokio::test]
async fn pyjwt_body_tokens_verify_with_jwt_in_body_and_the_body_reaches_the_app_intact() {
    let t = now();
    let py = pyjwt(t, SECRET);
    let cfg = format!(
        r#"
        [jwt]
        enabled = true
        header = "AuthorizationJwt"
        in_body = true
        secret = "{SECRET}"
        "#
    );
    let az = authorizer(&cfg).with_clock(move || t);
    for name in ["hs256_body", "hs384_body", "hs512_body"] {
        let body =
            serde_json::json!({"c": "info", "key": "doc-1", "token": py.tokens[name]}).to_string();
        let out = decide(
            &az,
            8000,
            None,
            "POST",
            "/coauthoring/CommandService.ashx",
            &[
                ("content-type", "application/json"),
                ("content-length", &body.len().to_string()),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(out.allowed().as_deref(), Some("localhost"), "{name}");
        assert_eq!(
            out.body,
            body.as_bytes(),
            "{name}: the buffered body is replayed unchanged"
        );
        assert!(
            out.headers.get(CLIENT_ID_HEADER).is_none(),
            "no client ID without mTLS"
        );
    }
    // The header form still works through `AuthorizationJwt: Bearer` when the body has none.
    let bearer = format!("Bearer {}", py.tokens["hs256_header"]);
    let out = decide(
        &az,
        8000,
        None,
        "POST",
        "/coauthoring/CommandService.ashx",
        &[("AuthorizationJwt", &bearer)],
        br#"{"c":"info","key":"doc-1"}"#,
    )
    .await;
    out.allowed();
    // But not through `Authorization`, which is not the configured header here.
    let out = decide(
        &az,
        8000,
        None,
        "POST",
        "/coauthoring/CommandService.ashx",
        &[("Authorization", &bearer)],
        br#"{"c":"info"}"#,
    )
    .await;
    out.denied(Cause::Unauthenticated, "missing token: expected JSON body field \"token\" or header \"AuthorizationJwt: Bearer <jwt>\"");
}

#[tokio::test]
async fn rfc7515_appendix_a1_hs256_vector_verifies() {
    use base64::Engine;
    const TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(KEY)
        .unwrap();
    assert!(
        !matches!(key.last(), Some(b'\n' | b'\r')),
        "the key file keeps every byte"
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "a1.key", &key);
    let cfg = format!("[jwt]\nenabled = true\nsecret_file = \"{secret}\"\nissuers = [\"joe\"]\n");
    let exp = 1_300_819_380;
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("authorization", bearer.as_str())];

    let az = authorizer(&cfg).with_clock(move || exp - 10);
    decide(&az, 80, None, "GET", "/", &headers, b"")
        .await
        .allowed();

    // The same vector, after its exp plus the 60 s tolerance, is expired.
    let az = authorizer(&cfg).with_clock(move || exp + 61);
    decide(&az, 80, None, "GET", "/", &headers, b"")
        .await
        .denied(Cause::Unauthenticated, "expired token: exp 1300819380");

    // With a different required issuer it is refused for that reason.
    let cfg = cfg.replace("\"joe\"", "\"mallory\"");
    let az = authorizer(&cfg).with_clock(move || exp - 10);
    decide(&az, 80, None, "GET", "/", &headers, b"")
        .await
        .denied(Cause::Unauthenticated, "wrong issuer: got Some(\"joe\")");
}
