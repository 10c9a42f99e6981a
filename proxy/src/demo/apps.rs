//! The two stand-in services of the demo: an OnlyOffice-like document server (its
//! `CommandService.ashx`, which answers and then calls the integrator's callback URL back), and
//! an integrator (a portal) that receives that callback. Both are plain HTTP servers on
//! loopback: the sidecars do all the mTLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request a stand-in app received, as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which app saw it (`documentserver` or `integrator`).
    pub app: &'static str,
    /// Method and path.
    pub request: String,
    /// The caller's SPIFFE ID as the local sidecar reported it in `peer_header`.
    pub caller: Option<String>,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// Something that happened inside a stand-in app, for the demo's account.
#[derive(Debug, Clone)]
pub enum Event {
    /// A request arrived.
    Received(Seen),
    /// The document server called the callback URL; status and body of the answer, or why it
    /// failed.
    CallbackAnswered(Result<(u16, String), String>),
}

/// A running stand-in app; dropping it stops it (connections are refused afterwards).
pub struct App {
    /// Where the app listens (plain HTTP, loopback).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl App {
    /// Stops the app: the port is closed (new connections are refused) and every open
    /// connection is closed, as when the process dies.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    name: &'static str,
    peer_header: &'static str,
    events: mpsc::UnboundedSender<Event>,
    /// Document server only: where the callback goes (the document server's own sidecar
    /// outbound listener for the integrator).
    callback_via: Option<SocketAddr>,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let caller = req
        .headers()
        .get(ctx.peer_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = format!("{} {}", req.method(), req.uri());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    let _ = ctx.events.send(Event::Received(Seen {
        app: ctx.name,
        request,
        caller,
        body: body.clone(),
    }));
    match (ctx.name, method, path.as_str()) {
        ("documentserver", Method::POST, "/coauthoring/CommandService.ashx") => {
            let key = body["key"].as_str().unwrap_or("").to_owned();
            if let Some(via) = ctx.callback_via {
                // Like OnlyOffice: answer the command, then call the callback URL.
                let events = ctx.events.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let cb = serde_json::json!({"key": key, "status": 6, "users": ["demo-user"]});
                    let r = post_json(via, "/callback?doc=demo", &cb).await;
                    let _ = events.send(Event::CallbackAnswered(r));
                });
            }
            json(StatusCode::OK, serde_json::json!({"error": 0, "key": key}))
        }
        ("integrator", Method::POST, "/callback") => {
            json(StatusCode::OK, serde_json::json!({"error": 0}))
        }
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": 1})),
    }
}

/// Starts a stand-in app on an ephemeral loopback port.
async fn start(ctx: Ctx) -> std::io::Result<App> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(async move {
        // Connections live in this set: aborting the app closes them all.
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let ctx = ctx.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(ctx, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(App { addr, task })
}

/// The document server stand-in; callbacks go through `callback_via` (its sidecar).
pub async fn document_server(
    peer_header: &'static str,
    callback_via: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<App> {
    start(Ctx {
        name: "documentserver",
        peer_header,
        events,
        callback_via: Some(callback_via),
    })
    .await
}

/// The integrator stand-in (it only receives callbacks; the demo sends its commands).
pub async fn integrator(
    peer_header: &'static str,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<App> {
    start(Ctx {
        name: "integrator",
        peer_header,
        events,
        callback_via: None,
    })
    .await
}

/// One HTTP/1.1 JSON POST to `addr` (a sidecar's explicit outbound listener); returns status
/// and body, or a description of the failure.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let (status, _, body) = post_json_full(addr, path, body).await?;
    Ok((status, body))
}

/// Like [`post_json`], also returning the `docmesh-error` header.
pub async fn post_json_full(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, Option<String>, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header(header::HOST, "documentserver.demo")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request to {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let cause = resp
        .headers()
        .get(crate::errors::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?
        .to_bytes();
    Ok((status, cause, String::from_utf8_lossy(&body).into_owned()))
}
