//! The `docmesh-proxy diagnose` subcommand: arguments, target lookup in the config, this
//! proxy's TLS client, and the printed report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};
use docmesh_certs::SpiffeId;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::{diagnose, DiagnoseError, Target, Timeouts, TlsClient};
use crate::config::outbound::split_host_port;
use crate::config::Config;
use crate::identity::tls::ALPN_HTTP1;
use crate::identity::Identity;
use crate::resilience::resolve::service_policy;

/// `docmesh-proxy diagnose --config FILE (SERVICE | URL) [--json]`.
#[derive(Debug, Clone, Args)]
pub struct DiagnoseArgs {
    /// The proxy's TOML configuration (services, identity, timeouts).
    #[arg(long, short = 'c', env = "DOCMESH_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// A service name from `outbound.services`, or a URL: `https://host:port/path` for a mesh
    /// hop (mTLS with this proxy's SVID), `http://host:port/path` for a plain HTTP check.
    #[arg(value_name = "SERVICE|URL")]
    pub target: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Path of the HTTP request (default: the service's health check, else `/`).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// The SPIFFE ID the peer must present (default: the configured service's `spiffe_id`).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub expect_id: Option<String>,
}

/// Runs the subcommand: exit 0 when every step passed, 1 at a failure, 2 for bad arguments or
/// an unusable config.
pub fn run(args: &DiagnoseArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docmesh-proxy diagnose: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match crate::check::load(Some(&args.config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("docmesh-proxy diagnose: {e}");
            return ExitCode::from(2);
        }
    };
    let target = match target(&config, args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("docmesh-proxy diagnose: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = if target.tls {
        match rt.block_on(tls_client(&config, target.expected_id.as_deref())) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("docmesh-proxy diagnose: cannot load this proxy's SVID: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let policy = service_policy(&config.resilience, &service_name(&config, &target));
    let t = &policy.default_route.timeouts;
    let timeouts = Timeouts {
        connect: t.connect,
        handshake: t.tls_handshake,
        response: t.response_headers.unwrap_or(Timeouts::default().response),
        ..Timeouts::default()
    };
    let report = rt.block_on(diagnose(&target, tls.as_ref(), &timeouts));
    // A closed stdout (e.g. `| head`) is not an error worth a panic.
    let text = if args.json {
        report.to_json() + "\n"
    } else {
        report.to_text()
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The configured service a target belongs to (by name, or by address for a URL).
fn service_name(config: &Config, target: &Target) -> String {
    let here = format!("{}:{}", target.host, target.port);
    config
        .outbound
        .services
        .iter()
        .find(|s| s.name == target.label || s.addresses.contains(&here))
        .map_or_else(|| target.label.clone(), |s| s.name.clone())
}

/// Finds what to probe: a configured service by name, or a URL (whose expected identity is
/// the one of the service configured at that address, unless `--expect-id` says otherwise).
pub fn target(config: &Config, args: &DiagnoseArgs) -> Result<Target, DiagnoseError> {
    let services = &config.outbound.services;
    let mut t = if args.target.contains("://") {
        let mut t = Target::from_url(&args.target)?;
        let here = format!("{}:{}", t.host, t.port);
        t.expected_id = services
            .iter()
            .find(|s| s.addresses.contains(&here))
            .map(|s| s.spiffe_id.clone());
        t
    } else {
        let svc = services
            .iter()
            .find(|s| s.name == args.target)
            .ok_or_else(|| DiagnoseError::UnknownTarget(args.target.clone()))?;
        let first = svc
            .addresses
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        let (host, port) = split_host_port(first)
            .ok_or_else(|| DiagnoseError::UnknownTarget(args.target.clone()))?;
        let health = service_policy(&config.resilience, &svc.name).health_check;
        Target {
            label: svc.name.clone(),
            tls: true,
            host: host.to_owned(),
            port,
            path: health
                .as_ref()
                .map_or_else(|| "/".to_owned(), |h| h.path.clone()),
            expected_id: Some(svc.spiffe_id.clone()),
            expect_body: health.and_then(|h| h.expect_body),
        }
    };
    if let Some(p) = &args.path {
        t.path = if p.starts_with('/') {
            p.clone()
        } else {
            format!("/{p}")
        };
    }
    if let Some(id) = &args.expect_id {
        t.expected_id = Some(id.clone());
    }
    Ok(t)
}

/// This proxy's client side of the mesh hop, from the identity module: the data path's own
/// client config when the expected ID is known (a wrong peer then fails in the handshake, as
/// in the data path), else one that accepts any SVID of our bundles so that the identity
/// step can say who answered.
async fn tls_client(config: &Config, expected: Option<&str>) -> Result<TlsClient, String> {
    let lifecycle = crate::lifecycle::Lifecycle::new();
    let identity = Identity::start(&config.identity, &lifecycle)
        .await
        .map_err(|e| e.to_string())?;
    let our_id = Some(identity.spiffe_id().to_string());
    let config = match expected {
        Some(id) => {
            let id: SpiffeId = id
                .parse()
                .map_err(|e| format!("expected ID {id:?} is not a SPIFFE ID: {e}"))?;
            identity.client_config(&id, &[ALPN_HTTP1])
        }
        None => {
            let verifier =
                SpiffeServerVerifier::new(identity.shared_bundles(), ExpectedPeer::AnyInBundle);
            let mut cfg =
                rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_client_cert_resolver(Arc::new(OurSvid(identity.certified_key())));
            cfg.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
            Arc::new(cfg)
        }
    };
    Ok(TlsClient { config, our_id })
}

/// Presents our SVID as the client certificate.
#[derive(Debug)]
struct OurSvid(Arc<CertifiedKey>);

impl ResolvesClientCert for OurSvid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
