//! The wire protocols docmesh tells apart, for every layer: it sits at the bottom and imports
//! no other module of the crate.
//!
//! Two types, one concept each: [`WireProtocol`] is what runs on a connection or hop (HTTP/1.1,
//! HTTP/2 or opaque TCP); [`HttpVersion`] is its HTTP subset, for code that only ever handles
//! HTTP (pools, HTTP servers), so that it has no opaque case to refuse. What the configuration
//! declares (`config::outbound::Protocol`) is a third concept, a choice that includes
//! "detect"; its declared variants map to a [`WireProtocol`].

/// ALPN protocol names on the mesh hop: they tell the inbound what runs inside the TLS stream.
pub mod alpn {
    /// HTTP/2.
    pub const H2: &[u8] = b"h2";
    /// HTTP/1.1.
    pub const HTTP1: &[u8] = b"http/1.1";
    /// Opaque TCP.
    pub const TCP: &[u8] = b"docmesh-tcp";
}

/// The wire protocol of a connection or of one hop: what an app speaks on a connection
/// (detected from its first bytes or declared in the configuration), and what runs inside a
/// mesh connection (announced by its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireProtocol {
    /// HTTP/1.x (an HTTP/1.x request line; ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (the connection preface; ALPN `h2`).
    Http2,
    /// Anything else, relayed as opaque TCP (ALPN `docmesh-tcp`).
    Opaque,
}

impl WireProtocol {
    /// The ALPN name announcing this protocol on the mesh hop.
    pub const fn alpn(self) -> &'static [u8] {
        match self {
            WireProtocol::Http1 => alpn::HTTP1,
            WireProtocol::Http2 => alpn::H2,
            WireProtocol::Opaque => alpn::TCP,
        }
    }

    /// The protocol an ALPN name announces (`None`: not one of docmesh's).
    pub fn from_alpn(name: &[u8]) -> Option<Self> {
        [Self::Http1, Self::Http2, Self::Opaque]
            .into_iter()
            .find(|p| p.alpn() == name)
    }

    /// The HTTP version, or `None` for opaque TCP.
    pub const fn http_version(self) -> Option<HttpVersion> {
        match self {
            WireProtocol::Http1 => Some(HttpVersion::Http1),
            WireProtocol::Http2 => Some(HttpVersion::Http2),
            WireProtocol::Opaque => None,
        }
    }
}

/// The HTTP version of a connection (an HTTP [`WireProtocol`]): the version an HTTP server
/// speaks on a connection, part of the key of pooled upstream connections, and (in a request's
/// extensions) the version of the mesh hop the request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2.
    Http2,
}

impl From<HttpVersion> for WireProtocol {
    fn from(version: HttpVersion) -> Self {
        match version {
            HttpVersion::Http1 => WireProtocol::Http1,
            HttpVersion::Http2 => WireProtocol::Http2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_names_round_trip_and_unknown_names_are_none() {
        for p in [
            WireProtocol::Http1,
            WireProtocol::Http2,
            WireProtocol::Opaque,
        ] {
            assert_eq!(WireProtocol::from_alpn(p.alpn()), Some(p));
        }
        assert_eq!(WireProtocol::from_alpn(b"h3"), None);
        assert_eq!(WireProtocol::from_alpn(b""), None);
    }

    #[test]
    fn http_versions_map_both_ways_and_opaque_has_none() {
        for v in [HttpVersion::Http1, HttpVersion::Http2] {
            assert_eq!(WireProtocol::from(v).http_version(), Some(v));
        }
        assert_eq!(WireProtocol::Opaque.http_version(), None);
    }
}
