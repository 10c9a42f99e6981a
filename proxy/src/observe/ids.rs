//! Trace and span identifiers (W3C Trace Context sizes: 16 and 8 bytes, lowercase hex).

use std::fmt;

/// A 16-byte trace id; never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id; never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// A fresh random trace id (never all zeros).
    pub fn random() -> Self {
        loop {
            let v = fastrand::u128(..);
            if v != 0 {
                return TraceId(v.to_be_bytes());
            }
        }
    }

    /// The id from its bytes, or `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// Parses exactly 32 lowercase hex digits (not all zero).
    pub fn parse_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        decode_lower_hex(s, &mut out)?;
        Self::from_bytes(out)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A position in `[0, 1)` derived from the id's random low 56 bits, so that every proxy
    /// on a trace's path makes the same ratio-based sampling decision for it.
    pub fn sample_position(&self) -> f64 {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&self.0[9..]);
        // Keep 53 of the 56 bits so the value is exact in an f64 (and stays below 1.0).
        ((u64::from_be_bytes(low) >> 3) as f64) / ((1u64 << 53) as f64)
    }
}

impl SpanId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// A fresh random span id (never all zeros).
    pub fn random() -> Self {
        loop {
            let v = fastrand::u64(..);
            if v != 0 {
                return SpanId(v.to_be_bytes());
            }
        }
    }

    /// The id from its bytes, or `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// Parses exactly 16 lowercase hex digits (not all zero).
    pub fn parse_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 8];
        decode_lower_hex(s, &mut out)?;
        Self::from_bytes(out)
    }
}

/// Decodes `s` into `out` if it is exactly `2 * out.len()` lowercase hex digits.
pub(crate) fn decode_lower_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Lower-case hex of `bytes` (at most 16) into `f` through a stack buffer: the ids are
/// formatted into the trace headers of every request, so no heap allocation per id.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = buf.get_mut(..bytes.len() * 2).ok_or(fmt::Error)?;
    hex::encode_to_slice(bytes, out).map_err(|_| fmt::Error)?;
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_strict_lowercase_and_zero_is_invalid() {
        assert!(TraceId::parse_hex("4bf92f3577b34da6a3ce929d0e0e4736").is_some());
        assert!(TraceId::parse_hex("4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(TraceId::parse_hex("00000000000000000000000000000000").is_none());
        assert!(TraceId::parse_hex("4bf92f3577b34da6a3ce929d0e0e473").is_none());
        assert!(SpanId::parse_hex("00f067aa0ba902b7").is_some());
        assert!(SpanId::parse_hex("0000000000000000").is_none());
        assert!(SpanId::parse_hex("00f067aa0ba902bg").is_none());
    }

    #[test]
    fn display_round_trips_and_sample_position_is_in_range() {
        for _ in 0..100 {
            let t = TraceId::random();
            assert_eq!(TraceId::parse_hex(&t.to_string()), Some(t));
            let p = t.sample_position();
            assert!((0.0..1.0).contains(&p), "{p}");
            let s = SpanId::random();
            assert_eq!(SpanId::parse_hex(&s.to_string()), Some(s));
        }
        let max = TraceId::parse_hex("ffffffffffffffffffffffffffffffff").unwrap();
        assert!(max.sample_position() < 1.0);
    }
}
