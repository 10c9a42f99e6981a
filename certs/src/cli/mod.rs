//! Command-line interface of `docmesh-certs`.

mod inspect;
mod issue;
mod renew;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use docmesh_certs::ca::{CaError, CertificateAuthority, KeyAlgorithm};
use docmesh_certs::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Development CA and X.509-SVID tool for docmesh.
#[derive(Debug, Parser)]
#[command(name = "docmesh-certs", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Issue X.509-SVIDs: one (--spiffe-id) or every line of a list file (--from).
    Issue {
        /// CA directory written by `init`.
        #[arg(long, default_value = ".")]
        ca: PathBuf,
        /// The SPIFFE ID to issue.
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        spiffe_id: Option<String>,
        /// List file: one `spiffe-id [out-subdir]` per line (# comments). The subdir defaults
        /// to the ID's last path segment.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Lifetime of each SVID (e.g. 24h); must end before the CA expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Output directory (for --from: the parent of the per-SVID subdirectories).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
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
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Invalid(msg)) => {
            eprintln!("invalid: {msg}");
            ExitCode::from(1)
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
            ttl,
            out,
            force,
        } => {
            let ttl = parse_duration("--ttl", &ttl)?;
            let ca = CertificateAuthority::load_dir(&ca, None)?;
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
        Cmd::Inspect { files, bundle } => inspect::inspect(&files, bundle.as_deref()),
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

pub(crate) fn fmt_time(t: time::OffsetDateTime) -> String {
    docmesh_certs::svid::fmt_unix(t.unix_timestamp())
}
