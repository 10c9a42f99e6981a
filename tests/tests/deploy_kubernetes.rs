//! The Kubernetes examples and `docmesh-init inject`: the committed `*.injected.yaml` files are
//! exactly what the command writes today, re-injecting changes nothing, the app's own fields
//! are kept, and every manifest (before and after injection) validates against Kubernetes'
//! OpenAPI schemas offline (PyPI's `kubernetes-validate`, strict: unknown fields are errors).

use std::path::{Path, PathBuf};
use std::process::Command;

use docmesh_init::host::SystemHost;
use serde_yaml_ng::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes")
}

/// The manifests before injection.
fn sources() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".yaml") && !name.ends_with(".injected.yaml")
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{out:?}");
    out
}

fn injected_path(src: &Path) -> PathBuf {
    src.with_extension("injected.yaml")
}

/// `docmesh-init inject FILE [ARGS]` through the real command line, output captured.
fn inject(file: &Path, args: &[&str]) -> String {
    let mut argv = vec!["docmesh-init".to_owned(), "inject".to_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.push(file.to_string_lossy().into_owned());
    let mut out = Vec::new();
    docmesh_init::cli::run(argv, &SystemHost, &mut out)
        .unwrap_or_else(|e| panic!("inject {}: {e}", file.display()));
    String::from_utf8(out).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kubernetes_validate(files: &[PathBuf]) {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "kubernetes-validate is not installed: run `python3 -m pip install kubernetes-validate` \
             (tests/scripts/install-deps.sh does)"
        ),
    }
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn committed_injected_manifests_equal_a_fresh_injection() {
    for src in sources() {
        let fresh = inject(&src, &[]);
        let committed = std::fs::read_to_string(injected_path(&src))
            .unwrap_or_else(|e| panic!("{}: {e}", injected_path(&src).display()));
        assert!(
            fresh == committed,
            "{} is stale: regenerate it with `docmesh-init inject {} -o {}`",
            injected_path(&src).display(),
            src.display(),
            injected_path(&src).display()
        );
    }
}

#[test]
fn reinjecting_changes_nothing() {
    for src in sources() {
        let once = injected_path(&src);
        assert_eq!(
            inject(&once, &[]),
            std::fs::read_to_string(&once).unwrap(),
            "{}",
            once.display()
        );
    }
}

/// The Pod spec of a workload document, if it is one.
fn pod_spec(v: &Value) -> Option<&Value> {
    let path: &[&str] = match v["kind"].as_str()? {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    };
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.get("spec")
}

#[test]
fn injection_adds_docmesh_and_keeps_everything_else() {
    let mut workloads = 0;
    for src in sources() {
        let before = docs(&std::fs::read_to_string(&src).unwrap());
        let after = docs(&std::fs::read_to_string(injected_path(&src)).unwrap());
        assert_eq!(before.len(), after.len(), "{}", src.display());
        for (b, a) in before.iter().zip(&after) {
            let Some(spec) = pod_spec(a) else {
                assert_eq!(a, b, "non-workload documents pass through");
                continue;
            };
            workloads += 1;
            let what = format!(
                "{} {}",
                a["kind"].as_str().unwrap(),
                a["metadata"]["name"].as_str().unwrap()
            );
            let inits = spec["initContainers"].as_sequence().unwrap();
            assert_eq!(inits[0]["name"], "docmesh-init", "{what}");
            let caps = &inits[0]["securityContext"]["capabilities"]["add"];
            assert!(
                caps.as_sequence()
                    .unwrap()
                    .contains(&Value::from("NET_ADMIN")),
                "{what}"
            );
            let proxy = &inits[1];
            assert_eq!(proxy["name"], "docmesh-proxy", "{what}");
            assert_eq!(proxy["restartPolicy"], "Always", "{what}: native sidecar");
            assert_eq!(proxy["securityContext"]["runAsUser"], 1337, "{what}");
            for (probe, path) in [
                ("startupProbe", "/ready"),
                ("readinessProbe", "/ready"),
                ("livenessProbe", "/live"),
            ] {
                assert_eq!(proxy[probe]["httpGet"]["path"], path, "{what} {probe}");
                assert_eq!(proxy[probe]["httpGet"]["port"], 15020, "{what} {probe}");
            }
            let sa = spec["serviceAccountName"].as_str().unwrap();
            let vols = serde_yaml_ng::to_string(&spec["volumes"]).unwrap();
            assert!(
                vols.contains(&format!("secretName: docmesh-svid-{sa}")),
                "{what}: {vols}"
            );
            // Remove exactly what docmesh adds: the rest is the original document.
            let mut stripped = a.clone();
            let mut cur = &mut stripped;
            let path: &[&str] = match a["kind"].as_str().unwrap() {
                "Pod" => &["spec"],
                "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
                _ => &["spec", "template", "spec"],
            };
            for k in path {
                cur = cur.get_mut(*k).unwrap();
            }
            let m = cur.as_mapping_mut().unwrap();
            for key in ["initContainers", "volumes"] {
                let keep: Vec<Value> = m[key]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .filter(|x| !x["name"].as_str().unwrap().starts_with("docmesh-"))
                    .cloned()
                    .collect();
                if keep.is_empty() {
                    m.remove(key);
                } else {
                    m.insert(key.into(), Value::Sequence(keep));
                }
            }
            restore_probes(&mut stripped, path);
            assert_eq!(&stripped, b, "{what}: fields changed beyond docmesh's own");
        }
    }
    assert!(workloads >= 8, "only {workloads} workloads in the examples");
}

/// Undoes the probe rewriting from the `docmesh.io/original-probes` annotation (which it
/// removes): each `/app-health/<container>/<probe>` handler gets its original back.
fn restore_probes(doc: &mut Value, spec_path: &[&str]) {
    let mut template = &mut *doc;
    for k in &spec_path[..spec_path.len() - 1] {
        template = template.get_mut(*k).unwrap();
    }
    let Some(anns) = template
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_mapping_mut)
    else {
        return;
    };
    let Some(Value::String(json)) = anns.remove("docmesh.io/original-probes") else {
        return;
    };
    if anns.is_empty() {
        template["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("annotations");
    }
    let originals: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).unwrap();
    let containers = template["spec"]["containers"].as_sequence_mut().unwrap();
    for (key, original) in originals {
        let (cname, probe) = key.split_once('/').unwrap();
        let field = format!("{probe}Probe");
        let c = containers
            .iter_mut()
            .find(|c| c["name"].as_str() == Some(cname))
            .unwrap();
        let p = c[field.as_str()].as_mapping_mut().unwrap();
        assert_eq!(
            p["httpGet"]["path"].as_str(),
            Some(format!("/app-health/{key}").as_str())
        );
        assert_eq!(p["httpGet"]["port"], 15020);
        let (handler, value) = original
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| *k != "timeoutSeconds")
            .unwrap();
        let value: Value = serde_yaml_ng::to_value(value).unwrap();
        *p = std::mem::take(p)
            .into_iter()
            .map(|(k, v)| {
                if k == "httpGet" {
                    (Value::from(handler.as_str()), value.clone())
                } else {
                    (k, v)
                }
            })
            .collect();
    }
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for src in sources() {
        files.push(src.clone());
        // Validate what inject writes now, for each SVID source.
        for source in ["secret", "csi", "spire"] {
            let out = dir.path().join(format!(
                "{}-{source}.yaml",
                src.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(&out, inject(&src, &["--svid-source", source])).unwrap();
            files.push(out);
        }
    }
    kubernetes_validate(&files);
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    // kubernetes-validate really checks the injected shape: a misspelled sidecar field fails.
    let dir = tempfile::tempdir().unwrap();
    let src = k8s_dir().join("jobs.injected.yaml");
    let bad = std::fs::read_to_string(src).unwrap().replacen(
        "restartPolicy: Always",
        "restartPolicyy: Always",
        1,
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&path)
        .output()
        .expect("python3 with kubernetes-validate (tests/scripts/install-deps.sh)");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("restartPolicyy"));
}

/// The committed examples (the chart's shapes, with its httpGet probes) inject without a
/// single warning: every app probe on a captured port is rewritten to the sidecar.
#[test]
fn examples_inject_without_warnings() {
    use docmesh_init::cli::{Cli, Command};
    let cli = Cli::try_parse_from_args(["docmesh-init", "inject"]).unwrap();
    let Some(Command::Inject(args)) = cli.command else {
        panic!("not inject")
    };
    for src in sources() {
        let text = std::fs::read_to_string(&src).unwrap();
        let (out, report) = docmesh_init::inject::inject(&text, &args, &cli.rules).unwrap();
        assert!(
            report.warnings.is_empty(),
            "{}: {:?}",
            src.display(),
            report.warnings
        );
        if src.ends_with("onlyoffice-docs.yaml") {
            assert!(
                out.contains("path: /app-health/docservice/readiness"),
                "{out}"
            );
        }
    }
}

/// The Helm overlay's Pod annotations are ones `inject` accepts, and the ConfigMaps and SVID
/// Secrets they name are those the quick start creates from `examples/onlyoffice/`.
#[test]
fn helm_overlay_annotations_inject_and_name_existing_profiles() {
    use docmesh_init::cli::{Cli, Command};
    let overlay: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(k8s_dir().join("helm/values-docmesh.yaml")).unwrap(),
    )
    .unwrap();
    let cli = Cli::try_parse_from_args(["docmesh-init", "inject"]).unwrap();
    let Some(Command::Inject(args)) = cli.command else {
        panic!("not inject")
    };
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/onlyoffice");
    let mut checked = 0;
    for (component, values) in overlay.as_mapping().unwrap() {
        let annotations = values
            .get("podAnnotations")
            .or_else(|| values.get("job").and_then(|j| j.get("podAnnotations")))
            .unwrap_or_else(|| panic!("{component:?}: no podAnnotations"));
        let pod = serde_yaml_ng::to_string(&serde_yaml_ng::from_str::<Value>(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  annotations: {}\nspec:\n  containers:\n  - name: app\n    image: app\n",
            serde_json::to_string(annotations).unwrap()
        ))
        .unwrap())
        .unwrap();
        let (out, report) = docmesh_init::inject::inject(&pod, &args, &cli.rules)
            .unwrap_or_else(|e| panic!("{component:?}: {e}"));
        assert!(
            report.warnings.is_empty(),
            "{component:?}: {:?}",
            report.warnings
        );
        if annotations.get("docmesh.io/inject").and_then(Value::as_str) == Some("false") {
            assert!(!out.contains("docmesh-proxy"), "{component:?}");
            continue;
        }
        let cm = annotations["docmesh.io/config-map"].as_str().unwrap();
        let sa = cm.strip_prefix("docmesh-").unwrap();
        assert!(
            profiles.join(format!("{sa}.toml")).exists(),
            "{component:?}: {cm}"
        );
        assert_eq!(
            annotations["docmesh.io/svid-secret"].as_str(),
            Some(format!("docmesh-svid-{sa}").as_str()),
            "{component:?}"
        );
        assert!(
            out.contains(&format!("secretName: docmesh-svid-{sa}")),
            "{out}"
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}
