//! The HTTP step: one request over the established connection, and its verdict.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::advice;
use super::report::Finding;
use crate::errors::ERROR_HEADER;

/// What the peer answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `docmesh-error` header, when a docmesh proxy synthesized the answer.
    pub docmesh_error: Option<String>,
    /// The first bytes of the body (lossy UTF-8).
    pub body: String,
}

/// Largest body read (health checks answer small bodies; error bodies are small JSON).
const BODY_LIMIT: usize = 4096;

/// Sends `GET path` with `headers` over `io`; the error is already a finding.
pub async fn request<S>(
    io: S,
    host: &str,
    path: &str,
    headers: http::HeaderMap,
    timeout: Duration,
) -> Result<Answer, Finding>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| lost(&e, host))?;
        let driver = tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "docmesh-diagnose")
            .body(Empty::<Bytes>::new())
            .map_err(|e| advice::unexpected_answer(format!("cannot build the request: {e}")))?;
        req.headers_mut().extend(headers);
        let resp = sender.send_request(req).await.map_err(|e| lost(&e, host))?;
        let status = resp.status().as_u16();
        let docmesh_error = resp
            .headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(resp.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        driver.abort();
        Ok(Answer {
            status,
            docmesh_error,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(advice::response_timeout(timeout)),
    }
}

/// The connection broke before an answer: a TLS alert from the peer (TLS 1.3 servers check
/// the client certificate after the client considers the handshake done), else whatever the
/// data path's classification says.
fn lost(e: &hyper::Error, upstream: &str) -> Finding {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return advice::rejected_by_peer(&format!(
                "alert {alert:?} after the handshake, when the peer checked our certificate"
            ));
        }
        source = err.source();
    }
    advice::from_error(&crate::classify::http_error(e, false, upstream).error)
}

/// Judges an answer: `Ok(summary)` for a healthy one, else the finding.
pub fn verdict(
    a: &Answer,
    expect_body: Option<&str>,
    our_id: Option<&str>,
) -> Result<String, Finding> {
    let detail = a.docmesh_error.as_deref().map(|cause| {
        let detail = serde_json::from_str::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| a.body.trim().to_owned());
        (cause.to_owned(), detail)
    });
    let docmesh = detail.as_ref().map(|(c, d)| (c.as_str(), d.as_str()));
    match a.status {
        401 | 403 => Err(advice::refused(a.status, docmesh, our_id)),
        500..=599 => Err(advice::upstream_5xx(a.status, docmesh)),
        200..=399 => match expect_body {
            Some(want) if a.body.trim() != want => Err(advice::unexpected_answer(format!(
                "the health check answered {} with body {:?}, expected {want:?}: the app reports itself unhealthy",
                a.status,
                a.body.trim()
            ))),
            _ => Ok(format!("{} {}", a.status, short(&a.body))),
        },
        s => Err(advice::unexpected_answer(format!(
            "the peer answered {s} {}",
            short(&a.body)
        ))),
    }
}

fn short(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        return String::new();
    }
    let cut: String = b.chars().take(60).collect();
    if cut.len() < b.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}
