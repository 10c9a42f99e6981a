//! One plain-HTTP connection to the collector, reused between exports and reopened after a
//! failure: HTTP/2 with the gRPC framing for OTLP/gRPC, HTTP/1.1 for OTLP/HTTP.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::proto::ExportTraceServiceResponse;
use crate::config::otlp::{OtlpProtocol, OtlpTarget};

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// The collector connection.
pub(super) struct Transport {
    target: OtlpTarget,
    conn: Option<Conn>,
}

impl Transport {
    pub(super) fn new(target: OtlpTarget) -> Self {
        Transport { target, conn: None }
    }

    pub(super) fn target(&self) -> &OtlpTarget {
        &self.target
    }

    /// Forgets the connection (after a timeout its state is unknown).
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    /// Sends one encoded `ExportTraceServiceRequest`; `Err` says why the collector did not
    /// take it.
    pub(super) async fn send(&mut self, payload: Vec<u8>) -> Result<(), String> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let result = match &mut conn {
            Conn::H1(s) => self.send_http(s, payload).await,
            Conn::H2(s) => self.send_grpc(s, payload).await,
        };
        if result.is_ok() {
            self.conn = Some(conn);
        }
        result
    }

    async fn connect(&self) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(&self.target.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.target.authority))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        match self.target.protocol {
            OtlpProtocol::HttpProtobuf => {
                let (send, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H1(send))
            }
            OtlpProtocol::Grpc => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H2(send))
            }
        }
    }

    async fn send_http(
        &self,
        s: &mut http1::SendRequest<Full<Bytes>>,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let req = http::Request::post(self.target.path.as_str())
            .header(http::header::HOST, self.target.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| e.to_string())?;
        s.ready().await.map_err(|e| e.to_string())?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("the collector answered {status}: {text}"));
        }
        partial_success(&body)
    }

    async fn send_grpc(
        &self,
        s: &mut http2::SendRequest<Full<Bytes>>,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let mut framed = BytesMut::with_capacity(payload.len() + 5);
        framed.put_u8(0);
        framed.put_u32(u32::try_from(payload.len()).map_err(|_| "batch too large".to_owned())?);
        framed.put_slice(&payload);
        let uri = format!("http://{}{}", self.target.authority, self.target.path);
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(framed.freeze()))
            .map_err(|e| e.to_string())?;
        s.ready().await.map_err(|e| e.to_string())?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let head_status = grpc_status(resp.headers());
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let trailer_status = collected.trailers().and_then(grpc_status);
        if !status.is_success() {
            return Err(format!("the collector answered HTTP {status}"));
        }
        match head_status.or(trailer_status) {
            Some((0, _)) => {}
            Some((code, msg)) => return Err(format!("gRPC status {code}: {msg}")),
            None => return Err("the answer carries no grpc-status".to_owned()),
        }
        let body = collected.to_bytes();
        partial_success(body.get(5..).unwrap_or_default())
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, msg))
}

/// An answer that names rejected spans is a (partial) failure.
fn partial_success(body: &[u8]) -> Result<(), String> {
    let Ok(resp) = <ExportTraceServiceResponse as prost::Message>::decode(body) else {
        return Ok(());
    };
    match resp.partial_success {
        Some(p) if p.rejected_spans > 0 => Err(format!(
            "the collector rejected {} span(s): {}",
            p.rejected_spans, p.error_message
        )),
        _ => Ok(()),
    }
}
