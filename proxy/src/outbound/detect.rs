//! Protocol detection on the app's first bytes: HTTP/2 prior knowledge (the connection
//! preface), HTTP/1.x (a request line), else opaque TCP.
//!
//! Detection waits at most `timeout` for the app to speak; an app that says nothing is using a
//! server-speaks-first protocol (MySQL, SMTP, ...) and gets opaque TCP right away, never a
//! stall longer than the timeout.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::WireProtocol;

/// Why detection ended without reading anything useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectEnd {
    /// Decided from the bytes.
    Bytes,
    /// The app said nothing (or too little) within the timeout.
    Timeout,
    /// The app closed the connection before sending anything.
    Closed,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
/// Longest prefix needed to decide (the HTTP/2 preface).
const MAX_SNIFF: usize = 24;

/// Classifies `buf`; `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<WireProtocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(WireProtocol::Http2)
        } else {
            None
        };
    }
    let mut maybe = false;
    for m in METHODS {
        let k = buf.len().min(m.len());
        if buf[..k] == m[..k] {
            if k == m.len() {
                return Some(WireProtocol::Http1);
            }
            maybe = true;
        }
    }
    if maybe {
        None
    } else {
        Some(WireProtocol::Opaque)
    }
}

/// Reads the app's first bytes (at most 24) for up to `timeout` and classifies them. The bytes
/// read are returned so they can be replayed upstream.
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> std::io::Result<(WireProtocol, Bytes, DetectEnd)> {
    let mut buf = BytesMut::with_capacity(MAX_SNIFF);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_) => return Ok((WireProtocol::Opaque, buf.freeze(), DetectEnd::Timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let end = if buf.is_empty() {
                    DetectEnd::Closed
                } else {
                    DetectEnd::Bytes
                };
                let d = classify(&buf).unwrap_or(WireProtocol::Opaque);
                return Ok((d, buf.freeze(), end));
            }
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return Ok((d, buf.freeze(), DetectEnd::Bytes));
                }
                if buf.len() >= MAX_SNIFF {
                    return Ok((WireProtocol::Opaque, buf.freeze(), DetectEnd::Bytes));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(WireProtocol::Http1));
        assert_eq!(classify(b"POST /x"), Some(WireProtocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(WireProtocol::Http2));
        assert_eq!(classify(b"\x16\x03\x01"), Some(WireProtocol::Opaque));
        assert_eq!(classify(b"*3\r\n$3\r\nSET"), Some(WireProtocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(WireProtocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let (_app, mut proxy) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (d, bytes, end) = detect(&mut proxy, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((d, end), (WireProtocol::Opaque, DetectEnd::Timeout));
        assert!(bytes.is_empty());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_split_over_writes_is_http2() {
        let (mut app, mut proxy) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            app.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            app.write_all(&H2_PREFACE[5..]).await.unwrap();
            app
        });
        let (d, bytes, _) = detect(&mut proxy, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(d, WireProtocol::Http2);
        assert_eq!(&bytes[..], H2_PREFACE);
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_request_line_then_silence_is_opaque() {
        let (mut app, mut proxy) = tokio::io::duplex(64);
        app.write_all(b"GE").await.unwrap();
        let (d, bytes, end) = detect(&mut proxy, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((d, end), (WireProtocol::Opaque, DetectEnd::Timeout));
        assert_eq!(&bytes[..], b"GE");
    }
}
