//! `inspect` and `verify`.

use std::path::Path;

use docmesh_certs::bundle::TrustBundleSet;
use docmesh_certs::pem;
use docmesh_certs::spiffe_id::{SpiffeId, TrustDomain};
use docmesh_certs::svid::{fmt_unix, leaf_report, validate_svid, SvidError, X509Svid};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::CliError;

/// Loads a bundle file: SPIFFE JSON if it starts with `{`, else PEM. Roots without a
/// `spiffe://td` URI SAN (and JSON bundles) belong to `td`.
fn load_bundle(path: &Path, td: Option<&TrustDomain>) -> Result<TrustBundleSet, CliError> {
    let bytes = pem::read_file(path)?;
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_json {
        let td = td.ok_or_else(|| {
            CliError::Invalid(format!(
                "{}: a SPIFFE JSON bundle does not name its trust domain; pass --trust-domain",
                path.display()
            ))
        })?;
        Ok(TrustBundleSet::from_spiffe_json(td, &bytes)?)
    } else {
        Ok(TrustBundleSet::from_pem_auto(&bytes, td)?)
    }
}

fn now_secs() -> i64 {
    i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX)
}

fn human(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

fn time_left(not_before: i64, not_after: i64) -> String {
    let now = now_secs();
    if now < not_before {
        format!("not yet valid (starts in {})", human(not_before - now))
    } else if now > not_after {
        format!("expired {} ago", human(now - not_after))
    } else {
        format!("{} left", human(not_after - now))
    }
}

fn describe(i: usize, der: &CertificateDer<'_>) -> String {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, x)) => {
            let uris: Vec<String> = x
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|s| {
                    s.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::URI(u) => Some((*u).to_owned()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "[{i}] {}{} subject=\"{}\" issuer=\"{}\" serial={}",
                if x.is_ca() { "CA" } else { "leaf" },
                if uris.is_empty() {
                    String::new()
                } else {
                    format!(" {}", uris.join(","))
                },
                x.subject(),
                x.issuer(),
                x.raw_serial_as_string()
            )
        }
        Err(e) => format!("[{i}] unparseable certificate: {e}"),
    }
}

/// Prints the report of one file; returns whether it is a valid SVID.
fn inspect_one(path: &Path, bundle: Option<&Path>) -> Result<bool, CliError> {
    let bytes = pem::read_file(path)?;
    let chain = pem::certs(&bytes, &path.display().to_string())?;
    let leaf = &chain[0];
    let report = leaf_report(leaf, Some(UnixTime::now()));
    println!("{}:", path.display());
    match &report.id {
        Some(id) => {
            println!("  SPIFFE ID:    {id}");
            println!("  trust domain: {}", id.trust_domain());
        }
        None => println!("  SPIFFE ID:    (none)"),
    }
    if let Ok((_, x)) = X509Certificate::from_der(leaf.as_ref()) {
        println!("  serial:       {}", x.raw_serial_as_string());
        println!("  subject:      {}", x.subject());
        println!("  issuer:       {}", x.issuer());
    }
    if let (Some(nb), Some(na)) = (report.not_before, report.not_after) {
        println!("  not before:   {}", fmt_unix(nb));
        println!("  not after:    {}", fmt_unix(na));
        println!("  time left:    {}", time_left(nb, na));
    }
    println!("  chain:");
    for (i, c) in chain.iter().enumerate() {
        println!("    {}", describe(i, c));
    }
    let mut ok = report.violations.is_empty();
    if ok {
        println!("  rules:        all X.509-SVID leaf rules hold");
    } else {
        println!("  rules broken:");
        for v in &report.violations {
            println!("    - {v}");
        }
    }
    if let Some(b) = bundle {
        let td = report.id.as_ref().map(SpiffeId::trust_domain);
        let set = load_bundle(b, td)?;
        match validate_svid(&chain, &set, UnixTime::now()) {
            Ok(_) => println!("  chain check:  verifies to {}", b.display()),
            Err(e) => {
                ok = false;
                println!("  chain check:  {e}");
            }
        }
    }
    println!(
        "  result:       {}",
        if ok {
            "valid X.509-SVID"
        } else {
            "NOT a valid X.509-SVID"
        }
    );
    Ok(ok)
}

/// `inspect FILE...`: a report per file; fails if any file is not a valid SVID.
pub(crate) fn inspect(files: &[std::path::PathBuf], bundle: Option<&Path>) -> Result<(), CliError> {
    let mut bad = Vec::new();
    let mut first_error = None;
    for f in files {
        match inspect_one(f, bundle) {
            Ok(true) => {}
            Ok(false) => bad.push(f.display().to_string()),
            // Report the first hard error at the end; inspect the other files meanwhile.
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if bad.is_empty() => Ok(()),
        None => Err(CliError::Invalid(format!(
            "not a valid X.509-SVID: {}",
            bad.join(", ")
        ))),
    }
}

/// `verify --bundle B [--expect-id ID] SVID`.
pub(crate) fn verify(
    bundle: &Path,
    td: Option<&TrustDomain>,
    expect: Option<&SpiffeId>,
    key: Option<&Path>,
    svid: &Path,
) -> Result<(), CliError> {
    let bytes = pem::read_file(svid)?;
    let chain = pem::certs(&bytes, &svid.display().to_string())?;
    if let Some(key) = key {
        X509Svid::load(svid, key)?;
    }
    let own_td = leaf_report(&chain[0], None)
        .id
        .map(|id| id.trust_domain().clone());
    let set = load_bundle(bundle, td.or(own_td.as_ref()))?;
    let id = validate_svid(&chain, &set, UnixTime::now())
        .map_err(|e| CliError::Invalid(format!("{}: {e}", svid.display())))?;
    if let Some(want) = expect {
        if *want != id {
            let e = SvidError::IdentityMismatch {
                expected: want.clone(),
                got: id,
            };
            return Err(CliError::Invalid(format!("{}: {e}", svid.display())));
        }
    }
    let report = leaf_report(&chain[0], None);
    let left = match (report.not_before, report.not_after) {
        (Some(nb), Some(na)) => time_left(nb, na),
        _ => String::new(),
    };
    println!(
        "valid X.509-SVID {id} (trust domain {}, {left})",
        id.trust_domain()
    );
    Ok(())
}
