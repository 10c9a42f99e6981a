//! The proxy's configuration: one TOML file, every field defaulted, every field overridable
//! from the environment, unknown fields rejected with the exact field path.
//!
//! Each section lives in its own module; this module owns loading, environment overrides and
//! validation (`docmesh-proxy check`). The format is documented in `docs/config.md`.
//!
//! Environment overrides: `DOCMESH_<SECTION>__<FIELD>`, nested with `__`, array elements by
//! index (`DOCMESH_OUTBOUND__SERVICES__0__SPIFFE_ID=spiffe://td/x`). A value is read as a
//! TOML literal when it is one (`true`, `5`, `[1, 2]`, `"quoted"`), else as a string; a field
//! that the file already sets to a string always takes the raw text.

pub mod admin;
pub mod authz;
mod env;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod observability;
pub mod otlp;
pub mod outbound;
pub mod ratelimit;
pub mod resilience;
pub mod routing;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use env::ENV_PREFIX;

/// The whole proxy configuration (the root of the TOML file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the proxy's SVID and trust bundles come from.
    pub identity: identity::IdentityConfig,
    /// The admin server (`/live`, `/ready`, `/metrics`, `/certs`, `/shutdown`).
    pub admin: admin::AdminConfig,
    /// Traffic arriving for the local app.
    pub inbound: inbound::InboundConfig,
    /// Traffic the local app sends to other services.
    pub outbound: outbound::OutboundConfig,
    /// Trace headers, the access log and metrics.
    pub observability: observability::ObservabilityConfig,
    /// Who may call the local app: SPIFFE ID rules, JWT and tenant permissions.
    pub authz: authz::AuthzConfig,
    /// Timeouts, retries, circuit breaking, limits, balancing and health checks.
    pub resilience: resilience::ResilienceConfig,
    /// Limits against hostile or broken clients (header sizes, timeouts, connections).
    pub limits: limits::LimitsConfig,
}

/// One problem in the configuration, with the exact field path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `outbound.services[0].spiffe_id` (empty for the whole file).
    pub path: String,
    /// What is wrong and what to check.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A list of problems, collected so that `check` can report all of them at once.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source} (check the path given to --config)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// One or more fields are invalid (file or environment).
    #[error("{} problem(s) in the configuration:\n  {}", .0.len(), join(.0))]
    Invalid(Vec<Problem>),
}

fn join(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    lines.join("\n  ")
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies `DOCMESH_*` overrides from the
    /// process environment and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_checked(path, &|_, _| {})
    }

    /// Like [`Config::load`], with more validation from the layers above (see
    /// [`Config::from_parts_checked`]).
    pub fn load_checked(
        path: Option<&Path>,
        more: &dyn Fn(&Config, &mut Problems),
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        let name = path.unwrap_or(Path::new("<defaults>"));
        Self::from_parts_checked(text.as_deref(), name, std::env::vars(), more)
    }

    /// Like [`Config::load`] with the file text and the environment given explicitly.
    pub fn from_parts(
        text: Option<&str>,
        name: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_parts_checked(text, name, vars, &|_, _| {})
    }

    /// Like [`Config::from_parts`], with `more` run after this module's own validation so that
    /// the layers above (which build runtime objects from the configuration, such as the
    /// authorizer reading its key files) report their problems in the same list; see
    /// `crate::check`.
    pub fn from_parts_checked(
        text: Option<&str>,
        name: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
        more: &dyn Fn(&Config, &mut Problems),
    ) -> Result<Config, ConfigError> {
        let mut root = match text {
            Some(t) => toml::from_str::<toml::Table>(t).map_err(|e| ConfigError::Syntax {
                path: name.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?,
            None => toml::Table::new(),
        };
        let mut problems = Problems::default();
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let otel = otlp::apply_otel_env(&mut root, &vars, &mut problems);
        let mut origins = env::apply(&mut root, vars, &mut problems);
        origins.add(otel);
        let config = deserialize_all(toml::Value::Table(root), &origins, &mut problems);
        if let Some(c) = &config {
            // Semantic checks also run when some fields were dropped for being malformed; a
            // dropped field is not reported twice.
            let mut semantic = Problems::default();
            c.validate(&mut semantic);
            more(c, &mut semantic);
            for mut p in semantic.0 {
                if let Some(var) = origins.var_for(&p.path) {
                    p.message = format!("{} (set by environment variable {var})", p.message);
                }
                let reported = problems.0.iter().any(|q| {
                    !q.path.is_empty()
                        && (p.path == q.path
                            || p.path.starts_with(&format!("{}.", q.path))
                            || p.path.starts_with(&format!("{}[", q.path)))
                });
                if !reported {
                    problems.0.push(p);
                }
            }
        }
        match config {
            Some(c) if problems.0.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid(problems.0)),
        }
    }

    /// Semantic validation of a deserialized configuration.
    pub fn validate(&self, p: &mut Problems) {
        self.identity.validate(p);
        self.inbound.validate(p);
        self.outbound.validate(p);
        self.resilience.validate_into(&self.outbound, p);
        self.observability.validate(p);
        self.limits.validate(p);
        // No two listeners on the same address (port 0 means "any free port").
        let mut seen: Vec<(SocketAddr, String)> = Vec::new();
        let mut listen = |addr: SocketAddr, path: String, p: &mut Problems| {
            if addr.port() == 0 {
                return;
            }
            if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
                p.push(path, format!("address {addr} is already used by {other}"));
            } else {
                seen.push((addr, path));
            }
        };
        listen(self.admin.listen, "admin.listen".into(), p);
        if self.inbound.transparent {
            listen(self.inbound.listen, "inbound.listen".into(), p);
        }
        if self.outbound.transparent {
            listen(self.outbound.listen, "outbound.listen".into(), p);
        }
        for (i, port) in self.inbound.ports.iter().enumerate() {
            listen(port.listen, format!("inbound.ports[{i}].listen"), p);
        }
        for (i, l) in self.outbound.listeners.iter().enumerate() {
            listen(l.listen, format!("outbound.listeners[{i}].listen"), p);
        }
    }
}

/// Deserializes `value`, collecting every field error: after each error the offending field is
/// removed (so its default applies) and deserialization is retried. Returns the configuration
/// without the malformed fields (for semantic checks), or `None` when an error could not be
/// isolated.
fn deserialize_all(
    mut value: toml::Value,
    origins: &env::Origins,
    problems: &mut Problems,
) -> Option<Config> {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(c) => return Some(c),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = e.inner().to_string();
                // toml appends "\nin `section`"; the path already says where.
                let message = message.lines().next().unwrap_or_default().trim_end();
                let ends_with_field = |f: &str| {
                    matches!(e.path().iter().next_back(),
                        Some(serde_path_to_error::Segment::Map { key }) if key == f)
                };
                let (field_path, removed) = match unknown_field(message) {
                    Some(field) if !ends_with_field(field) => {
                        let full = if path.is_empty() {
                            field.to_owned()
                        } else {
                            format!("{path}.{field}")
                        };
                        let removed = remove_at(&mut value, e.path(), Some(field));
                        (full, removed)
                    }
                    _ => (path.clone(), remove_at(&mut value, e.path(), None)),
                };
                let message = match origins.var_for(&field_path) {
                    Some(var) => format!("{message} (set by environment variable {var})"),
                    None => message.to_owned(),
                };
                problems.push(field_path, message);
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(f, _)| f)
}

/// Removes the value at `path` (or the key `field` inside it); false when nothing was removed.
fn remove_at(
    value: &mut toml::Value,
    path: &serde_path_to_error::Path,
    field: Option<&str>,
) -> bool {
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = path.iter().collect();
    let (parent_segs, last): (&[&Segment], Option<String>) = match field {
        Some(f) => (&segs[..], Some(f.to_owned())),
        None => match segs.split_last() {
            Some((Segment::Map { key }, rest)) => (rest, Some(key.clone())),
            Some((Segment::Seq { index }, rest)) => {
                let mut cur = &mut *value;
                for s in rest {
                    match step(cur, s) {
                        Some(n) => cur = n,
                        None => return false,
                    }
                }
                return match cur {
                    toml::Value::Array(a) if *index < a.len() => {
                        a.remove(*index);
                        true
                    }
                    _ => false,
                };
            }
            _ => return false,
        },
    };
    let mut cur = value;
    for s in parent_segs {
        match step(cur, s) {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (cur, last) {
        (toml::Value::Table(t), Some(k)) => t.remove(&k).is_some(),
        _ => false,
    }
}

fn step<'a>(
    v: &'a mut toml::Value,
    s: &serde_path_to_error::Segment,
) -> Option<&'a mut toml::Value> {
    use serde_path_to_error::Segment;
    match (v, s) {
        (toml::Value::Table(t), Segment::Map { key }) => t.get_mut(key),
        (toml::Value::Array(a), Segment::Seq { index }) => a.get_mut(*index),
        _ => None,
    }
}

/// Checks a workload SPIFFE ID with the certs library's strict parser.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), String> {
    let parsed: docmesh_certs::SpiffeId = id
        .parse()
        .map_err(|e| format!("`{id}` is not a valid SPIFFE ID: {e}"))?;
    if parsed.is_trust_domain_id() {
        return Err(format!(
            "`{id}` is a trust domain ID; a workload ID needs a path (spiffe://{}/...)",
            parsed.trust_domain().as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
