//! The proxy's own SPIFFE identity: the current X.509-SVID and the trust bundles, hot-swapped
//! by a source (PEM files, or the SPIFFE Workload API), and the rustls configurations the data
//! path uses.
//!
//! Rotation never needs a new rustls config: the server and client configs resolve the SVID
//! from an `ArcSwap` at each handshake and verify peers against the shared bundle `ArcSwap`.
//! New handshakes see a new SVID at once; open connections are untouched.

mod files;
pub mod material;
pub mod tls;
mod workload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use docmesh_certs::bundle::TrustBundleSet;
use docmesh_certs::spiffe_id::SpiffeId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::identity::{IdentityConfig, IdentitySource};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use material::{PemOrigin, Svid};

/// Name of the readiness gate that opens once the first SVID is loaded.
pub const READY_GATE: &str = "identity";

/// Why an identity could not be loaded, or a new one was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A PEM input has no usable block (missing, empty, half-written, wrong type).
    #[error("{what}: {detail}")]
    Pem {
        /// Which input (file path or argument).
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The trust bundle could not be used.
    #[error("trust bundle {what}: {detail}")]
    Bundle {
        /// Which input (file path or argument).
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The SVID broke an X.509-SVID rule or does not chain to the bundle.
    #[error("SVID from {origin} rejected: {source}")]
    Rejected {
        /// Where the SVID came from.
        origin: String,
        /// The rule it broke.
        source: Box<docmesh_certs::svid::SvidError>,
    },
    /// The private key does not belong to the SVID's leaf certificate.
    #[error("private key does not match the SVID certificate from {origin} ({detail}); is the cert/key pair half-rotated?")]
    KeyMismatch {
        /// Where the SVID came from.
        origin: String,
        /// What rustls reported.
        detail: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No valid SVID arrived within `identity.startup_timeout`.
    #[error("no valid SVID from the {source_kind} source within {}: {last}", whole_millis(*.waited))]
    StartupTimeout {
        /// `files` or `workload-api`.
        source_kind: &'static str,
        /// How long startup waited.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// The Workload API source could not be configured or reached.
    #[error("SPIFFE Workload API: {0}")]
    WorkloadApi(String),
    /// rustls refused a configuration (should not happen with the aws-lc-rs provider).
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// A snapshot of the current SVID for `/certs`, logs and the demo.
#[derive(Debug, Clone)]
pub struct SvidInfo {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf serial number (hex).
    pub serial: String,
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// `fixed`, `files` or `workload-api`.
    pub source: &'static str,
    /// Trust domains the bundles hold roots for.
    pub trust_domains: Vec<String>,
    /// How many times the SVID or bundles changed since start.
    pub rotations: u64,
}

/// The proxy's live identity. Cheap to clone; every clone sees rotations.
#[derive(Clone, Debug)]
pub struct Identity {
    inner: Arc<Inner>,
}

type ClientKey = (SpiffeId, Vec<Vec<u8>>);

struct Inner {
    svid: Arc<ArcSwap<Svid>>,
    bundles: Arc<ArcSwap<TrustBundleSet>>,
    source: &'static str,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    server_sessions: Arc<tls::ServerSessions>,
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
    rotations: watch::Sender<u64>,
    /// Counts the rotations that changed the trust bundles (not only the SVID).
    bundle_changes: watch::Sender<u64>,
    task: OnceLock<AbortHandle>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let svid = self.svid.load();
        f.debug_struct("Identity")
            .field("spiffe_id", &svid.spiffe_id.to_string())
            .field("serial", &svid.serial)
            .field("source", &self.source)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Identity {
    fn new(
        svid: Svid,
        bundles: TrustBundleSet,
        source: &'static str,
    ) -> Result<Identity, IdentityError> {
        let (rotations, _) = watch::channel(0);
        let (bundle_changes, _) = watch::channel(0);
        let provider = provider();
        let svid = Arc::new(ArcSwap::from_pointee(svid));
        let bundles = Arc::new(ArcSwap::from_pointee(bundles));
        let server_sessions = Arc::new(tls::ServerSessions::new());
        let server = Arc::new(tls::server_config(
            provider.clone(),
            svid.clone(),
            bundles.clone(),
            server_sessions.clone(),
        )?);
        Ok(Identity {
            inner: Arc::new(Inner {
                svid,
                bundles,
                source,
                provider,
                server,
                server_sessions,
                clients: Mutex::new(HashMap::new()),
                rotations,
                bundle_changes,
                task: OnceLock::new(),
            }),
        })
    }

    /// A fixed identity from PEM bytes (chain leaf first, PKCS#8/SEC1/PKCS#1 key, bundle of
    /// roots), validated like every other source. For tests, the demo and one-off tools.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
    ) -> Result<Identity, IdentityError> {
        let origin = PemOrigin {
            cert: "SVID certificate chain PEM",
            key: "SVID private key PEM",
            bundle: "trust bundle PEM",
        };
        let (svid, bundles) =
            Svid::from_pem(cert_chain_pem, key_pem, bundle_pem, &provider(), &origin)?;
        Identity::new(svid, bundles, "fixed")
    }

    /// Starts the configured source, waits (up to `identity.startup_timeout`) for the first
    /// valid SVID, and opens the `identity` readiness gate. The source keeps following
    /// rotations in the background until every clone of the returned handle is dropped.
    pub async fn start(
        cfg: &IdentityConfig,
        lifecycle: &Lifecycle,
    ) -> Result<Identity, IdentityError> {
        lifecycle.register_gate(READY_GATE);
        let identity = match cfg.source {
            IdentitySource::Files => files::start(cfg).await?,
            IdentitySource::WorkloadApi => workload::start(cfg).await?,
        };
        let svid = identity.inner.svid.load();
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            serial = %svid.serial,
            not_after = %fmt_time(svid.not_after),
            source = identity.inner.source,
            "SVID loaded"
        );
        lifecycle.open_gate(READY_GATE);
        Ok(identity)
    }

    /// Our SPIFFE ID (from the current SVID).
    pub fn spiffe_id(&self) -> SpiffeId {
        self.inner.svid.load().spiffe_id.clone()
    }

    /// When the current SVID expires.
    pub fn svid_expiry(&self) -> SystemTime {
        self.inner.svid.load().not_after
    }

    /// The current trust bundles (a snapshot).
    pub fn bundles(&self) -> Arc<TrustBundleSet> {
        self.inner.bundles.load_full()
    }

    /// The live bundle handle the verifiers read; for modules that build their own verifiers.
    pub fn shared_bundles(&self) -> Arc<ArcSwap<TrustBundleSet>> {
        self.inner.bundles.clone()
    }

    /// The current SVID's chain and signing key (what the next handshake presents).
    pub fn certified_key(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.inner.svid.load().certified_key.clone()
    }

    /// A snapshot of the current SVID for `/certs` and logs.
    pub fn svid_info(&self) -> SvidInfo {
        let svid = self.inner.svid.load();
        let bundles = self.inner.bundles.load();
        let mut trust_domains: Vec<String> = bundles
            .trust_domains()
            .into_iter()
            .map(|td| td.to_string())
            .collect();
        trust_domains.sort();
        SvidInfo {
            spiffe_id: svid.spiffe_id.to_string(),
            serial: svid.serial.clone(),
            not_before: svid.not_before,
            not_after: svid.not_after,
            source: self.inner.source,
            trust_domains,
            rotations: *self.inner.rotations.borrow(),
        }
    }

    /// How many rotations (accepted new SVIDs or bundles) happened so far.
    pub fn generation(&self) -> u64 {
        *self.inner.rotations.borrow()
    }

    /// Counts the rotations that changed the trust bundles; `changed()` wakes on each (an
    /// SVID renewal alone does not).
    pub fn bundle_changes(&self) -> watch::Receiver<u64> {
        self.inner.bundle_changes.subscribe()
    }

    /// Counts rotations; `changed()` wakes on every accepted new SVID or bundle.
    pub fn rotations(&self) -> watch::Receiver<u64> {
        self.inner.rotations.subscribe()
    }

    /// The inbound (server) TLS config, built once: TLS 1.3 only, client SVID mandatory,
    /// ALPN `h2`, `http/1.1`, `docmesh-tcp`. rustls picks the first protocol of that list the
    /// client offers.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server.clone()
    }

    /// The outbound (client) TLS config for a peer that must present `expected`, offering
    /// `alpn`; cached per (ID, ALPN list) so session resumption works across connections
    /// (until the next rotation, which drops the cache).
    pub fn client_config(&self, expected: &SpiffeId, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let key: ClientKey = (expected.clone(), alpn.iter().map(|p| p.to_vec()).collect());
        let mut cache = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return c.clone();
        }
        let cfg = match tls::client_config(
            self.inner.provider.clone(),
            self.inner.svid.clone(),
            self.inner.bundles.clone(),
            expected,
            alpn,
        ) {
            Ok(c) => Arc::new(c),
            // The same provider and protocol version already built the server config, so
            // this cannot fail in practice; a config that trusts nobody is the safe fallback.
            Err(e) => {
                tracing::error!(error = %e, "cannot build a client TLS config");
                return Arc::new(empty_client_config());
            }
        };
        cache.insert(key, cfg.clone());
        cfg
    }

    /// Registers `docmesh_svid_seconds_left{spiffe_id}` and `docmesh_svid_rotations_total`,
    /// read from the current SVID at every scrape. (`docmesh_svid_expiry_timestamp_seconds`
    /// belongs to `observe::MeshMetrics`; feed it with [`Identity::on_change`].)
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register_collector(Box::new(SvidCollector(self.clone())));
    }

    /// Calls `f` with the current SVID now and again after every accepted rotation, until
    /// the identity is dropped (e.g. to feed `MeshMetrics::svid_loaded`). Needs a Tokio
    /// runtime.
    pub fn on_change(
        &self,
        f: impl Fn(&SvidInfo) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        f(&self.svid_info());
        let mut rx = self.rotations();
        let weak = self.downgrade();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(identity) = Identity::upgrade(&weak) else {
                    return;
                };
                f(&identity.svid_info());
            }
        })
    }

    /// Installs a new SVID and bundle set (already validated); bundles first, so peers that
    /// rotated to a new CA are trusted before we present a certificate from it. TLS sessions
    /// from before are forgotten on both sides (a resumed session is not verified again, so
    /// it would keep our old SVID, or a peer's SVID from a removed root, in use).
    fn install(&self, svid: Svid, bundles: TrustBundleSet) {
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            serial = %svid.serial,
            not_after = %fmt_time(svid.not_after),
            source = self.inner.source,
            "new SVID installed; new handshakes use it, open connections stay up"
        );
        let bundles_changed = !self.inner.bundles.load().same_roots(&bundles);
        self.inner.bundles.store(Arc::new(bundles));
        self.inner.svid.store(Arc::new(svid));
        self.inner.server_sessions.clear();
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.rotations.send_modify(|n| *n += 1);
        if bundles_changed {
            self.inner.bundle_changes.send_modify(|n| *n += 1);
        }
    }

    fn set_task(&self, task: AbortHandle) {
        let _ = self.inner.task.set(task);
    }

    fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Identity> {
        weak.upgrade().map(|inner| Identity { inner })
    }
}

/// RFC 3339 rendering of a time, for logs and `/certs`.
pub fn fmt_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn empty_client_config() -> ClientConfig {
    ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

#[derive(Debug)]
struct SvidCollector(Identity);

impl Collector for SvidCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = self.0.svid_info();
        let left = info
            .not_after
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let g = ConstGauge::new(left);
        let labels = [("spiffe_id", info.spiffe_id.as_str())];
        g.encode(
            encoder
                .encode_descriptor(
                    "svid_seconds_left",
                    "Seconds until the proxy's current X.509-SVID expires (0 once expired)",
                    None,
                    g.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;
        let c = ConstCounter::new(info.rotations);
        c.encode(encoder.encode_descriptor(
            "svid_rotations",
            "SVID or trust bundle changes accepted since start",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `d` for an operator: whole milliseconds (`29s 44ms`, not `29s 44ms 935us 747ns`).
fn whole_millis(d: Duration) -> humantime::FormattedDuration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms))
}

#[cfg(test)]
pub(crate) mod tests;
