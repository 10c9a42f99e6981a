//! The hostile token corpus: every token is refused with the right status and a detail naming
//! the check that failed, and nothing panics.

use crate::authz_support::*;
use docmesh_proxy::authz::{Decision, CLIENT_ID_HEADER, TENANT_HEADER};
use docmesh_proxy::errors::Cause;
use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"acme-secret-for-the-document-server";
const URI: &str = "/coauthoring/CommandService.ashx";
const HOST: &str = "acme.docs.example.com";
const CALLER: Option<&str> = Some("spiffe://onlyoffice.local/ns/portal/sa/integrator");

/// Per-tenant secrets (acme, globex), tenant from the `tenant` claim, must match the host.
fn tenant_setup(dir: &std::path::Path, extra: &str) -> docmesh_proxy::authz::Authorizer {
    write(dir, "tenants/acme/secret.key", SECRET);
    write(
        dir,
        "tenants/globex/secret.key",
        b"globex-secret-xxxxxxxxxxxxxxxxxxxx",
    );
    write(
        dir,
        "tenants/initech/secret.key",
        b"initech-secret-xxxxxxxxxxxxxxxxxxx",
    );
    let cfg = format!(
        r#"
        [services]
        documentserver = 8000
        [jwt]
        enabled = true
        tenant_secrets_dir = "{}/tenants"
        {extra}
        [tenants]
        claim = "tenant"
        base_domain = "docs.example.com"
        [[tenants.permissions]]
        tenant = "acme"
        service = "documentserver"
        methods = ["POST"]
        path_prefix = "/coauthoring/CommandService.ashx"
        [[tenants.permissions]]
        tenant = "acme"
        service = "documentserver"
        methods = ["POST"]
        path_prefix = "/ConvertService.ashx"
        [[tenants.permissions]]
        tenant = "globex"
        service = "documentserver"
        methods = ["GET"]
        path_prefix = "/healthcheck"
        "#,
        dir.display()
    );
    authorizer(&cfg).with_clock(|| NOW)
}

fn claims(tenant: &str) -> serde_json::Value {
    json!({"payload": {"c": "info", "key": "doc-1", "tenant": tenant}, "iat": NOW, "exp": NOW + 300})
}

/// A POST to `URI` on port 8000 from `CALLER`.
async fn from_caller(
    az: &docmesh_proxy::authz::Authorizer,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Outcome {
    decide(az, 8000, CALLER, "POST", URI, headers, body).await
}

/// [`from_caller`] with `Host: host`, `Authorization: auth` and the body `{}`.
async fn send(az: &docmesh_proxy::authz::Authorizer, host: &str, auth: &str) -> Outcome {
    from_caller(az, &[("host", host), ("authorization", auth)], b"{}").await
}

/// A POST to `URI` on port 8000 from no client (JWKS and body tests) with `headers` and `body`.
async fn post(
    az: &docmesh_proxy::authz::Authorizer,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Outcome {
    decide(az, 8000, None, "POST", URI, headers, body).await
}

/// Sends a POST to `URI` from `CALLER` with `headers` and `body` and asserts the decision:
/// `expect` is `allow`, or `401 <part of the detail>` / `403 <part of the detail>`.
async fn expect(
    az: &docmesh_proxy::authz::Authorizer,
    headers: &[(&str, &str)],
    body: &[u8],
    expect: &str,
) {
    let out = from_caller(az, headers, body).await;
    let auth = headers
        .iter()
        .find(|(k, _)| *k == "authorization")
        .map(|(_, v)| v.get(..80).unwrap_or(v));
    let want = match expect.split_once(' ') {
        None => {
            assert_eq!(expect, "allow");
            return assert!(out.decision.is_allow(), "{auth:?}: {:?}", out.decision);
        }
        Some(("401", needle)) => (Cause::Unauthenticated, needle),
        Some(("403", needle)) => (Cause::Forbidden, needle),
        Some(_) => panic!("bad expectation {expect:?}"),
    };
    match &out.decision {
        Decision::Deny { cause, detail, .. } => {
            assert_eq!(*cause, want.0, "{auth:?}: detail {detail}");
            assert!(
                detail.contains(want.1),
                "{auth:?}: detail {detail:?} lacks {:?}",
                want.1
            );
        }
        other => panic!("{auth:?}: expected {expect:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_status_and_detail() {
    let dir = tempfile::tempdir().unwrap();
    let az = tenant_setup(dir.path(), "");
    let good = hs(HS256, SECRET, &claims("acme"));
    let bearer = |t: &str| format!("Bearer {t}");
    let signed = |c: &serde_json::Value| bearer(&hs(HS256, SECRET, c));
    let with = |claim: &str, v: serde_json::Value| {
        let mut c = claims("acme");
        c[claim] = v;
        signed(&c)
    };

    // The good token passes, for every HS algorithm, and the app sees verified values only.
    for alg in [HS256, HS384, HS512] {
        let out = from_caller(
            &az,
            &[
                ("host", HOST),
                ("authorization", &bearer(&hs(alg, SECRET, &claims("acme")))),
                (CLIENT_ID_HEADER, "spiffe://evil/forged"),
                (TENANT_HEADER, "globex"),
            ],
            b"{}",
        )
        .await;
        assert_eq!(out.allowed().as_deref(), Some("acme"));
        assert_eq!(out.headers.get_all(CLIENT_ID_HEADER).iter().count(), 1);
        assert_eq!(out.headers[CLIENT_ID_HEADER], CALLER.unwrap());
        assert_eq!(out.headers.get_all(TENANT_HEADER).iter().count(), 1);
        assert_eq!(out.headers[TENANT_HEADER], "acme");
    }

    let globex_key: &[u8] = b"globex-secret-xxxxxxxxxxxxxxxxxxxx";
    let initech_key: &[u8] = b"initech-secret-xxxxxxxxxxxxxxxxxxx";
    let expired = format!(
        "401 expired token: exp {} is before now {NOW} minus the 60 s",
        NOW - 61
    );
    let (h, p, s) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    // A correctly signed payload that is not JSON.
    let garbage = {
        let h = b64(br#"{"alg":"HS256"}"#);
        let p = b64(b"{not json");
        let sig = jsonwebtoken::crypto::sign(
            format!("{h}.{p}").as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
            HS256,
        )
        .unwrap();
        format!("{h}.{p}.{sig}")
    };
    let none_payload = b64(claims("acme").to_string().as_bytes());
    let none = |header: &str, sig: &str| {
        bearer(&format!("{}.{none_payload}.{sig}", b64(header.as_bytes())))
    };
    let bad_prefix = "401 does not start with the prefix \"Bearer \"";
    let alg_none = "401 unsigned token (alg \"none\")";

    // (host, Authorization, expected decision)
    let table: Vec<(&str, String, &str)> = vec![
        // alg: none, in two spellings, with and without a signature part.
        (HOST, none(r#"{"alg":"none","typ":"JWT"}"#, ""), alg_none),
        (HOST, none(r#"{"alg":"none","typ":"JWT"}"#, &b64(b"sig")), alg_none),
        (HOST, none(r#"{"alg":"None"}"#, ""), alg_none),
        (HOST, none(r#"{"alg":"None"}"#, &b64(b"sig")), alg_none),
        // Wrong secret (another tenant's secret, for this host).
        (HOST, bearer(&hs(HS256, globex_key, &claims("acme"))), "401 bad signature (HS256)"),
        // Expired or not yet valid beyond the 60 s tolerance; within it passes.
        (HOST, with("exp", json!(NOW - 61)), &expired),
        (HOST, with("exp", json!(NOW - 59)), "allow"),
        (HOST, with("nbf", json!(NOW + 61)), "401 token not yet valid: nbf"),
        (HOST, with("nbf", json!(NOW + 59)), "allow"),
        // exp that is not a number.
        (HOST, with("exp", json!("tomorrow")), "401 claim \"exp\" must be a NumericDate"),
        // Missing tenant claim.
        (
            HOST,
            signed(&json!({"payload": {"c": "info"}, "exp": NOW + 300})),
            "401 missing tenant: the token has no \"tenant\" claim",
        ),
        // Tenant of another host: a token for globex (signed with acme's key, since the key
        // follows the host) sent to acme's host.
        (
            HOST,
            signed(&claims("globex")),
            "401 tenant of another host: token tenant \"globex\", host tenant \"acme\"",
        ),
        // Tenant not permitted: globex may only GET /healthcheck.
        (
            "globex.docs.example.com:443",
            bearer(&hs(HS256, globex_key, &claims("globex"))),
            "403 tenant not permitted: tenant \"globex\" may not call POST /coauthoring/CommandService.ashx on documentserver (port 8000)",
        ),
        // initech has a key but no row at all.
        (
            "initech.docs.example.com",
            bearer(&hs(HS256, initech_key, &claims("initech"))),
            "403 tenant not permitted: tenant \"initech\"",
        ),
        // Unknown tenant key: no secret file for this host's tenant.
        (
            "umbrella.docs.example.com",
            bearer(&good),
            "401 unknown tenant key: no secret for tenant \"umbrella\"",
        ),
        // Bad prefix.
        (HOST, format!("Token {good}"), bad_prefix),
        (HOST, format!("Basic {good}"), bad_prefix),
        (HOST, good.clone(), bad_prefix),
        (HOST, "Bearer".into(), bad_prefix),
        // Malformed: base64, JSON, part counts, alg, crit.
        (HOST, bearer(&format!("{h}$.{p}.{s}")), "401 header is not base64url"),
        (HOST, bearer(&format!("{h}.{p}*.{s}")), "401 payload is not base64url"),
        (HOST, bearer(&format!("{h}.{p}.{s}!")), "401 signature is not base64url"),
        (HOST, bearer(&format!("{}.{p}.{s}", b64(b"{\"alg\":"))), "401 header is not a JSON object"),
        (HOST, bearer(&format!("{}.{p}.{s}", b64(b"[1,2]"))), "401 header is not a JSON object"),
        (HOST, bearer(&format!("{}.{p}.{s}", b64(b"{\"typ\":\"JWT\"}"))), "401 header has no \"alg\""),
        (HOST, bearer(&format!("{}.{p}.{s}", b64(b"{\"alg\":7}"))), "401 header \"alg\" is not a string"),
        (
            HOST,
            bearer(&format!("{}.{p}.{s}", b64(b"{\"alg\":\"XS999\"}"))),
            "401 algorithm XS999 not accepted: unknown",
        ),
        (HOST, bearer(&format!("{}.{p}.{s}", b64(br#"{"alg":"HS256","crit":["exp"]}"#))), "401 \"crit\""),
        (HOST, bearer(&format!("{h}.{p}")), "401 expected 3 dot-separated parts"),
        (HOST, bearer(&format!("{h}.{p}.{s}.{s}.{s}")), "401 (JWS compact form), found 5"),
        (HOST, bearer("..."), "401 malformed token"),
        (HOST, bearer("e30.e30.e30"), "401 header has no \"alg\""),
        (HOST, bearer(&garbage), "401 payload is not a JSON object"),
        // A 1 MB token is refused by size, before any decoding.
        (
            HOST,
            bearer(&format!("{h}.{}.{s}", "A".repeat(1024 * 1024))),
            "401 exceeds authz.jwt.max_token_bytes (65536)",
        ),
    ];
    assert_eq!(table.len(), 34);
    for (host, auth, want) in &table {
        expect(&az, &[("host", host), ("authorization", auth)], b"{}", want).await;
    }
    // A duplicated header, even with two good tokens.
    let auth = bearer(&good);
    let twice = [
        ("host", HOST),
        ("authorization", &auth),
        ("authorization", &auth),
    ];
    expect(
        &az,
        &twice,
        b"",
        "401 duplicated token header Authorization",
    )
    .await;
    // No token at all.
    let want = "401 missing token: expected header \"Authorization: Bearer <jwt>\"";
    expect(&az, &[("host", HOST)], b"", want).await;
    // Non-ASCII header bytes.
    let req_auth = http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(URI)
        .header("host", HOST)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.headers_mut().insert("authorization", req_auth);
    let (mut parts, body) = req.into_parts();
    let (d, _) = az.authorize_http(8000, None, &mut parts, body).await;
    assert!(
        matches!(d, Decision::Deny { cause: Cause::Unauthenticated, ref detail, .. } if detail.contains("not visible ASCII")),
        "{d:?}"
    );
    // Denied requests never carry identity headers, even client-forged ones.
    let out = from_caller(
        &az,
        &[
            ("host", HOST),
            (CLIENT_ID_HEADER, "spiffe://x/y"),
            (TENANT_HEADER, "acme"),
        ],
        b"",
    )
    .await;
    assert!(!out.decision.is_allow());
    assert!(
        out.headers.get(CLIENT_ID_HEADER).is_none() && out.headers.get(TENANT_HEADER).is_none()
    );
}

#[tokio::test]
async fn algorithm_confusion_never_passes() {
    let py = pyjwt(NOW, "unused-secret-unused-secret-unused");
    let dir = tempfile::tempdir().unwrap();
    let jwks = write(dir.path(), "jwks.json", py.jwks.as_bytes());
    let confusion = format!("Bearer {}", py.tokens["confusion"]);
    let rs256 = format!("Bearer {}", py.tokens["rs256"]);
    let headers = |auth: &str| [("authorization", auth.to_string())];

    // Public keys only: an HS token has no key at all.
    let az =
        authorizer(&format!("[jwt]\nenabled = true\njwks_file = \"{jwks}\"\n")).with_clock(|| NOW);
    let h = headers(&confusion);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(&az, &h, b"").await.denied(
        Cause::Unauthenticated,
        "algorithm HS256 not accepted: no shared secret is configured",
    );
    // The RS256 token itself is fine.
    post(&az, &[("authorization", rs256.as_str())], b"")
        .await
        .allowed();

    // Shared secret and public keys together: the HS token is checked against the secret only.
    let secret = write(dir.path(), "secret", b"the-real-shared-secret-0123456789");
    let az = authorizer(&format!(
        "[jwt]\nenabled = true\njwks_file = \"{jwks}\"\nsecret_file = \"{secret}\"\n"
    ))
    .with_clock(|| NOW);
    post(&az, &h, b"")
        .await
        .denied(Cause::Unauthenticated, "bad signature (HS256)");

    // Even when the configured secret *is* the PEM text, an RS256 token relabelled HS256 fails
    // (its RSA signature is not an HMAC), and the JWKS never offers an HMAC key.
    let pem_secret = write(dir.path(), "pem-secret", py.rsa_public_pem.as_bytes());
    let az = authorizer(&format!(
        "[jwt]\nenabled = true\njwks_file = \"{jwks}\"\nsecret_file = \"{pem_secret}\"\nalgorithms = [\"HS512\"]\n"
    ))
    .with_clock(|| NOW);
    post(&az, &h, b"").await.denied(
        Cause::Unauthenticated,
        "algorithm HS256 not accepted: not listed in authz.jwt.algorithms",
    );
    let mut relabelled: Vec<String> = py.tokens["rs256"].split('.').map(str::to_string).collect();
    relabelled[0] = b64(br#"{"alg":"ES256","kid":"rsa-1"}"#);
    let tok = format!("Bearer {}", relabelled.join("."));
    post(&az, &[("authorization", tok.as_str())], b"")
        .await
        .denied(
            Cause::Unauthenticated,
            "algorithm ES256 not accepted: no JWKS key with kid \"rsa-1\"",
        );

    // A JWKS that carries a symmetric key is refused at load time.
    let bad = write(
        dir.path(),
        "oct.json",
        br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#,
    );
    let cfg: docmesh_proxy::config::authz::AuthzConfig =
        toml::from_str(&format!("[jwt]\nenabled = true\njwks_file = \"{bad}\"\n")).unwrap();
    let err = docmesh_proxy::authz::Authorizer::from_config(&cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("symmetric (oct) keys are refused"), "{err}");
}

const BODY_SECRET: &str = "body-secret-body-secret-body-secret";

/// An authorizer that looks for the token in the JSON body too (`BODY_SECRET`), plus `extra`
/// lines of `[jwt]`.
fn body_authorizer(extra: &str) -> docmesh_proxy::authz::Authorizer {
    authorizer(&format!(
        "[jwt]\nenabled = true\nin_body = true\nsecret = \"{BODY_SECRET}\"\n{extra}\n"
    ))
    .with_clock(|| NOW)
}

#[tokio::test]
async fn body_tokens_are_bounded_and_oversized_bodies_get_413() {
    let az = body_authorizer("max_body_bytes = 4096");
    let tok = hs(
        HS256,
        BODY_SECRET.as_bytes(),
        &json!({"c": "info", "exp": NOW + 60}),
    );
    let body = json!({"c": "info", "token": tok}).to_string();
    post(&az, &[], body.as_bytes()).await.allowed();

    // A body over the limit (declared or not) is refused with 413 and says why.
    let big = json!({"c": "info", "token": tok, "pad": "x".repeat(8192)}).to_string();
    let out = post(&az, &[], big.as_bytes()).await;
    out.denied(
        Cause::PayloadTooLarge,
        "request body larger than authz.jwt.max_body_bytes (4096 bytes)",
    );
    let out = post(&az, &[("content-length", "10485760")], b"{}").await;
    out.denied(
        Cause::PayloadTooLarge,
        "while a token is looked for in the body field \"token\"",
    );
    assert_eq!(Cause::PayloadTooLarge.status(), 413);

    // A body token that is not a string, and a body without a token and no header.
    post(&az, &[], br#"{"token": 42}"#).await.denied(
        Cause::Unauthenticated,
        "JSON body field \"token\" is not a string",
    );
    post(&az, &[], b"not json")
        .await
        .denied(Cause::Unauthenticated, "missing token");
    // A 1 MB token in the body is caught by the body limit first.
    let huge = json!({"token": "a".repeat(1024 * 1024)}).to_string();
    post(&az, &[], huge.as_bytes())
        .await
        .denied(Cause::PayloadTooLarge, "max_body_bytes");
}

#[tokio::test]
async fn issuer_audience_and_required_exp() {
    let cfg = r#"
        [jwt]
        enabled = true
        secret = "iss-aud-secret-iss-aud-secret-xxxx"
        issuers = ["portal"]
        audiences = ["documentserver"]
        require_exp = true
    "#;
    let az = authorizer(cfg).with_clock(|| NOW);
    let key = b"iss-aud-secret-iss-aud-secret-xxxx";
    let go = |c: serde_json::Value| format!("Bearer {}", hs(HS256, key, &c));
    let ok = go(json!({"iss": "portal", "aud": ["x", "documentserver"], "exp": NOW + 10}));
    decide(&az, 1, None, "GET", "/", &[("authorization", &ok)], b"")
        .await
        .allowed();
    let cases = [
        (
            json!({"iss": "evil", "aud": "documentserver", "exp": NOW + 10}),
            "wrong issuer: got Some(\"evil\")",
        ),
        (
            json!({"aud": "documentserver", "exp": NOW + 10}),
            "wrong issuer: got None",
        ),
        (
            json!({"iss": "portal", "aud": "converter", "exp": NOW + 10}),
            "wrong audience",
        ),
        (
            json!({"iss": "portal", "exp": NOW + 10}),
            "wrong audience: got None",
        ),
        (
            json!({"iss": "portal", "aud": "documentserver"}),
            "token has no exp claim",
        ),
    ];
    for (c, needle) in cases {
        decide(&az, 1, None, "GET", "/", &[("authorization", &go(c))], b"")
            .await
            .denied(Cause::Unauthenticated, needle);
    }
}

#[tokio::test]
async fn random_mutations_of_a_good_token_never_panic_or_pass() {
    let dir = tempfile::tempdir().unwrap();
    let az = tenant_setup(dir.path(), "");
    let good = hs(HS256, SECRET, &claims("acme"));
    let alphabet = b"ABCxyz019-_.=+/ \"{}";
    let mut rng = fastrand::Rng::with_seed(6);
    let mut refused = 0;
    for _ in 0..1500 {
        let mut bytes = good.clone().into_bytes();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..bytes.len());
            match rng.u8(..3) {
                0 => bytes[i] = alphabet[rng.usize(..alphabet.len())],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.usize(..alphabet.len())]),
            }
        }
        let Ok(tok) = String::from_utf8(bytes) else {
            continue;
        };
        if tok == good {
            continue;
        }
        let Ok(auth) = http::HeaderValue::from_str(&format!("Bearer {tok}")) else {
            continue;
        };
        let out = send(&az, HOST, auth.to_str().unwrap()).await;
        // Padding-insensitive base64 may map a mutation back to the same bytes; anything else
        // must be refused.
        if !out.decision.is_allow() {
            refused += 1;
        }
    }
    assert!(refused > 1400, "only {refused} mutations refused");
}

#[tokio::test]
async fn a_streamed_oversized_body_is_refused_without_reading_it_all() {
    use futures::SinkExt;
    use http_body_util::StreamBody;
    let az = body_authorizer("max_body_bytes = 4096");
    let (mut tx, rx) = futures::channel::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..1000 {
            let chunk = http_body::Frame::data(bytes::Bytes::from(vec![b' '; 1024]));
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(URI)
        .body(StreamBody::new(rx))
        .unwrap();
    let (mut parts, body) = req.into_parts();
    let (decision, body) = az.authorize_http(8000, None, &mut parts, body).await;
    drop(body);
    match decision {
        docmesh_proxy::authz::Decision::Deny { cause, detail, .. } => {
            assert_eq!(cause, Cause::PayloadTooLarge);
            assert!(detail.contains("max_body_bytes (4096 bytes)"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), sender)
        .await
        .expect("the sender stops once the authorizer lets go of the body")
        .unwrap();
    assert!(sent <= 8, "{sent} KiB were read for a 4 KiB limit");
}

#[tokio::test]
async fn buffered_bodies_keep_their_trailers() {
    use http_body_util::{BodyExt, StreamBody};
    let az = body_authorizer("");
    let tok = hs(HS256, BODY_SECRET.as_bytes(), &json!({"c": "info"}));
    let body = json!({"c": "info", "token": tok}).to_string();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
        Ok(http_body::Frame::data(bytes::Bytes::from(
            body[..10].to_string(),
        ))),
        Ok(http_body::Frame::data(bytes::Bytes::from(
            body[10..].to_string(),
        ))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let req = http::Request::builder()
        .method("POST")
        .uri(URI)
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let (mut parts, b) = req.into_parts();
    let (decision, b) = az.authorize_http(8000, None, &mut parts, b).await;
    assert!(decision.is_allow(), "{decision:?}");
    let collected = b.collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), body.as_bytes());
}
