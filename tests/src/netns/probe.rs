//! Tiny TCP tools for namespace tests: responders that say who they are (and, behind a
//! REDIRECT, which original destination the connection had), and a client that connects from
//! inside a pod as a given user and returns what it was told.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{NetnsError, Pod};

/// How long a probe connection may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Mode {
    Tag,
    Peer,
    OriginalDst,
    HttpEcho,
}

/// Reads one request head, records it in `heads` and answers it with 200 and the head as the
/// body.
fn http_echo(mut conn: TcpStream, heads: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    let peer = conn
        .peer_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    heads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(String::from_utf8_lossy(&head[..end]).into_owned());
    let mut body = head[..end].to_vec();
    body.extend_from_slice(format!("peer: {peer}\n").as_bytes());
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.write_all(&body);
    let _ = conn.shutdown(Shutdown::Both);
}

/// A listener thread answering every connection with one line, then closing it.
/// Stopped (and joined) on drop.
#[derive(Debug)]
pub struct Responder {
    /// The address it listens on.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    control: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Listens on `addr` inside `pod` and answers `"{tag}\n"`.
    pub fn tag(pod: &Pod, addr: SocketAddr, tag: &str) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, tag.to_string(), Mode::Tag)
    }

    /// Listens on `addr` inside `pod` and answers `"{tag} {peer address}\n"` at once, without
    /// waiting for the client (a server-speaks-first protocol).
    pub fn peer(pod: &Pod, addr: SocketAddr, tag: &str) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, tag.to_string(), Mode::Peer)
    }

    /// A minimal HTTP/1.1 app on `addr` inside `pod`: answers every request with 200 and the
    /// request head it received (request line and headers) plus a `peer: ADDR` line (the TCP
    /// peer it saw) as the body, then closes.
    pub fn http_echo(pod: &Pod, addr: SocketAddr) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, String::new(), Mode::HttpEcho)
    }

    /// The request heads an [`Responder::http_echo`] app received so far (request line and
    /// headers, as text).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Listens on `addr` inside `pod` (a REDIRECT target such as 15001) and answers
    /// `"{tag} {original destination}\n"`, the destination read with SO_ORIGINAL_DST.
    pub fn original_dst(pod: &Pod, addr: SocketAddr, tag: &str) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, tag.to_string(), Mode::OriginalDst)
    }

    fn start(
        pod: &Pod,
        addr: SocketAddr,
        tag: String,
        mode: Mode,
    ) -> Result<Responder, NetnsError> {
        let listener = pod
            .enter(move || bind(addr))?
            .map_err(|source| NetnsError::Io {
                what: format!("[{}] cannot listen on {addr}", pod.name),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| NetnsError::Io {
            what: "local_addr".into(),
            source,
        })?;
        let control = listener.try_clone().map_err(|source| NetnsError::Io {
            what: "clone listener".into(),
            source,
        })?;
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let line = match mode {
                    Mode::Tag => format!("{tag}\n"),
                    Mode::Peer => match conn.peer_addr() {
                        Ok(peer) => format!("{tag} {peer}\n"),
                        Err(e) => format!("{tag} no-peer({e})\n"),
                    },
                    Mode::OriginalDst => {
                        let v6 = conn.local_addr().is_ok_and(|a| a.is_ipv6());
                        match docmesh_init::validate::original_dst(&conn, v6) {
                            Ok(dst) => format!("{tag} {dst}\n"),
                            Err(e) => format!("{tag} no-original-dst({e})\n"),
                        }
                    }
                    Mode::HttpEcho => {
                        let seen = seen.clone();
                        std::thread::spawn(move || http_echo(conn, &seen));
                        continue;
                    }
                };
                let _ = conn.write_all(line.as_bytes());
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        Ok(Responder {
            addr,
            heads,
            control,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket wakes the blocked accept() with an error.
        let _ =
            nix::sys::socket::shutdown(self.control.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds a listener; an IPv6 wildcard is IPv6-only so it can coexist with `0.0.0.0`.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    Ok(sock.into())
}

/// Waits (bounded by `timeout`) until something accepts TCP connections at `addr` inside
/// `pod`; used to wait for a proxy's listeners.
pub fn wait_listening(pod: &Pod, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = pod
            .enter(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(format!(
                    "[{}] nothing listens on {addr} after {timeout:?}: {e}",
                    pod.name
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Connects from inside `pod` (as `(uid, gid)` when given) to `target` and returns the line
/// the peer sent, trimmed; an error when the connection fails or nothing arrives in time.
pub fn ask(pod: &Pod, ids: Option<(u32, u32)>, target: SocketAddr) -> Result<String, String> {
    let connect = move || TcpStream::connect_timeout(&target, PROBE_TIMEOUT);
    let conn = match ids {
        Some((uid, gid)) => pod.enter_as(uid, gid, connect),
        None => pod.enter(connect),
    }
    .map_err(|e| e.to_string())?;
    let mut conn = conn.map_err(|e| format!("[{}] connect {target}: {e}", pod.name))?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    conn.read_to_string(&mut buf)
        .map_err(|e| format!("[{}] read from {target}: {e}", pod.name))?;
    Ok(buf.trim().to_string())
}
