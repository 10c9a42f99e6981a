//! `docmesh-init webhook`: a mutating admission webhook (AdmissionReview v1 over HTTPS) that
//! injects Pods as `docmesh-init inject` does.
//!
//! Endpoints (POST, `application/json`):
//! - `/inject`: Pods of namespaces labelled `docmesh.io/inject=enabled` (the
//!   MutatingWebhookConfiguration's `namespaceSelector`), unless annotated
//!   `docmesh.io/inject: "false"`;
//! - `/inject-annotated`: Pods of other namespaces annotated `docmesh.io/inject: "true"`.
//!
//! The serving certificate and key are PEM files (e.g. from `docmesh-certs issue --dns
//! docmesh-webhook.docmesh-system.svc`), read again when they change, so a rotated Secret is
//! picked up without a restart.

pub mod review;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use clap::Args;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::args::RuleArgs;
use crate::inject::InjectArgs;
use review::OptIn;

/// Largest AdmissionReview body accepted (the API server's own request limit is 3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;

/// `webhook` options; the injection options are `inject`'s.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "DOCMESH_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM), leaf first.
    #[arg(
        long,
        env = "DOCMESH_WEBHOOK_TLS_CERT",
        default_value = "/etc/docmesh-webhook/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "DOCMESH_WEBHOOK_TLS_KEY",
        default_value = "/etc/docmesh-webhook/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Largest request body, in bytes.
    #[arg(long, env = "DOCMESH_WEBHOOK_MAX_BODY", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// How Pods are injected (the same options as `inject`).
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate or key cannot be used.
    #[error("serving certificate: {0}")]
    Tls(String),
    /// The runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Loads the certificate chain and key into a server config (HTTP/1.1).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(WebhookError::Tls(format!(
            "{}: no CERTIFICATE block",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| WebhookError::Tls(format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    args: WebhookArgs,
    rules: RuleArgs,
}

/// The certificate files and the config built from them, rebuilt when a file changes.
#[derive(Debug)]
struct Certs {
    stamp: Option<(SystemTime, SystemTime)>,
    config: Arc<rustls::ServerConfig>,
}

fn stamp(args: &WebhookArgs) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&args.tls_cert)?, m(&args.tls_key)?))
}

/// Serves the webhook on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    args: WebhookArgs,
    rules: RuleArgs,
) -> Result<(), WebhookError> {
    let mut certs = Certs {
        stamp: stamp(&args),
        config: tls_config(&args.tls_cert, &args.tls_key)?,
    };
    let shared = Arc::new(Shared { args, rules });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("docmesh-webhook: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = stamp(&shared.args);
        if now != certs.stamp {
            match tls_config(&shared.args.tls_cert, &shared.args.tls_key) {
                Ok(c) => {
                    eprintln!("docmesh-webhook: serving certificate reloaded");
                    certs = Certs {
                        stamp: now,
                        config: c,
                    };
                }
                Err(e) => eprintln!("docmesh-webhook: keeping the previous certificate: {e}"),
            }
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.config.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("docmesh-webhook: TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let opt_in = match req.uri().path() {
        "/inject" => OptIn::Namespace,
        "/inject-annotated" => OptIn::Annotation,
        "/healthz" => return json_response(StatusCode::OK, &serde_json::json!({"ok": true})),
        other => {
            let msg = format!("unknown path {other}; use /inject or /inject-annotated");
            return json_response(StatusCode::NOT_FOUND, &review::refuse("", 404, &msg));
        }
    };
    if req.method() != Method::POST {
        let msg = "AdmissionReviews are POSTed";
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &review::refuse("", 405, msg),
        );
    }
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().map(str::trim) == Some("application/json"));
    if !json_type {
        let msg = "Content-Type must be application/json";
        return json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &review::refuse("", 415, msg),
        );
    }
    let limit = shared.args.max_body;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (status, msg) = if too_big {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {limit} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            };
            return json_response(status, &review::refuse("", status.as_u16(), &msg));
        }
    };
    let answer = review::review(&body, opt_in, &shared.args.inject, &shared.rules);
    json_response(StatusCode::OK, &answer)
}

/// Runs `docmesh-init webhook` until killed.
pub fn run(args: &WebhookArgs, rules: &RuleArgs) -> Result<(), WebhookError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WebhookError::Runtime)?;
    rt.block_on(async {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| WebhookError::Bind {
                    addr: args.listen,
                    source,
                })?;
        eprintln!(
            "docmesh-webhook: serving AdmissionReview v1 on https://{}",
            args.listen
        );
        serve(listener, args.clone(), rules.clone()).await
    })
}
