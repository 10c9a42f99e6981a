//! Command-line interface of `docmesh-certs`.

mod export;
mod inspect;
mod issue;
mod renew;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use docmesh_certs::ca::{CaError, CertificateAuthority, KeyAlgorithm};
use docmesh_certs::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The quick start `docmesh-certs` prints without arguments.
const QUICK_START: &str = "\
docmesh-certs init --trust-domain onlyoffice.local --out ca
docmesh-certs issue --ca ca --spiffe-id spiffe://onlyoffice.local/ns/onlyoffice/sa/docservice --out svid
docmesh-certs renew --ca ca --dir svid --watch    # (docmesh-certs --help for everything)";

/// docmesh-certs: the development certificate authority of docmesh. It creates a CA, issues
/// SPIFFE X.509-SVIDs for the sidecars and ordinary TLS certificates (DNS names, IPs) for
/// ingresses and non-mesh apps, renews SVIDs before they expire, exports the CA (PEM, SPIFFE
/// bundle JSON) and inspects or verifies certificates.
#[derive(Debug, Parser)]
#[command(name = "docmesh-certs", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a development CA (root, optionally an intermediate) in --out.
    Init {
        /// Trust domain, e.g. onlyoffice.local.
        #[arg(long)]
        trust_domain: String,
        /// Directory for root.pem, root.key, bundle.pem (and intermediate.*).
        #[arg(long)]
        out: PathBuf,
        /// Key algorithm: ecdsa-p256, ed25519 or rsa-3072.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        /// Validity of the root CA (e.g. 365d).
        #[arg(long, default_value = "365d")]
        validity: String,
        /// Also create an intermediate CA that signs the SVIDs.
        #[arg(long)]
        intermediate: bool,
        /// Validity of the intermediate (capped at the root's).
        #[arg(long, default_value = "90d")]
        intermediate_validity: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue X.509-SVIDs (one with --spiffe-id, or every line of --from) or an ordinary TLS
    /// certificate (--dns / --ip).
    #[command(group(clap::ArgGroup::new("subject").required(true).multiple(true)
        .args(["spiffe_id", "from", "dns", "ip"])))]
    Issue {
        /// CA directory written by `init`.
        #[arg(long)]
        ca: PathBuf,
        /// The SPIFFE ID to issue an SVID for.
        #[arg(long, conflicts_with_all = ["from", "dns", "ip"])]
        spiffe_id: Option<String>,
        /// List file: one `spiffe-id [out-subdir]` per line (# comments). The subdir defaults
        /// to the ID's last path segment.
        #[arg(long, conflicts_with_all = ["dns", "ip"])]
        from: Option<PathBuf>,
        /// DNS name of an ordinary TLS certificate (repeatable; `*.example` allowed).
        #[arg(long)]
        dns: Vec<String>,
        /// IP address of an ordinary TLS certificate (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Ordinary TLS certificate: extended key usage serverAuth (the default).
        #[arg(long)]
        server: bool,
        /// Ordinary TLS certificate: extended key usage clientAuth (with --server: both).
        #[arg(long)]
        client: bool,
        /// Lifetime of each certificate (e.g. 24h); must end before the CA expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Output directory (for --from: the parent of the per-SVID subdirectories). SVIDs:
        /// svid.pem, svid.key, bundle.pem; TLS certificates: tls.crt, tls.key, ca.crt.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Export the CA's trust bundle (every root in CA_DIR/bundle.pem) as PEM, for apps that
    /// need a CA file (NODE_EXTRA_CA_CERTS, curl --cacert), or as SPIFFE bundle JSON.
    Export {
        /// CA directory written by `init`.
        #[arg(long)]
        ca: PathBuf,
        /// pem, or spiffe-json (JWK Set as SPIRE federates).
        #[arg(long, default_value = "pem", value_parser = ["pem", "spiffe-json"])]
        format: String,
        /// Write here instead of to stdout (replaced atomically, mode 0644).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Renew every SVID under --dir (as `issue` wrote them) once a share of its lifetime has
    /// passed; with --watch, keep doing so until SIGTERM.
    Renew {
        /// CA directory written by `init` (its bundle.pem is copied next to every SVID).
        #[arg(long)]
        ca: PathBuf,
        /// Directory searched (recursively) for svid.pem/svid.key/bundle.pem triples.
        #[arg(long)]
        dir: PathBuf,
        /// Renew once this share of an SVID's lifetime has passed (0 < x <= 1).
        #[arg(long, default_value_t = docmesh_certs::renew::DEFAULT_RENEW_AT)]
        renew_at: f64,
        /// Lifetime of renewed SVIDs (default: each SVID's previous lifetime), capped by the CA.
        #[arg(long)]
        ttl: Option<String>,
        /// Keep running: check every --interval until SIGTERM or SIGINT (exit 0).
        #[arg(long)]
        watch: bool,
        /// Time between checks with --watch.
        #[arg(long, default_value = "30s", requires = "watch")]
        interval: String,
    },
    /// Show SPIFFE ID, validity, chain and every broken rule of certificate files.
    Inspect {
        /// PEM files (a chain: leaf first).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also verify the chain against this bundle (PEM or SPIFFE JSON).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Print one JSON document (an array, one object per file) instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Verify an SVID against a trust bundle; exit 0 only if it is valid.
    Verify {
        /// Trust bundle: PEM (trust domain from each CA's URI SAN, else --trust-domain, else
        /// the SVID's) or SPIFFE bundle JSON.
        #[arg(long)]
        bundle: PathBuf,
        /// Trust domain for bundle roots that do not name one.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Require exactly this SPIFFE ID.
        #[arg(long)]
        expect_id: Option<String>,
        /// Also check that this private key matches the SVID.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The SVID PEM file (leaf first, then intermediates).
        svid: PathBuf,
    },
}

/// Everything that can make a command fail; messages are shown to the operator as-is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Pem(#[from] docmesh_certs::pem::PemError),
    #[error(transparent)]
    Bundle(#[from] docmesh_certs::bundle::BundleError),
    #[error(transparent)]
    Svid(#[from] docmesh_certs::svid::X509SvidError),
    #[error("invalid {what} {value:?}: {source}")]
    Id {
        what: &'static str,
        value: String,
        source: SpiffeIdError,
    },
    #[error("invalid duration {value:?} for {what}: {reason} (examples: 90s, 24h, 365d)")]
    Duration {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{file}:{line}: {reason}")]
    List {
        file: String,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Renew(#[from] docmesh_certs::renew::RenewError),
    #[error("cannot handle signals: {0}")]
    Signal(String),
    /// Some of several items failed (each was reported already).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Export(#[from] docmesh_certs::export::ExportError),
    #[error(transparent)]
    Replace(#[from] docmesh_certs::renew::ReplaceError),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    /// A combination of arguments clap cannot express.
    #[error("{0}")]
    Usage(String),
    /// Not an error of the tool: the certificate is not valid (report already printed).
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn parse_id(what: &'static str, s: &str) -> Result<SpiffeId, CliError> {
    s.parse().map_err(|source| CliError::Id {
        what,
        value: s.to_owned(),
        source,
    })
}

fn parse_td(s: &str) -> Result<TrustDomain, CliError> {
    s.parse().map_err(|source| CliError::Id {
        what: "trust domain",
        value: s.to_owned(),
        source,
    })
}

fn parse_duration(what: &'static str, s: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(s).map_err(|e| CliError::Duration {
        what,
        value: s.to_owned(),
        reason: e.to_string(),
    })
}

pub fn main() -> ExitCode {
    let Some(cmd) = Cli::parse().cmd else {
        println!("{QUICK_START}");
        return ExitCode::SUCCESS;
    };
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Invalid(msg)) => {
            eprintln!("invalid: {msg}");
            ExitCode::from(1)
        }
        Err(CliError::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Init {
            trust_domain,
            out,
            algorithm,
            validity,
            intermediate,
            intermediate_validity,
            force,
        } => {
            let td = parse_td(&trust_domain)?;
            let alg: KeyAlgorithm = algorithm.parse()?;
            let validity = parse_duration("--validity", &validity)?;
            let mut ca = CertificateAuthority::generate(&td, alg, validity)?;
            if intermediate {
                ca.add_intermediate(parse_duration(
                    "--intermediate-validity",
                    &intermediate_validity,
                )?)?;
            }
            let written = ca.write_to(&out, force)?;
            println!(
                "created {alg} CA for trust domain {td} (valid until {})",
                fmt_time(ca.not_after())
            );
            for p in written {
                println!("  {}", p.display());
            }
            Ok(())
        }
        Cmd::Issue {
            ca,
            spiffe_id,
            from,
            dns,
            ip,
            server,
            client,
            ttl,
            out,
            force,
        } => {
            let ttl_text = ttl;
            let ttl = parse_duration("--ttl", &ttl_text)?;
            let ca_dir = ca;
            let ca = CertificateAuthority::load_dir(&ca_dir, None)?;
            if !dns.is_empty() || !ip.is_empty() {
                let req = docmesh_certs::ca::TlsCertRequest {
                    dns_names: dns,
                    ips: ip,
                    server,
                    client,
                };
                let bundle = docmesh_certs::renew::ca_bundle_pem(&ca_dir, &ca)?;
                return issue::issue_tls(&ca, &req, ttl, &bundle, &out, force);
            }
            if server || client {
                return Err(CliError::Usage(
                    "--server/--client apply to ordinary TLS certificates (--dns/--ip); \
                     SVIDs always carry both"
                        .to_owned(),
                ));
            }
            let jobs = match (spiffe_id, from) {
                (Some(id), _) => vec![(parse_id("--spiffe-id", &id)?, out)],
                (None, Some(list)) => issue::read_list(&list)?
                    .into_iter()
                    .map(|(id, sub)| (id, out.join(sub)))
                    .collect(),
                (None, None) => Vec::new(), // clap requires one of them
            };
            issue::issue_all(&ca, &jobs, ttl, force)
        }
        Cmd::Export { ca, format, out } => export::export(&ca, &format, out.as_deref()),
        Cmd::Renew {
            ca,
            dir,
            renew_at,
            ttl,
            watch,
            interval,
        } => {
            let policy = docmesh_certs::renew::RenewPolicy {
                renew_at,
                ttl: ttl.map(|t| parse_duration("--ttl", &t)).transpose()?,
            };
            if !(renew_at > 0.0 && renew_at <= 1.0) {
                return Err(docmesh_certs::renew::RenewError::BadRenewAt(renew_at).into());
            }
            if watch {
                let interval = parse_duration("--interval", &interval)?;
                if interval.is_zero() {
                    return Err(CliError::Duration {
                        what: "--interval",
                        value: "0".to_owned(),
                        reason: "must be positive".to_owned(),
                    });
                }
                renew::watch(&ca, &dir, &policy, interval)
            } else {
                renew::once(&ca, &dir, &policy)
            }
        }
        Cmd::Inspect {
            files,
            bundle,
            json,
        } => inspect::inspect(&files, bundle.as_deref(), json),
        Cmd::Verify {
            bundle,
            trust_domain,
            expect_id,
            key,
            svid,
        } => {
            let td = trust_domain.as_deref().map(parse_td).transpose()?;
            let expect = expect_id
                .as_deref()
                .map(|s| parse_id("--expect-id", s))
                .transpose()?;
            inspect::verify(&bundle, td.as_ref(), expect.as_ref(), key.as_deref(), &svid)
        }
    }
}

/// Writes a document (JSON, PEM) to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}

pub(crate) fn fmt_time(t: time::OffsetDateTime) -> String {
    docmesh_certs::svid::fmt_unix(t.unix_timestamp())
}
