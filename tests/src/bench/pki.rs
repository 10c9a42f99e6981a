//! The benchmark's PKI: one development CA (ECDSA P-256, from `docmesh_certs::ca`), an SVID for
//! the client side and one for the server side of every pair, written as PEM files that
//! docmesh, nginx and HAProxy all read. The server SVID's subject CN is [`SERVER_NAME`], which
//! nginx (`proxy_ssl_name`) and HAProxy (`verifyhost`) check, as docmesh checks the SPIFFE ID.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use docmesh_certs::ca::{CertificateAuthority, IssuedSvid, KeyAlgorithm};
use docmesh_certs::spiffe_id::{SpiffeId, TrustDomain};
use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};

/// Trust domain of the benchmark CA.
pub const TRUST_DOMAIN: &str = "bench.docmesh";
/// SPIFFE ID of every client-side (outbound) proxy.
pub const CLIENT_ID: &str = "spiffe://bench.docmesh/ns/bench/sa/client";
/// SPIFFE ID of every server-side (inbound) proxy.
pub const SERVER_ID: &str = "spiffe://bench.docmesh/ns/bench/sa/documentserver";
/// Subject CN of the server SVID (last path segment of [`SERVER_ID`]).
pub const SERVER_NAME: &str = "documentserver";

/// Problems creating the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The certs crate refused.
    #[error("cannot create the benchmark CA or SVIDs: {0}")]
    Ca(#[from] docmesh_certs::ca::CaError),
    /// A fixed identifier did not parse (a bug in this file).
    #[error("bad built-in identifier: {0}")]
    Id(String),
    /// Writing a PEM file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// rustls refused the client key or chain.
    #[error("cannot build the churn client's TLS config: {0}")]
    Tls(#[from] rustls::Error),
}

/// PEM files of one SVID.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// PKCS#8 key.
    pub key: PathBuf,
    /// Chain followed by key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// The written PKI.
pub struct Pki {
    /// Root certificate (the trust bundle of every proxy).
    pub bundle: PathBuf,
    /// Client-side SVID.
    pub client: SvidFiles,
    /// Server-side SVID.
    pub server: SvidFiles,
    ca: CertificateAuthority,
    client_svid: IssuedSvid,
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, PkiError> {
    std::fs::write(&path, text).map_err(|source| PkiError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn write_svid(dir: &Path, name: &str, svid: &IssuedSvid) -> Result<SvidFiles, PkiError> {
    Ok(SvidFiles {
        cert: write(dir.join(format!("{name}.pem")), &svid.cert_chain_pem)?,
        key: write(dir.join(format!("{name}.key")), &svid.key_pem)?,
        combined: write(
            dir.join(format!("{name}.combined.pem")),
            &format!("{}{}", svid.cert_chain_pem, svid.key_pem),
        )?,
    })
}

fn id(s: &str) -> Result<SpiffeId, PkiError> {
    s.parse().map_err(|_| PkiError::Id(s.to_owned()))
}

impl Pki {
    /// Generates the CA and both SVIDs (valid for a day) and writes them into `dir`.
    pub fn create(dir: &Path) -> Result<Pki, PkiError> {
        let td: TrustDomain = TRUST_DOMAIN
            .parse()
            .map_err(|_| PkiError::Id(TRUST_DOMAIN.to_owned()))?;
        let day = Duration::from_secs(86400);
        let ca = CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, day * 2)?;
        let client_svid = ca.issue_svid(&id(CLIENT_ID)?, day)?;
        let server_svid = ca.issue_svid(&id(SERVER_ID)?, day)?;
        Ok(Pki {
            bundle: write(dir.join("bundle.pem"), ca.root_cert_pem())?,
            client: write_svid(dir, "client", &client_svid)?,
            server: write_svid(dir, "server", &server_svid)?,
            ca,
            client_svid,
        })
    }

    /// A TLS 1.3 client config presenting the client SVID, verifying the server's SPIFFE ID,
    /// with session resumption off (every connection is a full mTLS handshake) and X25519
    /// only (the key exchange OpenSSL 3.0's nginx and HAProxy use too), ALPN `http/1.1`.
    pub fn churn_client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let verifier = SpiffeServerVerifier::new(
            Arc::new(ArcSwap::from_pointee(self.ca.bundle())),
            ExpectedPeer::Exact(id(SERVER_ID)?),
        );
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(self.client_svid.key_der.clone().into());
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.client_svid.chain.clone(), key)?;
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
