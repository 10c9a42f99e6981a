//! Tiny TCP tools for namespace tests: responders that say who they are (and, behind a
//! REDIRECT, which original destination the connection had), and a client that connects from
//! inside a pod as a given user and returns what it was told.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{NetnsError, Pod};

/// How long a probe connection may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A listener thread answering every connection with one line, then closing it.
/// Stopped (and joined) on drop.
#[derive(Debug)]
pub struct Responder {
    /// The address it listens on.
    pub addr: SocketAddr,
    control: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Listens on `addr` inside `pod` and answers `"{tag}\n"`.
    pub fn tag(pod: &Pod, addr: SocketAddr, tag: &str) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, tag.to_string(), false)
    }

    /// Listens on `addr` inside `pod` (a REDIRECT target such as 15001) and answers
    /// `"{tag} {original destination}\n"`, the destination read with SO_ORIGINAL_DST.
    pub fn original_dst(pod: &Pod, addr: SocketAddr, tag: &str) -> Result<Responder, NetnsError> {
        Self::start(pod, addr, tag.to_string(), true)
    }

    fn start(
        pod: &Pod,
        addr: SocketAddr,
        tag: String,
        orig: bool,
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
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let line = if orig {
                    let v6 = conn.local_addr().is_ok_and(|a| a.is_ipv6());
                    match docmesh_init::validate::original_dst(&conn, v6) {
                        Ok(dst) => format!("{tag} {dst}\n"),
                        Err(e) => format!("{tag} no-original-dst({e})\n"),
                    }
                } else {
                    format!("{tag}\n")
                };
                let _ = conn.write_all(line.as_bytes());
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        Ok(Responder {
            addr,
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
