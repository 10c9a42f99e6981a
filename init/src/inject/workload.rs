//! Where the Pod template lives in each workload kind, and the annotations that apply to it.

use serde_yaml_ng::{Mapping, Value};

/// Path from the document root to the Pod template (the object holding `metadata` and
/// `spec` of the Pod), by `kind`; `None` for kinds that hold no Pod.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Walks `path` (mapping keys) down from `value`.
pub fn walk_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = value;
    for key in path {
        cur = cur.as_mapping_mut()?.get_mut(*key)?;
    }
    Some(cur)
}

/// A string field of a mapping.
pub fn get_str<'a>(m: &'a Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// `metadata.name` of an object (for messages and defaults), or `<unnamed>`.
pub fn name_of(obj: &Value) -> String {
    obj.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned()
}

/// The annotations that configure injection for a workload: the workload's own
/// `metadata.annotations`, overridden by the Pod template's. Values that are not strings
/// (a YAML `false` or a number) are taken as their plain text.
pub fn annotations(root: &Value, template: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for obj in [root, template] {
        let Some(map) = obj
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for (k, v) in map {
            let (Some(k), Some(v)) = (k.as_str(), scalar_text(v)) else {
                continue;
            };
            if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
                slot.1 = v;
            } else {
                out.push((k.to_owned(), v));
            }
        }
    }
    out
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Sets (or with `None` removes) a Pod template annotation, creating `metadata.annotations`
/// only when there is something to set.
pub fn set_annotation(template: &mut Value, key: &str, value: Option<String>) {
    let Some(t) = template.as_mapping_mut() else {
        return;
    };
    match value {
        Some(v) => {
            let meta = t
                .entry(Value::from("metadata"))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let Some(meta) = meta.as_mapping_mut() else {
                return;
            };
            let anns = meta
                .entry(Value::from("annotations"))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Some(anns) = anns.as_mapping_mut() {
                anns.insert(Value::from(key), Value::from(v));
            }
        }
        None => {
            if let Some(anns) = t
                .get_mut("metadata")
                .and_then(|m| m.get_mut("annotations"))
                .and_then(Value::as_mapping_mut)
            {
                anns.remove(key);
            }
        }
    }
}
