//! Probe rewriting: the app's `httpGet`, `tcpSocket` and `grpc` probes on captured ports
//! would arrive from the kubelet in plaintext and be refused by the strict inbound, so they
//! are pointed at the sidecar's admin port (`/app-health/<container>/<probe>`), which performs
//! the original probe over loopback (see the proxy's `admin::probe`).
//!
//! The originals are kept, as JSON, in the Pod annotation [`ORIGINAL_PROBES`] and handed to
//! the sidecar in `DOCMESH_APP_PROBES`; re-injecting reads them back, so injection stays
//! idempotent.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::ADMIN_PORT;
use crate::options::{InboundPorts, Options};

/// Pod annotation holding the original probe handlers (JSON, by `<container>/<probe>`).
pub const ORIGINAL_PROBES: &str = "docmesh.io/original-probes";
/// Path prefix of the sidecar's app probe endpoint.
pub const PATH_PREFIX: &str = "/app-health/";

/// The probe fields of a container and the name each gets in the sidecar's path.
const PROBES: [(&str, &str); 3] = [
    ("startupProbe", "startup"),
    ("readinessProbe", "readiness"),
    ("livenessProbe", "liveness"),
];
const HANDLERS: [&str; 3] = ["httpGet", "tcpSocket", "grpc"];

/// What rewriting did to one Pod spec.
#[derive(Debug, Default)]
pub struct Rewritten {
    /// Original handlers by `<container>/<probe>` (numeric ports), empty when none.
    pub originals: BTreeMap<String, serde_json::Value>,
    /// Probes that still go through the sidecar and will fail.
    pub warnings: Vec<String>,
}

impl Rewritten {
    /// The JSON for the annotation and `DOCMESH_APP_PROBES`, `None` when no probe was
    /// rewritten.
    pub fn json(&self) -> Option<String> {
        (!self.originals.is_empty())
            .then(|| serde_json::to_string(&self.originals).unwrap_or_default())
    }
}

/// Rewrites the probes of `spec`'s containers that target captured ports. `previous` is the
/// [`ORIGINAL_PROBES`] annotation of an earlier injection; `rewrite` false (the opt-out)
/// only reports the probes that will be refused.
pub fn rewrite(
    workload: &str,
    spec: &mut Mapping,
    options: &Options,
    previous: Option<&str>,
    rewrite: bool,
) -> Rewritten {
    let previous: BTreeMap<String, serde_json::Value> = previous
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let mut out = Rewritten::default();
    let captured = |port: u16| {
        !options.exclude_inbound_ports.contains(&port)
            && match &options.inbound_ports {
                InboundPorts::All => true,
                InboundPorts::List(l) => l.contains(&port),
            }
    };
    let Some(Value::Sequence(containers)) = spec.get_mut("containers") else {
        return out;
    };
    for c in containers {
        let cname = super::sidecar::name(c).unwrap_or("<unnamed>").to_owned();
        let ports = c.get("ports").cloned();
        for (field, probe_name) in PROBES {
            let key = format!("{cname}/{probe_name}");
            let Some(Value::Mapping(probe)) = c.get_mut(field) else {
                continue;
            };
            if is_rewritten(probe) {
                match previous.get(&key) {
                    Some(orig) => {
                        out.originals.insert(key, orig.clone());
                    }
                    None => out.warnings.push(format!(
                        "{workload}: container {cname} {field} points at the sidecar's {PATH_PREFIX} but annotation {ORIGINAL_PROBES} has no {key:?}; restore the original probe"
                    )),
                }
                continue;
            }
            let Some(handler) = HANDLERS.iter().find(|h| probe.contains_key(**h)) else {
                continue;
            };
            let Some(port) = probe
                .get(*handler)
                .and_then(|h| h.get("port"))
                .and_then(|p| port_number(p, ports.as_ref()))
            else {
                continue;
            };
            if !captured(port) {
                continue;
            }
            let h = &probe[*handler];
            let scheme_https = h.get("scheme").and_then(Value::as_str) == Some("HTTPS");
            let other_host = h.get("host").is_some();
            if !rewrite || scheme_https || other_host {
                let why = if !rewrite {
                    "probe rewriting is off (docmesh.io/rewrite-app-probes: \"false\")".to_owned()
                } else if scheme_https {
                    "HTTPS probes cannot be performed over loopback by the sidecar".to_owned()
                } else {
                    "it sets httpGet.host".to_owned()
                };
                out.warnings.push(format!(
                    "{workload}: container {cname} {field} {handler} on port {port} goes through the sidecar, which refuses the kubelet's plaintext, and was not rewritten: {why}"
                ));
                continue;
            }
            let mut original = serde_json::Map::new();
            let mut handler_json = yaml_to_json(h);
            if let Some(obj) = handler_json.as_object_mut() {
                obj.insert("port".into(), port.into());
            }
            original.insert((*handler).to_owned(), handler_json);
            if let Some(t) = probe.get("timeoutSeconds").and_then(Value::as_u64) {
                original.insert("timeoutSeconds".into(), t.into());
            }
            out.originals
                .insert(key.clone(), serde_json::Value::Object(original));
            let mut get = Mapping::new();
            get.insert("path".into(), format!("{PATH_PREFIX}{key}").into());
            get.insert("port".into(), u64::from(ADMIN_PORT).into());
            // The handler is replaced where it stood, so the probe reads as before.
            *probe = std::mem::take(probe)
                .into_iter()
                .map(|(k, v)| {
                    if k.as_str() == Some(*handler) {
                        (Value::from("httpGet"), Value::Mapping(get.clone()))
                    } else {
                        (k, v)
                    }
                })
                .collect();
        }
    }
    out
}

/// Whether a probe already points at the sidecar's app probe endpoint.
fn is_rewritten(probe: &Mapping) -> bool {
    probe.get("httpGet").is_some_and(|h| {
        h.get("port").and_then(Value::as_u64) == Some(u64::from(ADMIN_PORT))
            && h.get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with(PATH_PREFIX))
    })
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn port_number(port: &Value, ports: Option<&Value>) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(named) => ports
            .and_then(Value::as_sequence)
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|x| x.get("name").and_then(Value::as_str) == Some(named))
            })
            .and_then(|x| x.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

fn yaml_to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}
