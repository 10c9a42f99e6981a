//! The `docmesh-proxy diagnose` subcommand: arguments, target lookup in the config, this
//! proxy's TLS client, and the printed report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::{diagnose, DiagnoseError, Target, Timeouts, TlsClient};
use crate::config::outbound::split_host_port;
use crate::config::Config;

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
    let config = match Config::load(Some(&args.config)) {
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
        match tls_client(&config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("docmesh-proxy diagnose: cannot load this proxy's SVID: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let timeouts = Timeouts {
        connect: config.outbound.connect_timeout,
        handshake: config.outbound.handshake_timeout,
        ..Timeouts::default()
    };
    let report = rt.block_on(diagnose(&target, tls.as_ref(), &timeouts));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
        Target {
            label: svc.name.clone(),
            tls: true,
            host: host.to_owned(),
            port,
            path: "/".to_owned(),
            expected_id: Some(svc.spiffe_id.clone()),
            expect_body: None,
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

/// This proxy's client side of the mesh hop: its SVID, its bundles, any trusted peer ID (the
/// identity step then compares the peer's ID with the expected one).
fn tls_client(config: &Config) -> Result<TlsClient, String> {
    use docmesh_certs::tls::{ExpectedPeer, SpiffeServerVerifier};
    use docmesh_certs::{TrustBundleSet, X509Svid};

    let id = &config.identity;
    let svid = X509Svid::load(&id.cert, &id.key).map_err(|e| e.to_string())?;
    let bundles = TrustBundleSet::load_pem_file(&id.bundle, None).map_err(|e| e.to_string())?;
    let verifier = SpiffeServerVerifier::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(bundles)),
        ExpectedPeer::AnyInBundle,
    );
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(svid.chain.clone(), svid.key.clone_key())
        .map_err(|e| format!("the SVID's key does not fit its certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsClient {
        config: Arc::new(cfg),
        our_id: Some(svid.id.to_string()),
    })
}
