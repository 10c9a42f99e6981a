//! A [`Topology`] whose pods run real sidecars: one dev CA for a trust domain, a directory for
//! the sidecars' files (readable by the proxy's UID) and the logs printed when the test fails.
//! Shared by the netns tests that start sidecars (`netns_e2e`, `netns_idle`, `netns_routes`,
//! `netns_endpoints`, `netns_harden`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_certs::spiffe_id::TrustDomain;

use super::sidecar::{Logs, Sidecar};
use super::{Pod, Topology};

/// Pods, a CA and the sidecars' files; dropping it prints the logs (when the test panics),
/// then stops every process and removes the namespaces and the files.
pub struct Mesh {
    // Fields drop in this order: the logs are printed while the files still exist.
    logs: Mutex<Logs>,
    /// The pods and their namespaces.
    pub topo: Topology,
    root: tempfile::TempDir,
    /// The CA every sidecar's SVID and trust bundle come from.
    pub ca: CertificateAuthority,
    trust_domain: String,
    bin: PathBuf,
}

impl Mesh {
    /// Builds pods `names` (panicking with the reason when the topology cannot be built, e.g.
    /// without root) and a CA for `trust_domain`. The sidecars run `bin`: in a test,
    /// `env!("CARGO_BIN_EXE_docmesh-netns-proxy")`.
    pub fn new(trust_domain: &str, names: &[&str], bin: impl AsRef<Path>) -> Mesh {
        let topo =
            Topology::new(names).unwrap_or_else(|e| panic!("cannot build the test topology: {e}"));
        let td: TrustDomain = trust_domain
            .parse()
            .unwrap_or_else(|e| panic!("bad trust domain {trust_domain}: {e}"));
        let ca =
            CertificateAuthority::generate(&td, KeyAlgorithm::default(), Duration::from_secs(7200))
                .unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Mesh {
            logs: Mutex::new(Logs::default()),
            topo,
            root,
            ca,
            trust_domain: trust_domain.to_owned(),
            bin: bin.as_ref().to_owned(),
        }
    }

    /// The pod with this short name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.topo.pod(name)
    }

    /// The SPIFFE ID of pod `name`'s sidecar: `spiffe://TRUST_DOMAIN/pod/NAME`.
    pub fn id(&self, name: &str) -> String {
        format!("spiffe://{}/pod/{name}", self.trust_domain)
    }

    /// The directory the sidecars' files live in (one subdirectory per pod).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Prints the file at `path` too when the test fails (e.g. the log of a helper process).
    pub fn log_on_failure(&self, path: PathBuf) {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(path);
    }

    /// Starts `pod`'s sidecar as [`Mesh::id`] of the pod, with `config` after the identity
    /// section (see [`Sidecar::start`]).
    pub fn start_sidecar(&self, pod: &Pod, config: &str) -> Sidecar {
        self.start_sidecar_as(pod, &self.id(&pod.name), config)
    }

    /// Starts `pod`'s sidecar with an SVID for `spiffe_id`.
    pub fn start_sidecar_as(&self, pod: &Pod, spiffe_id: &str, config: &str) -> Sidecar {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        Sidecar::start(
            pod,
            &self.bin,
            &self.ca,
            spiffe_id,
            self.root.path(),
            config,
            &mut logs,
        )
    }
}
