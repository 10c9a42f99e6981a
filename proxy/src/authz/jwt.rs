//! JWS compact token verification, OnlyOffice-compatible.
//!
//! The token is parsed here (size cap first, then base64url and JSON) so every failure gets a
//! precise detail; the signature check itself is `jsonwebtoken`'s (aws-lc-rs). The algorithm is
//! pinned by the key: HS* only with the shared secrets and only the configured HS algorithms,
//! every other algorithm only with a JWKS key declaring exactly that algorithm. `alg: none` and
//! unknown algorithms never reach a key.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::keys::Keys;
use super::AuthzError;

/// base64url without padding, tolerating padding (some signers add it).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Most JWKS keys tried for one token without a `kid`.
const MAX_CANDIDATE_KEYS: usize = 8;

/// The claim checks (everything but the keys).
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Longest accepted token in bytes.
    pub max_token_bytes: usize,
    /// HMAC algorithms accepted with the shared secrets.
    pub hmac_algorithms: Vec<Algorithm>,
    /// Clock tolerance for `exp`/`nbf`, in seconds.
    pub tolerance_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Accepted issuers (empty: not checked).
    pub issuers: Vec<String>,
    /// Accepted audiences (empty: not checked).
    pub audiences: Vec<String>,
    /// The tenant whose secret the shared secret stands for when per-tenant secrets are used.
    pub default_tenant: String,
}

/// Verifies `token` with the key of `key_tenant` at unix time `now`; returns its claims.
pub fn verify(
    token: &str,
    keys: &Keys,
    rules: &ClaimRules,
    key_tenant: &str,
    now: u64,
) -> Result<Map<String, Value>, AuthzError> {
    // Size first: nothing is decoded from an oversized token.
    if token.len() > rules.max_token_bytes {
        return Err(AuthzError::TokenTooLarge {
            len: token.len(),
            max: rules.max_token_bytes,
        });
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(format!(
            "expected 3 dot-separated parts (JWS compact form), found {}",
            token.split('.').count()
        )));
    };
    let header_bytes = B64
        .decode(h64)
        .map_err(|e| malformed(format!("header is not base64url: {e}")))?;
    let payload_bytes = B64
        .decode(p64)
        .map_err(|e| malformed(format!("payload is not base64url: {e}")))?;
    B64.decode(s64)
        .map_err(|e| malformed(format!("signature is not base64url: {e}")))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|e| malformed(format!("header is not a JSON object: {e}")))?;
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(malformed("header \"alg\" is not a string".into())),
        None => return Err(malformed("header has no \"alg\"".into())),
    };
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(AuthzError::AlgNone);
    }
    if header.contains_key("crit") {
        return Err(malformed(
            "header has \"crit\" extensions, which are not supported".into(),
        ));
    }
    let alg: Algorithm = alg_name.parse().map_err(|_| AuthzError::AlgNotAccepted {
        alg: clip(alg_name),
        why: "unknown algorithm".into(),
    })?;
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(malformed("header \"kid\" is not a string".into())),
        None => None,
    };
    let signing_input = &token[..h64.len() + 1 + p64.len()];

    let candidates = candidate_keys(keys, rules, alg, kid, key_tenant)?;
    let mut verified = false;
    for key in candidates {
        // Errors from the verifier (a key it cannot use) count as "does not verify".
        if jsonwebtoken::crypto::verify(s64, signing_input.as_bytes(), key, alg).unwrap_or(false) {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(AuthzError::BadSignature {
            alg: format!("{alg:?}"),
        });
    }

    let claims: Map<String, Value> = serde_json::from_slice(&payload_bytes)
        .map_err(|e| malformed(format!("payload is not a JSON object: {e}")))?;
    check_time(&claims, rules, now)?;
    check_iss_aud(&claims, rules)?;
    Ok(claims)
}

fn candidate_keys<'k>(
    keys: &'k Keys,
    rules: &ClaimRules,
    alg: Algorithm,
    kid: Option<&str>,
    key_tenant: &str,
) -> Result<Vec<&'k DecodingKey>, AuthzError> {
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        if !keys.has_secrets() {
            return Err(AuthzError::AlgNotAccepted {
                alg: format!("{alg:?}"),
                why: "no shared secret is configured; only the JWKS public keys are accepted"
                    .into(),
            });
        }
        if !rules.hmac_algorithms.contains(&alg) {
            return Err(AuthzError::AlgNotAccepted {
                alg: format!("{alg:?}"),
                why: "not listed in authz.jwt.algorithms".into(),
            });
        }
        let key = keys
            .secret_for(key_tenant, &rules.default_tenant)
            .ok_or_else(|| AuthzError::UnknownTenantKey {
                tenant: clip(key_tenant),
            })?;
        return Ok(vec![key]);
    }
    let matching: Vec<&DecodingKey> = keys
        .public
        .iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
        .take(MAX_CANDIDATE_KEYS)
        .map(|k| &k.key)
        .collect();
    if matching.is_empty() {
        return Err(AuthzError::AlgNotAccepted {
            alg: format!("{alg:?}"),
            why: match kid {
                Some(k) => format!(
                    "no JWKS key with kid {:?} pinned to this algorithm",
                    clip(k)
                ),
                None => "no JWKS key is pinned to this algorithm".into(),
            },
        });
    }
    Ok(matching)
}

fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthzError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| malformed(format!("claim \"{name}\" is not a usable number"))),
        Some(_) => Err(malformed(format!(
            "claim \"{name}\" must be a NumericDate (seconds since the epoch)"
        ))),
    }
}

fn check_time(claims: &Map<String, Value>, rules: &ClaimRules, now: u64) -> Result<(), AuthzError> {
    let tol = rules.tolerance_secs as f64;
    let now_f = now as f64;
    match numeric_claim(claims, "exp")? {
        Some(exp) if now_f > exp + tol => {
            return Err(AuthzError::Expired {
                exp: exp as i64,
                now,
                tolerance: rules.tolerance_secs,
            })
        }
        None if rules.require_exp => return Err(AuthzError::MissingExp),
        _ => {}
    }
    if let Some(nbf) = numeric_claim(claims, "nbf")? {
        if now_f + tol < nbf {
            return Err(AuthzError::NotYetValid {
                nbf: nbf as i64,
                now,
                tolerance: rules.tolerance_secs,
            });
        }
    }
    Ok(())
}

fn check_iss_aud(claims: &Map<String, Value>, rules: &ClaimRules) -> Result<(), AuthzError> {
    if !rules.issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str);
        if !iss.is_some_and(|i| rules.issuers.iter().any(|x| x == i)) {
            return Err(AuthzError::WrongIssuer {
                got: iss.map(clip),
                expected: rules.issuers.join(", "),
            });
        }
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(AuthzError::WrongAudience {
                got: claims.get("aud").map(|v| clip(&v.to_string())),
                expected: rules.audiences.join(", "),
            });
        }
    }
    Ok(())
}

fn malformed(reason: String) -> AuthzError {
    AuthzError::Malformed { reason }
}

/// Shortens a peer-controlled string before it goes into a detail or a log line.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
