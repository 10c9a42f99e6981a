//! Packet capture on a pod's wire (the hub side of its veth pair) with tcpdump, so a test can
//! check what actually crossed the network: TLS records, and never the plaintext.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{NetnsError, Pod, Topology};

/// How long tcpdump may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running capture; [`Capture::finish`] stops it and returns the captured bytes.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Topology {
    /// Starts `tcpdump -i <pod's hub port> FILTER` in the hub namespace and returns once it
    /// listens. `filter` is a pcap filter such as `tcp port 8080`.
    pub fn capture(&self, pod: &Pod, filter: &str) -> Result<Capture, NetnsError> {
        let dir = tempfile::tempdir().map_err(|source| NetnsError::Io {
            what: "tempdir for the capture".into(),
            source,
        })?;
        let file = dir.path().join("wire.pcap");
        let file_arg = file.display().to_string();
        let mut args = vec![
            "netns",
            "exec",
            &self.hub,
            "tcpdump",
            "-i",
            &pod.hub_port,
            "-n",
            "-U",
            // Without immediate mode the last ring-buffer block is lost on SIGINT.
            "--immediate-mode",
            "-s",
            "0",
            // tcpdump drops privileges to its own user by default; keep root so it can write.
            "-Z",
            "root",
            "-w",
            &file_arg,
        ];
        args.extend(filter.split_whitespace());
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetnsError::Io {
                what: "cannot start tcpdump (package tcpdump)".into(),
                source,
            })?;
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                } else if let Some(tx) = tx.as_ref() {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let mut capture = Capture {
            child: Some(child),
            file,
            _dir: dir,
        };
        let mut errors = Vec::new();
        loop {
            match rx.recv_timeout(START_TIMEOUT) {
                Ok(Ok(())) => return Ok(capture),
                Ok(Err(line)) => errors.push(line),
                Err(_) => {
                    capture.stop();
                    return Err(NetnsError::Command {
                        command: format!("tcpdump -i {} {filter}", pod.hub_port),
                        status: "did not start listening".into(),
                        stderr: errors.join("; "),
                    });
                }
            }
        }
    }
}

impl Capture {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // `ip netns exec` execs tcpdump, so this pid is tcpdump itself; SIGINT makes it
                // flush and close the file.
                let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            }
            let _ = child.wait();
        }
    }

    /// Stops the capture and returns the pcap file's bytes (packet payloads appear verbatim).
    pub fn finish(mut self) -> Result<Vec<u8>, NetnsError> {
        // Let tcpdump drain what the kernel already handed it: wait (bounded) until the file
        // stops growing, then stop it.
        let size = |f: &PathBuf| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut last = size(&self.file);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = size(&self.file);
            if now == last {
                break;
            }
            last = now;
        }
        self.stop();
        std::fs::read(&self.file).map_err(|source| NetnsError::Io {
            what: format!("cannot read {}", self.file.display()),
            source,
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// True when the bytes hold a TLS handshake record header (content type 22, version 3.x),
/// as a ClientHello or ServerHello on the wire does.
pub fn has_tls_handshake(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == 0x16 && w[1] == 0x03 && (1..=4).contains(&w[2]))
}
