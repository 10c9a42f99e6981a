//! Exporting trust bundles for other tools: SPIFFE bundle JSON (a JWK Set with `"use":
//! "x509-svid"` keys carrying `x5c`, as SPIRE serves it for federation).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Map, Value};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Why a certificate cannot be put into a SPIFFE bundle.
#[derive(Debug, thiserror::Error)]
#[error("root #{index} cannot be exported as a JWK: {reason}")]
pub struct ExportError {
    /// Position of the root in the bundle.
    pub index: usize,
    /// What is wrong.
    pub reason: String,
}

/// Refresh hint written into exported bundles (seconds).
pub const REFRESH_HINT_SECS: u64 = 300;

/// The JWK (public key parameters, `use`, `x5c`) of one CA certificate.
fn jwk(index: usize, der: &CertificateDer<'_>) -> Result<Value, ExportError> {
    let err = |reason: String| ExportError { index, reason };
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| err(e.to_string()))?;
    let spki = x.public_key();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let mut k = Map::new();
    k.insert("use".into(), "x509-svid".into());
    match spki.parsed().map_err(|e| err(e.to_string()))? {
        PublicKey::EC(point) => {
            let p = point.data();
            let crv = match p.len() {
                65 => "P-256",
                97 => "P-384",
                133 => "P-521",
                n => return Err(err(format!("unsupported EC point of {n} bytes"))),
            };
            if p[0] != 4 {
                return Err(err("compressed EC points are not supported".to_owned()));
            }
            let half = (p.len() - 1) / 2;
            k.insert("kty".into(), "EC".into());
            k.insert("crv".into(), crv.into());
            k.insert("x".into(), b64(&p[1..=half]).into());
            k.insert("y".into(), b64(&p[1 + half..]).into());
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            k.insert("kty".into(), "RSA".into());
            k.insert("n".into(), b64(&strip(rsa.modulus)).into());
            k.insert("e".into(), b64(&strip(rsa.exponent)).into());
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            k.insert("kty".into(), "OKP".into());
            k.insert("crv".into(), "Ed25519".into());
            k.insert("x".into(), b64(&spki.subject_public_key.data).into());
        }
        _ => return Err(err("unsupported public key algorithm".to_owned())),
    }
    k.insert("x5c".into(), json!([STANDARD.encode(der.as_ref())]));
    Ok(Value::Object(k))
}

/// The roots as SPIFFE bundle JSON with `spiffe_sequence` `sequence`.
pub fn spiffe_bundle_json(
    roots: &[CertificateDer<'_>],
    sequence: u64,
) -> Result<String, ExportError> {
    let keys = roots
        .iter()
        .enumerate()
        .map(|(i, c)| jwk(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = json!({
        "keys": keys,
        "spiffe_refresh_hint": REFRESH_HINT_SECS,
        "spiffe_sequence": sequence,
    });
    Ok(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bundle::TrustBundleSet;
    use crate::ca::{CertificateAuthority, KeyAlgorithm};

    #[test]
    fn every_algorithm_round_trips_through_the_bundle_parser() {
        let td = "export.test".parse().unwrap();
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa3072,
        ] {
            let ca = CertificateAuthority::generate(&td, alg, Duration::from_secs(3600)).unwrap();
            let json = spiffe_bundle_json(std::slice::from_ref(ca.root_cert_der()), 7).unwrap();
            let v: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["spiffe_sequence"], 7);
            let kty = v["keys"][0]["kty"].as_str().unwrap().to_owned();
            assert_eq!(
                kty,
                match alg {
                    KeyAlgorithm::EcdsaP256 => "EC",
                    KeyAlgorithm::Ed25519 => "OKP",
                    KeyAlgorithm::Rsa3072 => "RSA",
                }
            );
            let set = TrustBundleSet::from_spiffe_json(&td, json.as_bytes()).unwrap();
            assert_eq!(
                set.roots(&td).unwrap().certs(),
                [ca.root_cert_der().clone()]
            );
        }
    }
}
