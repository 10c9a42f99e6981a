//! The Workload API source: a `spiffe::X509Source` connected to `workload_api_socket` (or
//! `SPIFFE_ENDPOINT_SOCKET`), following streamed SVID rotations and bundle updates.
//!
//! Every update is converted to DER and validated by the same code as the files source before
//! it is installed; an update that fails validation keeps the current SVID.

use std::sync::Arc;

use docmesh_certs::bundle::TrustBundleSet;
use docmesh_certs::spiffe_id::TrustDomain;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::X509Source;

use super::material::Svid;
use super::{provider, Identity, IdentityError};
use crate::config::identity::IdentityConfig;

const ORIGIN: &str = "the Workload API";

/// The endpoint to use: the config field, else `SPIFFE_ENDPOINT_SOCKET`.
fn endpoint(cfg: &IdentityConfig) -> Result<String, IdentityError> {
    if let Some(e) = cfg.workload_api_socket.as_deref().filter(|e| !e.is_empty()) {
        return Ok(e.to_owned());
    }
    match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
        Ok(e) if !e.is_empty() => Ok(e),
        _ => Err(IdentityError::WorkloadApi(
            "no endpoint: set identity.workload_api_socket (e.g. \
             unix:///run/spire/sockets/agent.sock) or SPIFFE_ENDPOINT_SOCKET"
                .into(),
        )),
    }
}

/// Converts the source's current SVID and bundles into validated material.
fn current(source: &X509Source) -> Result<(Svid, TrustBundleSet), IdentityError> {
    let svid = source
        .svid()
        .map_err(|e| IdentityError::WorkloadApi(format!("no usable SVID: {e}")))?;
    let bundle_set = source
        .bundle_set()
        .map_err(|e| IdentityError::WorkloadApi(format!("no bundles: {e}")))?;
    let mut bundles = TrustBundleSet::new();
    for (td, bundle) in bundle_set.iter() {
        let td: TrustDomain = td.to_string().parse().map_err(|e| {
            IdentityError::WorkloadApi(format!("bundle for trust domain {td}: {e}"))
        })?;
        for root in bundle.authorities() {
            bundles
                .add_root(&td, CertificateDer::from(root.as_bytes().to_vec()))
                .map_err(|e| IdentityError::Bundle {
                    what: format!("Workload API bundle for {td}"),
                    detail: e.to_string(),
                })?;
        }
    }
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let svid = Svid::build(chain, key, &bundles, &provider(), ORIGIN)?;
    Ok((svid, bundles))
}

/// Connects, waits for the first SVID (up to `startup_timeout`), then follows updates.
pub(super) async fn start(cfg: &IdentityConfig) -> Result<Identity, IdentityError> {
    let endpoint = endpoint(cfg)?;
    let build = X509Source::builder()
        .endpoint(&endpoint)
        .initial_sync_timeout(cfg.startup_timeout)
        .build();
    // The builder's own timeout covers the initial sync; this bounds connection setup too.
    let source = match tokio::time::timeout(cfg.startup_timeout, build).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(IdentityError::WorkloadApi(format!(
                "no SVID from {endpoint}: {e} (is the SPIRE agent running, and is this \
                 workload registered?)"
            )))
        }
        Err(_) => {
            return Err(IdentityError::StartupTimeout {
                source_kind: "workload-api",
                waited: cfg.startup_timeout,
                last: format!("no answer from {endpoint}"),
            })
        }
    };
    let (svid, bundles) = current(&source)?;
    let identity = Identity::new(svid, bundles, "workload-api")?;
    let weak = identity.downgrade();
    let source = Arc::new(source);
    let task = tokio::spawn(follow(weak, source, endpoint));
    identity.set_task(task.abort_handle());
    Ok(identity)
}

async fn follow(weak: std::sync::Weak<super::Inner>, source: Arc<X509Source>, endpoint: String) {
    let mut updates = source.updated();
    loop {
        if let Err(e) = updates.changed().await {
            tracing::error!(error = %e, %endpoint, "Workload API source closed; the current SVID is kept until it expires");
            return;
        }
        let Some(identity) = Identity::upgrade(&weak) else {
            return;
        };
        match current(&source) {
            Ok((svid, bundles)) => identity.install(svid, bundles),
            Err(e) => {
                tracing::error!(error = %e, "Workload API update rejected; keeping the current SVID")
            }
        }
    }
}
