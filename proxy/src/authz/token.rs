//! Finding the token: the JSON body field (OnlyOffice's `JWT_IN_BODY`, which wins when
//! present) read through a bounded buffer, else the configured header with its prefix.

use http::request::Parts;
use http::{HeaderMap, HeaderName};
use http_body::Body;
use serde_json::{Map, Value};

use super::body::{read_bounded, AuthzBody, BufferFailure};
use super::{AuthzError, JwtPolicy};

/// Looks for the token where `policy` says; returns the token (or why there is none) and the
/// body to forward.
pub(super) async fn find_token<B>(
    policy: &JwtPolicy,
    parts: &Parts,
    body: B,
) -> (Result<String, AuthzError>, AuthzBody<B>)
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let body = if policy.in_body && !body.is_end_stream() {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > policy.max_body_bytes as u64) {
            return (Err(too_large(policy)), AuthzBody::original(body));
        }
        match read_bounded(body, policy.max_body_bytes).await {
            Ok((bytes, trailers)) => match body_token(&bytes, &policy.body_field) {
                Ok(Some(token)) => {
                    return (Ok(token), AuthzBody::buffered(bytes, trailers));
                }
                Ok(None) => AuthzBody::buffered(bytes, trailers),
                Err(e) => return (Err(e), AuthzBody::buffered(bytes, trailers)),
            },
            Err(BufferFailure::TooLarge) => {
                return (
                    Err(too_large(policy)),
                    AuthzBody::buffered(Default::default(), None),
                )
            }
            Err(BufferFailure::Read(e)) => {
                return (
                    Err(AuthzError::BodyUnreadable {
                        reason: e.to_string(),
                    }),
                    AuthzBody::buffered(Default::default(), None),
                )
            }
        }
    } else {
        AuthzBody::original(body)
    };
    let result = header_token(
        &parts.headers,
        &policy.header,
        &policy.header_display,
        &policy.prefix,
        policy.rules.max_token_bytes,
    )
    .and_then(|t| {
        t.ok_or_else(|| AuthzError::Missing {
            expected: expected(policy),
        })
    });
    (result, body)
}

fn too_large(policy: &JwtPolicy) -> AuthzError {
    AuthzError::BodyTooLarge {
        max: policy.max_body_bytes,
        field: policy.body_field.clone(),
    }
}

fn expected(policy: &JwtPolicy) -> String {
    let header = format!(
        "header \"{}: {}<jwt>\"",
        policy.header_display, policy.prefix
    );
    if policy.in_body {
        format!("JSON body field \"{}\" or {header}", policy.body_field)
    } else {
        header
    }
}

/// The token in header `name` after `prefix` (prefix compared case-insensitively). `Ok(None)`
/// when the header is absent or empty after the prefix.
pub fn header_token(
    headers: &HeaderMap,
    name: &HeaderName,
    display: &str,
    prefix: &str,
    max_token_bytes: usize,
) -> Result<Option<String>, AuthzError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthzError::DuplicateHeader {
            header: display.to_string(),
        });
    }
    // Size before anything else, so a huge header costs nothing.
    let raw = value.as_bytes();
    if raw.len() > max_token_bytes + prefix.len() {
        return Err(AuthzError::TokenTooLarge {
            len: raw.len().saturating_sub(prefix.len()),
            max: max_token_bytes,
        });
    }
    let text = value.to_str().map_err(|_| AuthzError::Malformed {
        reason: format!("header {display} is not visible ASCII"),
    })?;
    let rest = match text.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
        _ => {
            return Err(AuthzError::BadPrefix {
                header: display.to_string(),
                prefix: prefix.to_string(),
            })
        }
    };
    let token = rest.trim();
    if token.is_empty() {
        return Ok(None);
    }
    Ok(Some(token.to_string()))
}

/// The token in the JSON body's `field`. `Ok(None)` when the body is not a JSON object or has
/// no such field (the header is tried next).
pub fn body_token(bytes: &[u8], field: &str) -> Result<Option<String>, AuthzError> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| bytes[i]) != Some(b'{') {
        return Ok(None);
    }
    let Ok(obj) = serde_json::from_slice::<Map<String, Value>>(bytes) else {
        return Ok(None);
    };
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.is_empty() => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(AuthzError::Malformed {
            reason: format!("JSON body field \"{field}\" is not a string"),
        }),
    }
}
