//! The load generators: wrk for throughput (closed loop, fixed connections, fixed time), our
//! own open-loop generator for latency at a fixed rate, and our own connection-churn client
//! (a fresh TCP or mTLS connection per request).
//!
//! Open loop: a dispatcher thread (timer slack 1 ns) releases request i at t0 + i/rate no
//! matter how many earlier requests are still outstanding (a busy connection is never waited
//! for: another pooled connection is used, or a new one opened), and each latency is measured
//! from that *intended* send time, so a stall of the proxy shows up in full in the tail
//! instead of silently delaying later sends (no coordinated omission).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::BODY_LEN;
use super::procs;

/// A request that needs longer than this counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One `GET /` with `Connection: close` on a fresh connection; Ok when the answer is 200 with
/// the backend's 1 KiB body (checks that a set-up really works before it is measured).
pub fn check_once(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: documentserver\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("no complete answer from {addr}"))?;
    check_response(&buf).with_context(|| format!("bad answer from {addr}"))
}

pub(crate) fn check_response(buf: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(buf);
    let status = text.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("status line `{status}`, want 200");
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    if body.len() != BODY_LEN {
        bail!("body of {} bytes, want {BODY_LEN}", body.len());
    }
    Ok(())
}

/// Result of one closed-loop throughput run.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Completed requests.
    pub requests: u64,
    /// Run time, seconds.
    pub seconds: f64,
    /// Requests per second as wrk reports them.
    pub rps: f64,
    /// Socket errors plus non-2xx answers.
    pub errors: u64,
    /// CPU seconds wrk itself used.
    pub generator_cpu_s: f64,
}

fn parse_duration_s(s: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 0.000_001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Parses wrk's summary (`N requests in Xs`, `Requests/sec:`, error lines).
pub fn parse_wrk(out: &str) -> anyhow::Result<Throughput> {
    let mut t = Throughput::default();
    let mut have = false;
    for line in out.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            t.requests = n.trim().parse().context("wrk request count")?;
            let d = rest.split(',').next().unwrap_or("");
            t.seconds = parse_duration_s(d.trim()).context("wrk duration")?;
            have = true;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            t.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            t.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            t.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if !have {
        bail!("wrk printed no summary:\n{out}");
    }
    Ok(t)
}

/// wrk with one thread and `conns` keep-alive connections against `addr` for `secs`.
pub fn wrk(wrk: &Path, addr: SocketAddr, conns: u32, secs: u32) -> anyhow::Result<Throughput> {
    let before = procs::children_cpu_seconds();
    let out = std::process::Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .with_context(|| format!("cannot run {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut t = parse_wrk(&text)?;
    t.generator_cpu_s = procs::children_cpu_seconds() - before;
    Ok(t)
}

/// Result of one open-loop run.
#[derive(Debug, Clone, Default)]
pub struct OpenLoop {
    /// Latency of every measured request from its intended send time, microseconds.
    pub latencies_us: Vec<f64>,
    /// Requests that failed or timed out (not in `latencies_us`).
    pub errors: u64,
    /// Connections the generator had to open.
    pub connections: u64,
    /// Wall time of the measured part, seconds.
    pub seconds: f64,
}

type Sender = SendRequest<Empty<Bytes>>;

struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Sender>>,
    opened: AtomicU64,
}

impl Pool {
    async fn take(&self) -> anyhow::Result<Sender> {
        loop {
            let popped = self.idle.lock().map_err(|_| anyhow::anyhow!("pool"))?.pop();
            match popped {
                Some(mut s) => {
                    if !s.is_closed() && s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => break,
            }
        }
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    fn put(&self, s: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(s);
        }
    }
}

async fn one_request(pool: &Pool) -> anyhow::Result<()> {
    let mut s = pool.take().await?;
    let req = hyper::Request::get("/")
        .header(hyper::header::HOST, "documentserver")
        .body(Empty::<Bytes>::new())?;
    let resp = s.send_request(req).await?;
    if resp.status() != 200 {
        bail!("status {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    if body.len() != BODY_LEN {
        bail!("body of {} bytes", body.len());
    }
    pool.put(s);
    Ok(())
}

/// Sends `rate` requests per second to `addr` for `warmup` (not measured) and then
/// `duration` (measured), open loop, on one runtime thread plus the dispatcher thread.
pub fn open_loop(
    addr: SocketAddr,
    rate: u32,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<OpenLoop> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let warm_n = (warmup.as_secs_f64() * f64::from(rate)) as u64;
    let total = warm_n + (duration.as_secs_f64() * f64::from(rate)) as u64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let dispatcher = std::thread::spawn(move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let t0 = Instant::now() + Duration::from_millis(5);
        for i in 0..total {
            let intended = t0 + period.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send((i, intended)).is_err() {
                return;
            }
        }
    });
    let pool = Arc::new(Pool {
        addr,
        idle: Mutex::new(Vec::new()),
        opened: AtomicU64::new(0),
    });
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let measured_start = Arc::new(Mutex::new(None::<Instant>));
    let end = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some((i, intended)) = rx.recv().await {
            let measured = i >= warm_n;
            if i == warm_n {
                if let Ok(mut m) = measured_start.lock() {
                    *m = Some(intended);
                }
            }
            let (pool, lat, errors) = (pool.clone(), lat.clone(), errors.clone());
            tasks.spawn(async move {
                let r = tokio::time::timeout(REQUEST_TIMEOUT, one_request(&pool)).await;
                let took = intended.elapsed();
                if !measured {
                    return;
                }
                match r {
                    Ok(Ok(())) => {
                        if let Ok(mut l) = lat.lock() {
                            l.push(took.as_secs_f64() * 1e6);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        Instant::now()
    });
    let _ = dispatcher.join();
    let start = measured_start.lock().ok().and_then(|m| *m).unwrap_or(end);
    let latencies_us = std::mem::take(&mut *lat.lock().map_err(|_| anyhow::anyhow!("lat"))?);
    Ok(OpenLoop {
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        connections: pool.opened.load(Ordering::Relaxed),
        seconds: (end - start).as_secs_f64(),
    })
}

/// Result of one connection-churn run.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    /// Connections that completed a request.
    pub connections: u64,
    /// Failed connections.
    pub errors: u64,
    /// Run time, seconds.
    pub seconds: f64,
    /// CPU seconds of the generator's thread (its TLS client handshakes included).
    pub generator_cpu_s: f64,
}

async fn churn_one(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let req = b"GET / HTTP/1.1\r\nHost: documentserver\r\nConnection: close\r\n\r\n";
    let mut buf = Vec::with_capacity(2048);
    match tls {
        Some(c) => {
            let name = rustls_pki_types::ServerName::try_from(super::pki::SERVER_NAME)?;
            let mut s = c.connect(name, tcp).await?;
            s.write_all(req).await?;
            s.flush().await?;
            // A peer that closes without close_notify after the full answer is fine.
            let _ = s.read_to_end(&mut buf).await;
        }
        None => {
            let mut s = tcp;
            s.write_all(req).await?;
            s.read_to_end(&mut buf).await?;
        }
    }
    check_response(&buf)
}

/// `concurrency` clients, each opening a fresh connection (mTLS with `tls`, full handshake,
/// else plain TCP) per request with `Connection: close`, for `duration`, on one thread.
pub fn churn(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Churn> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tid = nix::unistd::gettid().as_raw();
    let cpu0 = procs::thread_cpu_seconds(tid);
    let connector = tls.map(tokio_rustls::TlsConnector::from);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (ok, bad, connector) = (ok.clone(), bad.clone(), connector.clone());
            tasks.spawn(async move {
                while Instant::now() < deadline {
                    match tokio::time::timeout(REQUEST_TIMEOUT, churn_one(addr, connector.as_ref()))
                        .await
                    {
                        Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    Ok(Churn {
        connections: ok.load(Ordering::Relaxed),
        errors: bad.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        generator_cpu_s: procs::thread_cpu_seconds(tid) - cpu0,
    })
}
