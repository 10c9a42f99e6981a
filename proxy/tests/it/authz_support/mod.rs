//! Shared helpers for the authz tests: tokens from PyJWT (an independent implementation),
//! authorizers from TOML, and one-call request decisions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use docmesh_proxy::authz::{Authorizer, Decision, SpiffeId};
use docmesh_proxy::config::authz::AuthzConfig;
use docmesh_proxy::errors::Cause;
use http_body_util::{BodyExt, Full};

/// Makes keys and tokens with PyJWT + cryptography. Arguments: now, shared secret.
const PYJWT_SCRIPT: &str = r#"
import base64, hashlib, hmac, json, sys
import jwt
from jwt.algorithms import RSAAlgorithm, ECAlgorithm, OKPAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa, ec, ed25519
from cryptography.hazmat.primitives import serialization

now = int(sys.argv[1]); secret = sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()

def jwk(cls, key, alg, kid):
    d = json.loads(cls.to_jwk(key.public_key())); d["alg"] = alg; d["kid"] = kid; return d

jwks = {"keys": [jwk(RSAAlgorithm, rsa_key, "RS256", "rsa-1"),
                 jwk(ECAlgorithm, ec_key, "ES256", "ec-1"),
                 jwk(OKPAlgorithm, ed_key, "EdDSA", "ed-1")]}
request = {"c": "info", "key": "doc-1"}
header_form = {"payload": request, "iat": now, "exp": now + 300}
body_form = dict(request, iat=now, exp=now + 300)
t = {}
for alg in ("HS256", "HS384", "HS512"):
    t[alg.lower() + "_header"] = jwt.encode(header_form, secret, algorithm=alg)
    t[alg.lower() + "_body"] = jwt.encode(body_form, secret, algorithm=alg)
t["rs256"] = jwt.encode(header_form, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
t["es256"] = jwt.encode(header_form, ec_key, algorithm="ES256", headers={"kid": "ec-1"})
t["eddsa"] = jwt.encode(body_form, ed_key, algorithm="EdDSA")
t["rs256_wrong_kid"] = jwt.encode(header_form, rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
# Algorithm confusion: HS256 with the RSA public key PEM as the HMAC secret (PyJWT refuses to
# do this itself, so it is signed by hand).
pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b64(json.dumps(header_form).encode())
sig = hmac.new(pem, (h + "." + p).encode(), hashlib.sha256).digest()
t["confusion"] = h + "." + p + "." + b64(sig)
print(json.dumps({"jwks": jwks, "tokens": t, "rsa_public_pem": pem.decode()}))
"#;

/// What the PyJWT script produced.
pub struct PyOut {
    pub jwks: String,
    pub tokens: BTreeMap<String, String>,
    pub rsa_public_pem: String,
}

/// Runs the PyJWT script; fails with a clear message when python3 or PyJWT is missing.
pub fn pyjwt(now: u64, secret: &str) -> PyOut {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYJWT_SCRIPT)
        .arg(now.to_string())
        .arg(secret)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed for the PyJWT interop tests ({e}); run tests/scripts/install-deps.sh")
        });
    assert!(
        out.status.success(),
        "the PyJWT token generator failed; install PyJWT and cryptography with \
         `python3 -m pip install pyjwt cryptography` (tests/scripts/install-deps.sh does it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PyOut {
        jwks: v["jwks"].to_string(),
        tokens: v["tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect(),
        rsa_public_pem: v["rsa_public_pem"].as_str().unwrap().to_string(),
    }
}

/// An authorizer from an `[authz]` TOML body (without the `[authz]` header).
pub fn authorizer(toml_text: &str) -> Authorizer {
    let cfg: AuthzConfig = toml::from_str(toml_text).expect("test config parses");
    Authorizer::from_config(&cfg).expect("test config builds")
}

/// Writes `contents` to `dir/name` and returns the path as a TOML-ready string.
pub fn write(dir: &Path, name: &str, contents: &[u8]) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, contents).unwrap();
    p.display().to_string()
}

/// A parsed SPIFFE ID.
pub fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// The outcome of one request: the decision, the headers the app would see, the body bytes.
pub struct Outcome {
    pub decision: Decision,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Outcome {
    /// Asserts a denial with `cause` whose detail contains `needle`.
    #[track_caller]
    pub fn denied(&self, cause: Cause, needle: &str) {
        match &self.decision {
            Decision::Deny {
                cause: c, detail, ..
            } => {
                assert_eq!(*c, cause, "detail: {detail}");
                assert!(
                    detail.contains(needle),
                    "detail {detail:?} lacks {needle:?}"
                );
            }
            other => panic!("expected {cause:?} ({needle}), got {other:?}"),
        }
    }

    /// Asserts `Allow` and returns the tenant.
    #[track_caller]
    pub fn allowed(&self) -> Option<String> {
        match &self.decision {
            Decision::Allow { tenant, .. } => tenant.clone(),
            other => panic!("expected Allow, got {other:?}"),
        }
    }
}

/// Runs one request through `az`.
pub async fn decide(
    az: &Authorizer,
    port: u16,
    client: Option<&str>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Outcome {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let (mut parts, body) = req.into_parts();
    let client = client.map(id);
    let (decision, body) = az
        .authorize_http(port, client.as_ref(), &mut parts, body)
        .await;
    let body = body.collect().await.unwrap().to_bytes();
    Outcome {
        decision,
        headers: parts.headers,
        body,
    }
}

/// Signs `claims` with an HMAC algorithm (for the hostile corpus; interop uses PyJWT).
pub fn hs(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// base64url without padding.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
