//! Verification keys: the shared HMAC secret, OnlyOffice's per-tenant secrets
//! (`<dir>/<tenant>/secret.key`) and public keys from a JWKS file. Every key pins its
//! algorithms. Files are re-read on [`KeyStore::reload_if_changed`] (driven by a timer) and the
//! keys swapped atomically; a broken file keeps the previous keys. Key bytes are never logged.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::AuthzConfigError;

/// Largest key file read (a JWKS with many keys still fits).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Where the keys come from (the key part of `[authz.jwt]`).
#[derive(Clone, Default)]
pub struct KeySources {
    /// Inline shared secret.
    pub secret: Option<String>,
    /// File holding the shared secret.
    pub secret_file: Option<PathBuf>,
    /// OnlyOffice's per-tenant layout root.
    pub tenant_secrets_dir: Option<PathBuf>,
    /// JWKS file with public keys.
    pub jwks_file: Option<PathBuf>,
}

/// One public key from the JWKS file, pinned to one algorithm.
pub struct PublicKey {
    /// The JWK's `kid`, if any.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The key itself.
    pub key: DecodingKey,
}

/// One consistent set of keys (swapped whole on reload).
#[derive(Default)]
pub struct Keys {
    /// The shared secret (all tenants, or only the default tenant when per-tenant secrets exist).
    pub default_secret: Option<DecodingKey>,
    /// Per-tenant secrets, by tenant name.
    pub tenant_secrets: HashMap<String, DecodingKey>,
    /// Whether the per-tenant layout is configured.
    pub per_tenant: bool,
    /// Public keys from the JWKS file.
    pub public: Vec<PublicKey>,
}

impl Keys {
    /// Whether any HMAC secret exists at all (otherwise HS tokens are refused outright).
    pub fn has_secrets(&self) -> bool {
        self.default_secret.is_some() || self.per_tenant
    }

    /// The HMAC secret for `tenant`: its own file when the per-tenant layout is used, the shared
    /// secret for the default tenant (or every tenant without the per-tenant layout).
    pub fn secret_for(&self, tenant: &str, default_tenant: &str) -> Option<&DecodingKey> {
        if self.per_tenant {
            self.tenant_secrets.get(tenant).or_else(|| {
                (tenant == default_tenant)
                    .then_some(())
                    .and(self.default_secret.as_ref())
            })
        } else {
            self.default_secret.as_ref()
        }
    }
}

/// The current keys plus what is needed to reload them.
pub struct KeyStore {
    sources: KeySources,
    current: ArcSwap<Keys>,
    /// Raw file contents of the last successful load, to notice changes.
    last_raw: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
}

impl KeyStore {
    /// Loads every configured key; any unreadable or invalid file is a configuration error.
    pub fn load(sources: KeySources) -> Result<Self, AuthzConfigError> {
        let raw = read_all(&sources)?;
        let keys = build(&sources, &raw)?;
        Ok(KeyStore {
            sources,
            current: ArcSwap::from_pointee(keys),
            last_raw: Mutex::new(raw),
        })
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<Keys> {
        self.current.load_full()
    }

    /// Re-reads the key files; swaps in new keys when any file changed. Returns whether keys
    /// were swapped. On error the previous keys stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, AuthzConfigError> {
        let raw = read_all(&self.sources)?;
        let mut last = self
            .last_raw
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == raw {
            return Ok(false);
        }
        let keys = build(&self.sources, &raw)?;
        self.current.store(Arc::new(keys));
        *last = raw;
        Ok(true)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, AuthzConfigError> {
    let err = |e: std::io::Error| AuthzConfigError::KeyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(AuthzConfigError::KeyFile {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Reads every key file into memory (keyed by path) so a reload can compare contents.
fn read_all(sources: &KeySources) -> Result<BTreeMap<PathBuf, Vec<u8>>, AuthzConfigError> {
    let mut raw = BTreeMap::new();
    if let Some(p) = &sources.secret_file {
        raw.insert(p.clone(), read_file(p)?);
    }
    if let Some(p) = &sources.jwks_file {
        raw.insert(p.clone(), read_file(p)?);
    }
    if let Some(dir) = &sources.tenant_secrets_dir {
        let entries = std::fs::read_dir(dir).map_err(|e| AuthzConfigError::KeyFile {
            path: dir.clone(),
            reason: format!("cannot list the tenant secrets directory: {e}"),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(tenant) = name.to_str() else {
                continue;
            };
            if !valid_tenant_name(tenant) {
                tracing::warn!(dir = %dir.display(), tenant = ?tenant,
                    "skipping tenant directory whose name is not a valid tenant");
                continue;
            }
            let path = entry.path().join("secret.key");
            if path.is_file() {
                raw.insert(path.clone(), read_file(&path)?);
            }
        }
    }
    Ok(raw)
}

/// Tenant names as they can appear in a host name.
pub fn valid_tenant_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 253
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A secret as OnlyOffice reads it, minus a trailing line break that editors and `echo` add.
fn secret_bytes(raw: &[u8]) -> &[u8] {
    let mut s = raw;
    while let [rest @ .., b'\n' | b'\r'] = s {
        s = rest;
    }
    s
}

fn build(sources: &KeySources, raw: &BTreeMap<PathBuf, Vec<u8>>) -> Result<Keys, AuthzConfigError> {
    let mut keys = Keys::default();
    if let Some(s) = &sources.secret {
        if s.is_empty() {
            return Err(AuthzConfigError::Invalid(
                "authz.jwt.secret is empty; an empty HMAC key would accept forged tokens".into(),
            ));
        }
        keys.default_secret = Some(DecodingKey::from_secret(s.as_bytes()));
    }
    if let Some(p) = &sources.secret_file {
        let bytes = raw.get(p).map(|b| secret_bytes(b)).unwrap_or_default();
        if bytes.is_empty() {
            return Err(AuthzConfigError::KeyFile {
                path: p.clone(),
                reason: "the secret file is empty".into(),
            });
        }
        keys.default_secret = Some(DecodingKey::from_secret(bytes));
    }
    if let Some(dir) = &sources.tenant_secrets_dir {
        keys.per_tenant = true;
        for (path, bytes) in raw {
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let Some(tenant) = rel.parent().and_then(|t| t.to_str()) else {
                continue;
            };
            let secret = secret_bytes(bytes);
            if secret.is_empty() {
                tracing::warn!(path = %path.display(), "skipping empty tenant secret file");
                continue;
            }
            keys.tenant_secrets
                .insert(tenant.to_string(), DecodingKey::from_secret(secret));
        }
    }
    if let Some(p) = &sources.jwks_file {
        let bytes = raw.get(p).map(Vec::as_slice).unwrap_or_default();
        keys.public = parse_jwks(bytes).map_err(|reason| AuthzConfigError::KeyFile {
            path: p.clone(),
            reason,
        })?;
    }
    Ok(keys)
}

/// Parses a JWKS document into algorithm-pinned public keys. Symmetric (`oct`) keys are refused:
/// shared secrets belong in the secret files, never beside public keys.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<PublicKey>, String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON JWKS document: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS document needs a \"keys\" array")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, jwk) in list.iter().enumerate() {
        let key = parse_jwk(jwk).map_err(|e| format!("key #{i}: {e}"))?;
        out.push(key);
    }
    Ok(out)
}

fn parse_jwk(jwk: &Value) -> Result<PublicKey, String> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let need = |name: &str| s(name).ok_or(format!("missing \"{name}\""));
    let kty = need("kty")?;
    let declared: Option<Algorithm> = match s("alg") {
        Some(a) => Some(
            a.parse()
                .map_err(|_| format!("unsupported \"alg\": {a:?}"))?,
        ),
        None => None,
    };
    let (alg, key) = match kty {
        "RSA" => {
            let alg = declared.ok_or(
                "an RSA key needs \"alg\" (RS256, RS384, RS512, PS256, PS384 or PS512) to pin it",
            )?;
            let key = DecodingKey::from_rsa_components(need("n")?, need("e")?)
                .map_err(|e| format!("bad RSA components: {e}"))?;
            (alg, key)
        }
        "EC" => {
            let by_curve = match need("crv")? {
                "P-256" => Algorithm::ES256,
                "P-384" => Algorithm::ES384,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let key = DecodingKey::from_ec_components(need("x")?, need("y")?)
                .map_err(|e| format!("bad EC coordinates: {e}"))?;
            if declared.is_some_and(|d| d != by_curve) {
                return Err(format!(
                    "\"alg\" does not match the curve (expected {by_curve:?})"
                ));
            }
            (by_curve, key)
        }
        "OKP" => {
            if need("crv")? != "Ed25519" {
                return Err("only the Ed25519 curve is supported for OKP keys".into());
            }
            let key = DecodingKey::from_ed_components(need("x")?)
                .map_err(|e| format!("bad Ed25519 key: {e}"))?;
            (declared.unwrap_or(Algorithm::EdDSA), key)
        }
        "oct" => {
            return Err(
                "symmetric (oct) keys are refused in the JWKS file; use authz.jwt.secret_file"
                    .into(),
            )
        }
        other => return Err(format!("unsupported key type {other:?}")),
    };
    if alg.family() != key.family() {
        return Err(format!(
            "\"alg\" {alg:?} does not fit a key of type {kty}; the algorithm must match the key"
        ));
    }
    Ok(PublicKey {
        kid: s("kid").map(str::to_string),
        alg,
        key,
    })
}
