//! The client side of `/ready`: `docmesh-proxy await` polls the local proxy until it is ready,
//! so an app's entrypoint can wait for its sidecar instead of failing with "connection
//! refused".

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why waiting for readiness failed.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    /// The proxy did not report ready in time.
    #[error("docmesh-proxy at {admin} was not ready after {}; last answer: {last} (check that the sidecar runs, its logs, and `curl http://{admin}/ready`)", humantime::format_duration(*.waited))]
    Timeout {
        /// The admin address polled.
        admin: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The last probe result, e.g. `503 not ready: closed gates: identity`.
        last: String,
    },
}

/// One `/ready` probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `/ready` answered 200.
    Ready,
    /// Anything else, described for the operator.
    NotReady(String),
}

/// Sends one `GET /ready` to the admin server at `admin`, giving up after `limit`.
pub async fn probe_ready(admin: SocketAddr, limit: Duration) -> Probe {
    match tokio::time::timeout(limit, probe_once(admin)).await {
        Ok(p) => p,
        Err(_) => Probe::NotReady(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

async fn probe_once(admin: SocketAddr) -> Probe {
    let stream = match TcpStream::connect(admin).await {
        Ok(s) => s,
        Err(e) => return Probe::NotReady(format!("cannot connect: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return Probe::NotReady(format!("HTTP handshake failed: {e}")),
    };
    let conn = tokio::spawn(conn);
    let req = match http::Request::get("/ready")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return Probe::NotReady(format!("cannot build request: {e}")),
    };
    let result = match sender.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                .unwrap_or_default();
            if status == http::StatusCode::OK {
                Probe::Ready
            } else {
                Probe::NotReady(format!("{} {body}", status.as_u16()))
            }
        }
        Err(e) => Probe::NotReady(format!("request failed: {e}")),
    };
    conn.abort();
    result
}

/// Polls `probe` every `interval` until it reports ready or `timeout` has passed.
pub async fn poll_until_ready<F, Fut>(
    admin: SocketAddr,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<(), AwaitError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Probe>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match probe(left.min(Duration::from_secs(2))).await {
            Probe::Ready => return Ok(()),
            Probe::NotReady(why) => why,
        };
        let now = Instant::now();
        if now + interval > deadline {
            let waited = now - start;
            return Err(AwaitError::Timeout {
                admin,
                // Whole milliseconds read better than humantime's nanoseconds.
                waited: Duration::from_millis(waited.as_millis() as u64),
                last,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Waits until the proxy whose admin server listens at `admin` is ready (`/ready` is 200).
pub async fn await_ready(
    admin: SocketAddr,
    timeout: Duration,
    interval: Duration,
) -> Result<(), AwaitError> {
    poll_until_ready(admin, timeout, interval, |limit| probe_ready(admin, limit)).await
}

/// `docmesh-proxy await`: waits on a small runtime, prints the outcome, returns the exit code
/// (0 ready, 1 timeout, 2 cannot start).
pub fn run_await(admin: SocketAddr, timeout: Duration) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docmesh-proxy await: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(await_ready(admin, timeout, Duration::from_millis(250))) {
        Ok(()) => {
            eprintln!("docmesh-proxy at {admin} is ready");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("docmesh-proxy await: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
