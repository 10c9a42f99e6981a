//! The typed outcome of authorization and every reason for a refusal.

use std::path::PathBuf;

use super::SpiffeId;
use crate::errors::Cause;

/// The outcome of authorizing one connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through; these verified values are what the app sees.
    Allow {
        /// The client's SPIFFE ID (from its mTLS certificate).
        client_id: Option<SpiffeId>,
        /// The verified tenant, when a token was required.
        tenant: Option<String>,
    },
    /// Refuse it.
    Deny {
        /// Which status to answer with.
        cause: Cause,
        /// Exactly which check failed, for the operator (never contains secrets).
        detail: String,
        /// Stable kebab-case name of the failed check, for metric labels
        /// (see [`AuthzError::reason`]).
        reason: &'static str,
    },
}

impl Decision {
    /// Whether the decision lets the call through.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The refusal for a failed check.
    pub fn deny(e: AuthzError) -> Self {
        Decision::Deny {
            cause: e.cause(),
            detail: e.to_string(),
            reason: e.reason(),
        }
    }

    /// Stable name for metric labels: `allow`, or the failed check's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { reason, .. } => reason,
        }
    }
}

/// Every check that can refuse a call. The message is the detail the operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// No SPIFFE rule allows this client.
    #[error("SPIFFE ID {id} is not allowed for {target} by rules [{rules}]")]
    SpiffeDenied {
        /// The client ID (or a note that there is none).
        id: String,
        /// What was called.
        target: String,
        /// The rule set that was consulted.
        rules: String,
    },
    /// No token where one is required.
    #[error("missing token: expected {expected}")]
    Missing {
        /// Where a token was looked for.
        expected: String,
    },
    /// The token header appears more than once.
    #[error("duplicated token header {header}: send exactly one")]
    DuplicateHeader {
        /// The header name.
        header: String,
    },
    /// The header does not start with the configured prefix.
    #[error("token header {header} does not start with the prefix {prefix:?}")]
    BadPrefix {
        /// The header name.
        header: String,
        /// The expected prefix.
        prefix: String,
    },
    /// The token exceeds the size cap.
    #[error("token of {len} bytes exceeds authz.jwt.max_token_bytes ({max})")]
    TokenTooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The token is not a well-formed JWS.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// `alg: none`.
    #[error("unsigned token (alg \"none\") refused")]
    AlgNone,
    /// The algorithm is not pinned to any configured key.
    #[error("algorithm {alg} not accepted: {why}")]
    AlgNotAccepted {
        /// The token's algorithm.
        alg: String,
        /// Why no key accepts it.
        why: String,
    },
    /// No secret exists for the host's tenant.
    #[error("unknown tenant key: no secret for tenant {tenant:?} (check <tenant_secrets_dir>/{tenant}/secret.key)")]
    UnknownTenantKey {
        /// The tenant whose key was looked for.
        tenant: String,
    },
    /// The signature does not verify.
    #[error("bad signature ({alg}): the token was not signed with the configured key")]
    BadSignature {
        /// The token's algorithm.
        alg: String,
    },
    /// `exp` is past (beyond the tolerance).
    #[error("expired token: exp {exp} is before now {now} minus the {tolerance} s tolerance")]
    Expired {
        /// The `exp` claim.
        exp: i64,
        /// Now.
        now: u64,
        /// Clock tolerance in seconds.
        tolerance: u64,
    },
    /// `nbf` is in the future (beyond the tolerance).
    #[error("token not yet valid: nbf {nbf} is after now {now} plus the {tolerance} s tolerance")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: i64,
        /// Now.
        now: u64,
        /// Clock tolerance in seconds.
        tolerance: u64,
    },
    /// `exp` is required but absent.
    #[error("token has no exp claim, and authz.jwt.require_exp is set")]
    MissingExp,
    /// `iss` is not accepted.
    #[error("wrong issuer: got {got:?}, expected one of [{expected}]")]
    WrongIssuer {
        /// The token's `iss`.
        got: Option<String>,
        /// The accepted issuers.
        expected: String,
    },
    /// `aud` is not accepted.
    #[error("wrong audience: got {got:?}, expected one of [{expected}]")]
    WrongAudience {
        /// The token's `aud`.
        got: Option<String>,
        /// The accepted audiences.
        expected: String,
    },
    /// The configured tenant claim is absent.
    #[error("missing tenant: the token has no \"{claim}\" claim")]
    MissingTenant {
        /// The claim name.
        claim: String,
    },
    /// The token's tenant differs from the host's.
    #[error("tenant of another host: token tenant {token_tenant:?}, host tenant {host_tenant:?}")]
    TenantOfAnotherHost {
        /// The tenant named by the token.
        token_tenant: String,
        /// The tenant of the request's host.
        host_tenant: String,
    },
    /// The permission table does not allow this tenant this call.
    #[error("tenant not permitted: tenant {tenant:?} may not call {call}")]
    TenantNotPermitted {
        /// The verified tenant.
        tenant: String,
        /// The call (method, path, service).
        call: String,
    },
    /// The request path has dot segments, which could dodge prefix rules.
    #[error("path {path:?} has dot segments or encoded slashes; refused so prefix rules hold")]
    UnsafePath {
        /// The path.
        path: String,
    },
    /// The body had to be read for a token but exceeds the buffer limit.
    #[error("request body larger than authz.jwt.max_body_bytes ({max} bytes) while a token is looked for in the body field {field:?}; send a smaller body or the token in the header")]
    BodyTooLarge {
        /// The buffer limit.
        max: usize,
        /// The body field.
        field: String,
    },
    /// The body could not be read to look for a token.
    #[error("could not read the request body to look for a token: {reason}")]
    BodyUnreadable {
        /// The read error.
        reason: String,
    },
}

impl AuthzError {
    /// Stable kebab-case name of the failed check (metric label; never peer-controlled).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthzError::SpiffeDenied { .. } => "spiffe-id-not-allowed",
            AuthzError::Missing { .. } => "jwt-missing",
            AuthzError::DuplicateHeader { .. } => "jwt-duplicate-header",
            AuthzError::BadPrefix { .. } => "jwt-bad-prefix",
            AuthzError::TokenTooLarge { .. } => "jwt-too-large",
            AuthzError::Malformed { .. } => "jwt-malformed",
            AuthzError::AlgNone => "jwt-alg-none",
            AuthzError::AlgNotAccepted { .. } => "jwt-alg-not-accepted",
            AuthzError::UnknownTenantKey { .. } => "jwt-unknown-tenant-key",
            AuthzError::BadSignature { .. } => "jwt-bad-signature",
            AuthzError::Expired { .. } => "jwt-expired",
            AuthzError::NotYetValid { .. } => "jwt-not-yet-valid",
            AuthzError::MissingExp => "jwt-missing-exp",
            AuthzError::WrongIssuer { .. } => "jwt-wrong-issuer",
            AuthzError::WrongAudience { .. } => "jwt-wrong-audience",
            AuthzError::MissingTenant { .. } => "tenant-missing",
            AuthzError::TenantOfAnotherHost { .. } => "tenant-of-another-host",
            AuthzError::TenantNotPermitted { .. } => "tenant-not-permitted",
            AuthzError::UnsafePath { .. } => "unsafe-path",
            AuthzError::BodyTooLarge { .. } => "body-too-large",
            AuthzError::BodyUnreadable { .. } => "body-unreadable",
        }
    }

    /// The status class of this refusal.
    pub fn cause(&self) -> Cause {
        match self {
            AuthzError::SpiffeDenied { .. }
            | AuthzError::TenantNotPermitted { .. }
            | AuthzError::UnsafePath { .. } => Cause::Forbidden,
            AuthzError::BodyTooLarge { .. } => Cause::PayloadTooLarge,
            _ => Cause::Unauthenticated,
        }
    }
}

/// Configuration and key-loading failures (at start-up or on a key file reload).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthzConfigError {
    /// A setting is invalid.
    #[error("invalid [authz] configuration: {0}")]
    Invalid(String),
    /// A key file could not be read or parsed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        reason: String,
    },
}
