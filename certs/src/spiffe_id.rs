//! SPIFFE IDs and trust domains, parsed strictly per the SPIFFE-ID standard.
//!
//! We wrap the `spiffe` crate's types (for interop with the Workload API client) but apply
//! stricter rules first: the scheme and trust domain must already be lowercase, and every
//! rejection names the rule that was broken (port, userinfo, query, fragment, ...).

use std::fmt;
use std::str::FromStr;

/// Maximum length of a SPIFFE ID in bytes (SPIFFE-ID standard, section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
const PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain; each variant names one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// Longer than 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long; the limit is {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// Does not start with the lowercase `spiffe://` scheme.
    #[error("SPIFFE ID must start with the lowercase scheme `spiffe://`")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain (expected spiffe://<trust-domain>/<path>)")]
    MissingTrustDomain,
    /// The trust domain carries a port (`:`).
    #[error("SPIFFE ID trust domain must not contain a port (found `:`)")]
    Port,
    /// The authority carries userinfo (`@`).
    #[error("SPIFFE ID must not contain userinfo (found `@` in the trust domain)")]
    Userinfo,
    /// A `?` query component.
    #[error("SPIFFE ID must not contain a query (found `?`)")]
    Query,
    /// A `#` fragment component.
    #[error("SPIFFE ID must not contain a fragment (found `#`)")]
    Fragment,
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    #[error(
        "trust domain character {ch:?} is not allowed: only lowercase a-z, 0-9, `.`, `-`, `_`"
    )]
    BadTrustDomainChar {
        /// The offending character.
        ch: char,
    },
    /// Trust domain longer than 255 bytes.
    #[error("trust domain is {len} bytes long; the limit is {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// A path segment contains a character outside `[a-zA-Z0-9.-_]`.
    #[error("path character {ch:?} is not allowed: only a-z, A-Z, 0-9, `.`, `-`, `_` (no percent-encoding)")]
    BadPathChar {
        /// The offending character.
        ch: char,
    },
    /// `//` in the path.
    #[error("SPIFFE ID path must not contain empty segments (`//`)")]
    EmptySegment,
    /// `/.` or `/..` in the path.
    #[error("SPIFFE ID path must not contain `.` or `..` segments")]
    DotSegment,
    /// Path ends with `/`.
    #[error("SPIFFE ID path must not end with `/`")]
    TrailingSlash,
    /// The `spiffe` crate refused what our rules accepted (should not happen).
    #[error("SPIFFE ID rejected by the spiffe crate: {0}")]
    Library(String),
}

/// A validated SPIFFE trust domain name (e.g. `onlyoffice.local`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    inner: spiffe::TrustDomain,
}

impl TrustDomain {
    /// The trust domain name, e.g. `onlyoffice.local`.
    pub fn as_str(&self) -> &str {
        self.inner.as_str()
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (used in CA certificates).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            full: format!("{PREFIX}{}", self.as_str()),
            td: self.clone(),
            path_start: PREFIX.len() + self.as_str().len(),
        }
    }

    /// The equivalent `spiffe` crate type.
    pub fn as_spiffe(&self) -> &spiffe::TrustDomain {
        &self.inner
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    if let Some(ch) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar { ch });
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split element is empty and skipped.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        if seg.is_empty() {
            return Err(if segments.peek().is_some() {
                SpiffeIdError::EmptySegment
            } else {
                SpiffeIdError::TrailingSlash
            });
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(ch) = seg
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar { ch });
        }
    }
    Ok(())
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    /// Parses a bare trust domain name (`onlyoffice.local`) or a trust domain ID
    /// (`spiffe://onlyoffice.local`, no path).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        let name = if s.contains("://") {
            let id: SpiffeId = s.parse()?;
            return Ok(id.trust_domain().clone());
        } else {
            s
        };
        check_trust_domain(name)?;
        let inner =
            spiffe::TrustDomain::new(name).map_err(|e| SpiffeIdError::Library(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    td: TrustDomain,
    path_start: usize,
}

impl SpiffeId {
    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The path part, starting with `/`, or empty for a trust domain ID.
    pub fn path(&self) -> &str {
        self.full.get(self.path_start..).unwrap_or("")
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// True when this is the trust domain's own ID (`spiffe://td`, empty path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// The equivalent `spiffe` crate type (for the Workload API client and friends).
    pub fn to_spiffe(&self) -> Result<spiffe::SpiffeId, SpiffeIdError> {
        spiffe::SpiffeId::new(&self.full).map_err(|e| SpiffeIdError::Library(e.to_string()))
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let rest = s.strip_prefix(PREFIX).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td)?;
        check_path(path)?;
        // Cross-check with the spiffe crate so both libraries agree on what is valid.
        let lib = spiffe::SpiffeId::new(s).map_err(|e| SpiffeIdError::Library(e.to_string()))?;
        Ok(Self {
            full: s.to_owned(),
            td: TrustDomain {
                inner: lib.trust_domain().clone(),
            },
            path_start: PREFIX.len() + td.len(),
        })
    }
}

impl TryFrom<&spiffe::SpiffeId> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(id: &spiffe::SpiffeId) -> Result<Self, Self::Error> {
        id.to_string().parse()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        s.parse::<SpiffeId>().unwrap_err()
    }

    #[test]
    fn valid_ids_parse_and_expose_parts() {
        let id: SpiffeId = "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain().as_str(), "onlyoffice.local");
        assert_eq!(id.path(), "/ns/onlyoffice/sa/docservice");
        assert_eq!(
            id.to_string(),
            "spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice"
        );
        assert_eq!(
            id.to_spiffe().unwrap().path(),
            "/ns/onlyoffice/sa/docservice"
        );
        let td_id: SpiffeId = "spiffe://a-b_c.d9".parse().unwrap();
        assert!(td_id.is_trust_domain_id());
        assert_eq!(td_id.path(), "");
        assert_eq!(td_id, td_id.trust_domain().id());
        let mixed: SpiffeId = "spiffe://td/A.b-C_9/x".parse().unwrap();
        assert_eq!(mixed.path(), "/A.b-C_9/x");
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(err(""), SpiffeIdError::Empty);
        assert_eq!(err("http://td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("SPIFFE://td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:///x"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe://"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe://td:8080/x"), SpiffeIdError::Port);
        assert_eq!(err("spiffe://user@td/x"), SpiffeIdError::Userinfo);
        assert_eq!(err("spiffe://td/x?q=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td/x#frag"), SpiffeIdError::Fragment);
        assert_eq!(
            err("spiffe://TD/x"),
            SpiffeIdError::BadTrustDomainChar { ch: 'T' }
        );
        assert_eq!(
            err("spiffe://t%64/x"),
            SpiffeIdError::BadTrustDomainChar { ch: '%' }
        );
        assert_eq!(err("spiffe://td/a//b"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/a/./b"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/a/.."), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/a/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://td/"), SpiffeIdError::TrailingSlash);
        assert_eq!(
            err("spiffe://td/a%20b"),
            SpiffeIdError::BadPathChar { ch: '%' }
        );
        assert_eq!(err("spiffe://td/ä"), SpiffeIdError::BadPathChar { ch: 'ä' });
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        assert_eq!(err(&long), SpiffeIdError::TooLong { len: long.len() });
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert_eq!(
            err(&long_td),
            SpiffeIdError::TrustDomainTooLong { len: 256 }
        );
        // Exactly at the limit is fine.
        let max = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN - 12));
        assert_eq!(max.len(), MAX_SPIFFE_ID_LEN);
        assert!(max.parse::<SpiffeId>().is_ok());
    }

    #[test]
    fn trust_domain_parsing() {
        let td: TrustDomain = "onlyoffice.local".parse().unwrap();
        assert_eq!(td.to_string(), "onlyoffice.local");
        assert_eq!(td.id().as_str(), "spiffe://onlyoffice.local");
        let td2: TrustDomain = "spiffe://onlyoffice.local".parse().unwrap();
        assert_eq!(td, td2);
        assert!("Upper.case".parse::<TrustDomain>().is_err());
        assert!("".parse::<TrustDomain>().is_err());
        assert_eq!(
            "td:1".parse::<TrustDomain>().unwrap_err(),
            SpiffeIdError::Port
        );
    }

    #[test]
    fn serde_round_trip() {
        let id: SpiffeId = "spiffe://td/x".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/x\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/x/\"").is_err());
    }
}
