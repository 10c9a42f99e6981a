//! Entry points for fuzzing the code that reads untrusted bytes: the config parser, SPIFFE IDs,
//! trust bundles and X.509-SVIDs, JWT extraction and verification, protocol detection, and the
//! HTTP header handling docmesh does itself (hop-by-hop stripping, `[limits]` checks and
//! request normalisation). Each function must return normally for any input: a panic is a
//! finding. They are driven by the `cargo fuzz` targets in `proxy/fuzz/` and, over a seed
//! corpus with a small mutator, by `proxy/tests/it/fuzz_corpus.rs` in the normal test run.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_certs::{SpiffeId, TrustBundleSet, TrustDomain};
use http::{HeaderName, HeaderValue};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::authz::Authorizer;
use crate::config::authz::AuthzConfig;
use crate::limits::Limits;

/// The shared secret of the JWT target (tokens in the seed corpus are signed with it).
pub const JWT_SECRET: &str = "fuzz-secret-0123456789abcdef0123";

/// The TOML config parser, environment overrides and semantic validation.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The second half of the input (after a NUL) is read as `KEY=VALUE` override lines.
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("DOCMESH_{k}"), v.to_owned()))
        .collect();
    let _ = crate::config::Config::from_parts(Some(file), std::path::Path::new("fuzz"), vars);
}

/// SPIFFE ID and trust domain parsing (`Display` must round-trip).
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<SpiffeId>() {
        let again: SpiffeId = id
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("`{id}` does not parse back: {e}"));
        assert_eq!(again, id);
        let _ = id.trust_domain().to_string().parse::<TrustDomain>();
    }
    let _ = text.parse::<TrustDomain>();
}

struct SvidFixture {
    bundles: TrustBundleSet,
    td: TrustDomain,
}

fn svid_fixture() -> &'static SvidFixture {
    static F: OnceLock<SvidFixture> = OnceLock::new();
    F.get_or_init(|| {
        let td: TrustDomain = "example.org".parse().unwrap_or_else(|_| unreachable!());
        let ca = CertificateAuthority::generate(
            &td,
            KeyAlgorithm::EcdsaP256,
            std::time::Duration::from_secs(86400),
        )
        .unwrap_or_else(|e| panic!("fuzz fixture CA: {e}"));
        let bundles = TrustBundleSet::from_pem_auto(ca.root_cert_pem().as_bytes(), None)
            .unwrap_or_else(|e| panic!("fuzz fixture bundle: {e}"));
        SvidFixture { bundles, td }
    })
}

/// X.509-SVID validation of a DER chain (the input split in two certificates at its first
/// byte's position), and trust bundle parsing from PEM and SPIFFE JSON.
pub fn svid(data: &[u8]) {
    let f = svid_fixture();
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (a, b) = data.split_at(split);
    let chain = [
        CertificateDer::from(b.to_vec()),
        CertificateDer::from(a.to_vec()),
    ];
    let now = UnixTime::now();
    let _ = docmesh_certs::validate_svid(&chain[..1], &f.bundles, now);
    let _ = docmesh_certs::validate_svid(&chain, &f.bundles, now);
    let _ = docmesh_certs::check_leaf(&CertificateDer::from(data.to_vec()));
    let _ = TrustBundleSet::from_pem_auto(data, Some(&f.td));
    let _ = TrustBundleSet::from_spiffe_json(&f.td, data);
}

fn jwt_authorizer() -> &'static Arc<Authorizer> {
    static A: OnceLock<Arc<Authorizer>> = OnceLock::new();
    A.get_or_init(|| {
        let cfg: AuthzConfig = toml::from_str(&format!(
            "[jwt]\nenabled = true\nin_body = true\nsecret = \"{JWT_SECRET}\"\n"
        ))
        .unwrap_or_else(|e| panic!("fuzz authz config: {e}"));
        Arc::new(Authorizer::from_config(&cfg).unwrap_or_else(|e| panic!("fuzz authorizer: {e}")))
    })
}

/// JWT extraction (header and JSON body) and verification through the authorizer: the input
/// up to the first newline is the `Authorization` header value, the rest the request body.
pub fn jwt(data: &[u8]) {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut req = http::Request::post("/coauthoring/CommandService.ashx")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
        .unwrap_or_else(|_| unreachable!());
    if let Ok(v) = HeaderValue::from_bytes(header) {
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let (mut parts, body) = req.into_parts();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let _ = jwt_authorizer()
            .authorize_http(8000, None, &mut parts, body)
            .await;
    });
}

/// Protocol detection on a connection's first bytes, fed in every split.
pub fn detect(data: &[u8]) {
    let full = crate::outbound::detect::classify(data);
    for i in 0..data.len().min(32) {
        if let Some(d) = crate::outbound::detect::classify(&data[..i]) {
            // A decision made on a prefix never changes with more bytes.
            assert_eq!(
                Some(d),
                full,
                "prefix {i} decided {d:?}, whole input {full:?}"
            );
        }
    }
}

/// The header handling docmesh does itself: a request head built from `name: value` lines
/// (invalid ones skipped), then `[limits]` normalisation and checks and hop-by-hop stripping.
pub fn headers(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut builder = http::Request::builder();
    if let Ok(uri) = http::Uri::try_from(target) {
        builder = builder.uri(uri);
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = req.into_parts();
    for line in lines {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        parts.headers.append(name, value);
    }
    if parts.headers.contains_key("x-fuzz-connect") {
        parts.method = http::Method::CONNECT;
    }
    let limits = limits_fixture();
    if limits.check_request(&mut parts).is_ok() {
        assert!(parts.headers.get_all(http::header::HOST).iter().count() <= 1);
        assert!(parts.uri.authority().is_none() || parts.version == http::Version::HTTP_2);
    }
    let upgrade = {
        let mut r = http::Request::new(());
        *r.headers_mut() = parts.headers.clone();
        crate::http::is_upgrade_request(&r)
    };
    crate::http::strip_hop_by_hop(&mut parts.headers, upgrade);
    for h in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
    ] {
        assert!(
            !parts.headers.contains_key(h),
            "{h} survived hop-by-hop stripping"
        );
    }
}

fn limits_fixture() -> &'static Limits {
    static L: OnceLock<Limits> = OnceLock::new();
    L.get_or_init(|| {
        Limits::new(&crate::config::limits::LimitsConfig {
            max_headers: 20,
            max_header_bytes: 2048,
            max_uri_bytes: 512,
            ..Default::default()
        })
    })
}
