//! One AdmissionReview (`admission.k8s.io/v1`) in, one out: the same injection as
//! `docmesh-init inject`, answered as a JSONPatch.
//!
//! Every request gets an AdmissionReview answer: a Pod to inject gets a patch; a Pod that
//! opts out, is already injected or is not a Pod is allowed unchanged; a request that cannot be
//! understood (malformed JSON, another API version, no `request.uid`) is refused with a
//! `status` naming what is wrong.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::args::RuleArgs;
use crate::inject::{self, annotations, InjectArgs};

/// The API version of the AdmissionReview this webhook speaks (the only one it accepts).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Which Pods a webhook endpoint injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// Every Pod (the namespace opted in with its label) unless it says
    /// `docmesh.io/inject: "false"`.
    Namespace,
    /// Only Pods annotated `docmesh.io/inject: "true"`.
    Annotation,
}

/// Answers one AdmissionReview request body.
pub fn review(body: &[u8], opt_in: OptIn, args: &InjectArgs, rules: &RuleArgs) -> Value {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return refuse("", 400, &format!("the body is not JSON: {e}")),
    };
    let uid = review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api != Some(API_VERSION) || kind != Some("AdmissionReview") {
        return refuse(
            &uid,
            400,
            &format!(
                "expected an AdmissionReview of apiVersion {API_VERSION}, got kind {kind:?} apiVersion {api:?} (set admissionReviewVersions: [v1])"
            ),
        );
    }
    if uid.is_empty() {
        return refuse(&uid, 400, "request.uid is missing");
    }
    let resource = review.pointer("/request/kind/kind").and_then(Value::as_str);
    let object = review.pointer("/request/object");
    let (Some("Pod"), Some(pod)) = (resource, object) else {
        return allow(
            &uid,
            None,
            vec![format!(
                "docmesh: only Pods are injected; {} left unchanged",
                resource.unwrap_or("an object without request.kind.kind")
            )],
        );
    };
    if pod.get("kind").and_then(Value::as_str) != Some("Pod") {
        return refuse(&uid, 400, "request.object is not a Pod");
    }
    let annotation = pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            escape(annotations::INJECT)
        ))
        .and_then(Value::as_str)
        .map(str::trim);
    let wanted = match opt_in {
        OptIn::Namespace => annotation != Some("false"),
        OptIn::Annotation => annotation == Some("true"),
    };
    if !wanted {
        return allow(&uid, None, Vec::new());
    }
    let mut yaml: serde_yaml_ng::Value = match serde_yaml_ng::to_value(pod) {
        Ok(v) => v,
        Err(e) => return refuse(&uid, 400, &format!("request.object: {e}")),
    };
    let report = match inject::inject_object(&mut yaml, args, rules) {
        Ok(r) => r,
        Err(e) => return refuse(&uid, 400, &format!("docmesh cannot inject this Pod: {e}")),
    };
    let injected = match serde_json::to_value(&yaml) {
        Ok(v) => v,
        Err(e) => return refuse(&uid, 500, &format!("injected Pod: {e}")),
    };
    let patch = diff(pod, &injected);
    let warnings = report
        .warnings
        .into_iter()
        .map(|w| format!("docmesh: {w}"))
        .collect();
    allow(&uid, (!patch.is_empty()).then_some(patch), warnings)
}

/// `allowed: true`, with a JSONPatch when there is one.
fn allow(uid: &str, patch: Option<Vec<Value>>, warnings: Vec<String>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        let text = Value::Array(patch).to_string();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

/// `allowed: false` with a status naming what is wrong.
pub fn refuse(uid: &str, code: u16, message: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": false,
            "status": {"code": code, "message": format!("docmesh-webhook: {message}")},
        },
    })
}

/// A JSON Pointer token (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// JSONPatch (RFC 6902) from `before` to `after`: member by member in `metadata` and `spec`
/// (`add` replaces an existing member), whole values elsewhere.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    let empty = Map::new();
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        if before != after {
            ops.push(json!({"op": "replace", "path": "", "value": after}));
        }
        return ops;
    };
    members(
        "",
        b,
        a,
        &mut ops,
        &|key| matches!(key, "metadata" | "spec"),
        &empty,
    );
    ops
}

fn members(
    path: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    ops: &mut Vec<Value>,
    descend: &dyn Fn(&str) -> bool,
    empty: &Map<String, Value>,
) {
    for (key, new) in after {
        let p = format!("{path}/{}", escape(key));
        match before.get(key) {
            Some(old) if old == new => {}
            Some(Value::Object(old)) if descend(key) && new.is_object() => {
                let new = new.as_object().unwrap_or(empty);
                members(&p, old, new, ops, &|_| false, empty);
            }
            _ => ops.push(json!({"op": "add", "path": p, "value": new})),
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
    }
}
