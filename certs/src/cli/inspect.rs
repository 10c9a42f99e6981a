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

/// SANs of a certificate by kind: (URIs, DNS names, IP addresses).
fn sans(x: &X509Certificate<'_>) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => out.0.push((*u).to_owned()),
                GeneralName::DNSName(d) => out.1.push((*d).to_owned()),
                GeneralName::IPAddress(b) => out.2.push(match b.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                        .to_string(),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                        .to_string(),
                    _ => format!("{b:02x?}"),
                }),
                _ => {}
            }
        }
    }
    out
}

fn cert_json(i: usize, der: &CertificateDer<'_>) -> serde_json::Value {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, x)) => {
            let (uris, dns, ips) = sans(&x);
            let eku = x.extended_key_usage().ok().flatten().map(|e| {
                let mut v = Vec::new();
                if e.value.server_auth {
                    v.push("serverAuth");
                }
                if e.value.client_auth {
                    v.push("clientAuth");
                }
                v
            });
            serde_json::json!({
                "index": i,
                "is_ca": x.is_ca(),
                "subject": x.subject().to_string(),
                "issuer": x.issuer().to_string(),
                "serial": x.raw_serial_as_string(),
                "not_before": fmt_unix(x.validity().not_before.timestamp()),
                "not_after": fmt_unix(x.validity().not_after.timestamp()),
                "uris": uris,
                "dns_names": dns,
                "ip_addresses": ips,
                "extended_key_usage": eku,
            })
        }
        Err(e) => serde_json::json!({ "index": i, "error": e.to_string() }),
    }
}

/// The JSON report of one file and whether it is a valid SVID.
fn inspect_json_one(
    path: &Path,
    bundle: Option<&Path>,
) -> Result<(serde_json::Value, bool), CliError> {
    let bytes = pem::read_file(path)?;
    let chain = pem::certs(&bytes, &path.display().to_string())?;
    let report = leaf_report(&chain[0], Some(UnixTime::now()));
    let violations: Vec<serde_json::Value> = report
        .violations
        .iter()
        .map(|v| serde_json::json!({ "rule": v.rule(), "message": v.to_string() }))
        .collect();
    let mut ok = report.violations.is_empty();
    let chain_check = match bundle {
        None => serde_json::Value::Null,
        Some(b) => {
            let td = report.id.as_ref().map(SpiffeId::trust_domain);
            let set = load_bundle(b, td)?;
            let result = validate_svid(&chain, &set, UnixTime::now());
            ok &= result.is_ok();
            serde_json::json!({
                "bundle": b.display().to_string(),
                "ok": result.is_ok(),
                "error": result.err().map(|e| e.to_string()),
            })
        }
    };
    let doc = serde_json::json!({
        "file": path.display().to_string(),
        "spiffe_id": report.id.as_ref().map(|i| i.to_string()),
        "trust_domain": report.id.as_ref().map(|i| i.trust_domain().to_string()),
        "not_before": report.not_before.map(fmt_unix),
        "not_after": report.not_after.map(fmt_unix),
        "seconds_left": report.not_after.map(|na| na - now_secs()),
        "chain": chain.iter().enumerate().map(|(i, c)| cert_json(i, c)).collect::<Vec<_>>(),
        "violations": violations,
        "chain_check": chain_check,
        "valid_svid": ok,
    });
    Ok((doc, ok))
}

/// `inspect FILE...`: a report per file (or one JSON array with `json`); fails if any file is
/// not a valid SVID.
pub(crate) fn inspect(
    files: &[std::path::PathBuf],
    bundle: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let mut bad = Vec::new();
    let mut first_error = None;
    let mut docs = Vec::new();
    for f in files {
        let result = if json {
            inspect_json_one(f, bundle).map(|(doc, ok)| {
                docs.push(doc);
                ok
            })
        } else {
            inspect_one(f, bundle)
        };
        match result {
            Ok(true) => {}
            Ok(false) => bad.push(f.display().to_string()),
            // Report the first hard error at the end; inspect the other files meanwhile.
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if json && first_error.is_none() {
        let text = serde_json::to_string_pretty(&docs).unwrap_or_default();
        super::emit(&(text + "\n"))?;
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
