//! The backend every set-up ends at: a hyper HTTP/1.1 server on its own thread (a
//! current-thread tokio runtime) answering every request with a 1 KiB body, keep-alive.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// Size of every response body.
pub const BODY_LEN: usize = 1024;

/// A running backend.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Kernel thread id of its thread, for `/proc/self/task/TID/stat`.
    pub tid: i32,
}

/// Starts the backend on 127.0.0.1 (ephemeral port) on a new thread that runs for the rest
/// of the process.
pub fn start() -> std::io::Result<Backend> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-backend".into())
        .spawn(move || {
            let _ = tx.send(nix::unistd::gettid().as_raw());
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("docmesh-bench: backend runtime failed: {e}");
                    return;
                }
            };
            rt.block_on(serve(std_listener));
        })?;
    let tid = rx
        .recv()
        .map_err(|_| std::io::Error::other("backend thread died at start"))?;
    Ok(Backend { addr, tid })
}

async fn serve(l: std::net::TcpListener) {
    let l = match tokio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("docmesh-bench: backend listener failed: {e}");
            return;
        }
    };
    let body = Bytes::from(vec![b'x'; BODY_LEN]);
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut resp = hyper::Response::new(Full::new(body));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
