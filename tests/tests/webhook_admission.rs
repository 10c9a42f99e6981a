//! `docmesh-init webhook` over real HTTPS: AdmissionReview v1 requests shaped as the
//! Kubernetes API documents them, sent by curl; the JSONPatch answer applied by Python's
//! `jsonpatch` (an independent RFC 6902 implementation) and the patched Pod validated by
//! `kubernetes-validate --strict`. Bad requests get an AdmissionReview refusal, and the server
//! keeps serving.

use std::path::{Path, PathBuf};
use std::process::Command;

use docmesh_init::cli::{Cli, Command as InitCommand};
use serde_json::{json, Value};

const HOST: &str = "docmesh-webhook.docmesh-system.svc";

struct Webhook {
    _rt: tokio::runtime::Runtime,
    port: u16,
    dir: tempfile::TempDir,
}

/// A self-signed serving certificate for the webhook's Service name (openssl, independent of
/// docmesh's own code).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (tests/scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn start() -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let cli = Cli::try_parse_from_args([
        "docmesh-init".as_ref(),
        "webhook".as_ref(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--max-body".as_ref(),
        "1048576".as_ref(),
    ])
    .unwrap();
    let Some(InitCommand::Webhook(args)) = cli.command else {
        panic!("not webhook")
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let rules = cli.rules;
    rt.spawn(async move { docmesh_init::webhook::serve(listener, args, rules).await });
    Webhook { _rt: rt, port, dir }
}

impl Webhook {
    /// POSTs `body` to `path` with curl, verifying the serving certificate; returns the HTTP
    /// status and the parsed JSON answer.
    fn post(&self, path: &str, body: &[u8], content_type: &str) -> (u16, Value) {
        let file = self.dir.path().join("body");
        std::fs::write(&file, body).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.dir.path().join("tls.crt"))
            .args(["--resolve", &format!("{HOST}:{}:127.0.0.1", self.port)])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{HOST}:{}{path}", self.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (json_text, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(json_text).unwrap(),
        )
    }

    /// Sends `review` to `/inject` (or `path`), expects 200, applies the patch with Python's
    /// jsonpatch and returns the answer and the patched Pod (`None` without a patch).
    fn admit(&self, path: &str, review: &Value) -> (Value, Option<Value>) {
        let body = serde_json::to_vec(review).unwrap();
        let (code, answer) = self.post(path, &body, "application/json");
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        let (req, resp, out) = (
            self.dir.path().join("req.json"),
            self.dir.path().join("resp.json"),
            self.dir.path().join("patched.json"),
        );
        std::fs::write(&req, &body).unwrap();
        std::fs::write(&resp, answer.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apply_admission_patch.py");
        let run = Command::new("python3")
            .arg(script)
            .args([&req, &resp, &out])
            .output()
            .unwrap();
        match run.status.code() {
            Some(0) => {
                let pod = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
                (answer, Some(pod))
            }
            Some(2) => (answer, None),
            _ => panic!(
                "jsonpatch (pip install jsonpatch; install-deps.sh does): {}",
                String::from_utf8_lossy(&run.stderr)
            ),
        }
    }
}

/// The docservice Pod as its ReplicaSet creates it, from the committed example (the chart's
/// shape: docs-proxy and docservice containers, httpGet probes on 8888 and 8000).
fn docservice_pod() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes/onlyoffice-docs.yaml"),
    )
    .unwrap();
    let deployment = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "docservice")
        .unwrap();
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!("docservice-7d9f8b6c5-");
    metadata["namespace"] = json!("onlyoffice");
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// An AdmissionReview v1 request as the API server sends it for a Pod CREATE.
fn review_of(object: &Value, uid: &str) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod");
    let (group, version, resource) = if kind == "Pod" {
        ("", "v1", "pods")
    } else {
        ("apps", "v1", "deployments")
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": "onlyoffice",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0f7d2c1e-4b5a-4c3d-9e8f-1a2b3c4d5e6f",
                "groups": ["system:serviceaccounts", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn kubernetes_validate(pod: &Value, dir: &Path) {
    let file = dir.join("pod.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(pod).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pod_is_injected_by_a_patch_that_an_independent_implementation_applies() {
    let hook = start();
    let pod = docservice_pod();
    let (answer, patched) = hook.admit(
        "/inject",
        &review_of(&pod, "705ab4f5-6393-11e8-b7cc-42010a800002"),
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("warnings").is_none(), "{answer}");
    let patched = patched.expect("a patch");
    let spec = &patched["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "docmesh-init");
    assert_eq!(spec["initContainers"][1]["name"], "docmesh-proxy");
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        spec["containers"][1]["readinessProbe"]["httpGet"]["path"],
        "/app-health/docservice/readiness"
    );
    assert!(patched["metadata"]["annotations"]["docmesh.io/original-probes"].is_string());
    // The app's own fields survive the patch.
    assert_eq!(
        spec["containers"][0]["image"],
        pod["spec"]["containers"][0]["image"]
    );
    assert_eq!(
        patched["metadata"]["generateName"],
        pod["metadata"]["generateName"]
    );
    kubernetes_validate(&patched, hook.dir.path());
    // Admitting the injected Pod again changes nothing (reinvocation is harmless).
    let (again, none) = hook.admit("/inject", &review_of(&patched, "2"));
    assert_eq!(again["response"]["allowed"], true);
    assert!(none.is_none(), "{again}");
}

#[test]
fn opt_in_and_opt_out_annotations_decide() {
    let hook = start();
    let mut pod = docservice_pod();
    // /inject-annotated: only Pods that ask for it.
    let (_, none) = hook.admit("/inject-annotated", &review_of(&pod, "a1"));
    assert!(none.is_none());
    pod["metadata"]["annotations"]["docmesh.io/inject"] = json!("true");
    let (_, some) = hook.admit("/inject-annotated", &review_of(&pod, "a2"));
    assert!(some.is_some());
    // /inject (namespace opted in): every Pod unless it opts out.
    pod["metadata"]["annotations"]["docmesh.io/inject"] = json!("false");
    let (answer, none) = hook.admit("/inject", &review_of(&pod, "a3"));
    assert_eq!(answer["response"]["allowed"], true);
    assert!(none.is_none(), "{answer}");
}

#[test]
fn bad_requests_get_an_admission_review_refusal_and_the_server_keeps_serving() {
    let hook = start();
    let pod = docservice_pod();
    let refused = |code: u16, answer: &Value, needle: &str| {
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert_eq!(answer["response"]["status"]["code"], code, "{answer}");
        let msg = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    };
    let (code, answer) = hook.post("/inject", b"{\"apiVersion\": ", "application/json");
    assert_eq!(code, 200);
    refused(400, &answer, "not JSON");

    let mut old = review_of(&pod, "b1");
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (code, answer) = hook.post("/inject", old.to_string().as_bytes(), "application/json");
    assert_eq!(code, 200);
    refused(400, &answer, "admission.k8s.io/v1");
    assert_eq!(answer["response"]["uid"], "b1");

    let mut no_uid = review_of(&pod, "");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let (_, answer) = hook.post("/inject", no_uid.to_string().as_bytes(), "application/json");
    refused(400, &answer, "uid");

    let big = vec![b' '; 2 * 1024 * 1024];
    let (code, answer) = hook.post("/inject", &big, "application/json");
    assert_eq!(code, 413);
    refused(413, &answer, "larger than 1048576 bytes");

    let (code, answer) = hook.post("/inject", b"{}", "text/plain");
    assert_eq!(code, 415);
    refused(415, &answer, "application/json");

    let mut bad_annotation = pod.clone();
    bad_annotation["metadata"]["annotations"]["docmesh.io/proxy-cpu-limit"] = json!("lots");
    let (code, answer) = hook.post(
        "/inject",
        review_of(&bad_annotation, "b2").to_string().as_bytes(),
        "application/json",
    );
    assert_eq!(code, 200);
    refused(400, &answer, "docmesh.io/proxy-cpu-limit");

    // Not a Pod: allowed unchanged, with a warning.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"}, "spec": {}});
    let (answer, none) = hook.admit("/inject", &review_of(&deployment, "b3"));
    assert_eq!(answer["response"]["allowed"], true);
    assert!(none.is_none());

    // Still serving.
    let (answer, some) = hook.admit("/inject", &review_of(&pod, "b4"));
    assert_eq!(answer["response"]["allowed"], true);
    assert!(some.is_some());
}

/// The webhook's own manifests validate, point at the endpoints the server has, and keep the
/// webhook's namespace out of both selectors (it must never wait for itself).
#[test]
fn webhook_manifests_validate_and_exclude_their_own_namespace() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes/webhook/webhook.yaml");
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let config = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let hook = start();
    for w in config["webhooks"].as_array().unwrap() {
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        let excluded = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["key"] == "kubernetes.io/metadata.name"
                    && e["operator"] == "NotIn"
                    && e["values"]
                        .as_array()
                        .unwrap()
                        .contains(&json!("docmesh-system"))
            });
        assert!(excluded, "{w}");
        let path = w["clientConfig"]["service"]["path"].as_str().unwrap();
        let (answer, _) = hook.admit(path, &review_of(&docservice_pod(), "c1"));
        assert_eq!(answer["response"]["allowed"], true, "{path}: {answer}");
    }
}
