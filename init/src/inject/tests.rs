use clap::Parser;
use serde_yaml_ng::Value;

use super::*;
use crate::args::RuleArgs;

/// `inject`'s own flags and the capture flags, as `docmesh-init inject` takes them (the test
/// stays below `cli`, which depends on this module).
#[derive(Debug, clap::Parser)]
struct InjectCli {
    #[command(flatten)]
    rules: RuleArgs,
    #[command(flatten)]
    inject: InjectArgs,
}

/// Runs `inject <flags>` on `input` through the real argument definitions.
fn run_inject(input: &str, flags: &[&str]) -> Result<(String, Report), InjectError> {
    let mut argv = vec!["inject"];
    argv.extend_from_slice(flags);
    let cli = InjectCli::try_parse_from(argv).unwrap();
    inject(input, &cli.inject, &cli.rules)
}

fn docs(text: &str) -> Vec<Value> {
    documents::split(text)
        .iter()
        .map(|d| serde_yaml_ng::from_str(&d.parse_text()).unwrap())
        .collect()
}

const DEPLOYMENT: &str = "\
# the docservice
apiVersion: apps/v1
kind: Deployment
metadata:
  name: docservice
  labels: {app: docservice}
  annotations:
    docmesh.io/exclude-outbound-cidrs: 169.254.169.254/32
spec:
  replicas: 2
  selector:
    matchLabels: {app: docservice}
  template:
    metadata:
      labels: {app: docservice}
      annotations:
        docmesh.io/exclude-inbound-ports: \"9090\"
    spec:
      serviceAccountName: docservice
      initContainers:
      - name: wait-for-db
        image: busybox
        command: [sh, -c, 'until nc -z postgres 5432; do sleep 1; done']
      containers:
      - name: docservice
        image: onlyoffice/docs-docservice:8.2
        ports:
        - {name: http, containerPort: 8000}
        env:
        - {name: JWT_ENABLED, value: \"true\"}
      volumes:
      - name: data
        emptyDir: {}
";

fn pod_spec(v: &Value) -> &Value {
    let kind = v["kind"].as_str().unwrap();
    let mut cur = v;
    for k in workload::template_path(kind).unwrap() {
        cur = &cur[*k];
    }
    &cur["spec"]
}

fn init_names(spec: &Value) -> Vec<&str> {
    spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn deployment_gets_init_container_and_native_sidecar() {
    let (out, report) = run_inject(DEPLOYMENT, &[]).unwrap();
    assert_eq!(report.lines, ["Deployment/docservice: injected"]);
    let v = &docs(&out)[0];
    let spec = pod_spec(v);
    assert_eq!(
        init_names(spec),
        ["docmesh-init", "docmesh-proxy", "wait-for-db"]
    );
    let init = &spec["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"][0],
        "NET_ADMIN"
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    let args: Vec<&str> = init["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // Admin port always excluded (kubelet probes), the template's annotation added to it, the
    // workload's CIDR annotation applied.
    assert!(
        args.contains(&"--exclude-inbound-ports=15020,9090"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--exclude-outbound-cidrs=169.254.169.254/32"),
        "{args:?}"
    );

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15020);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    let env: Vec<(&str, &str)> = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e.get("value")?.as_str()?)))
        .collect();
    assert!(env.contains(&("DOCMESH_ADMIN__LISTEN", "0.0.0.0:15020")));
    assert!(env.contains(&("DOCMESH_IDENTITY__CERT", "/etc/docmesh/svid/svid.pem")));

    let vols = spec["volumes"].as_sequence().unwrap();
    assert_eq!(vols[0]["name"], "data");
    assert_eq!(vols[1]["configMap"]["name"], "docmesh-docservice");
    assert_eq!(vols[2]["secret"]["secretName"], "docmesh-svid-docservice");
}

#[test]
fn other_fields_are_kept() {
    let (out, _) = run_inject(DEPLOYMENT, &[]).unwrap();
    let before = &docs(DEPLOYMENT)[0];
    let mut after = docs(&out)[0].clone();
    // Remove exactly what inject adds; the rest must be equal to the input.
    let spec = after["spec"]["template"]["spec"].as_mapping_mut().unwrap();
    let inits = spec
        .get_mut("initContainers")
        .unwrap()
        .as_sequence_mut()
        .unwrap();
    inits.drain(0..2);
    let vols = spec.get_mut("volumes").unwrap().as_sequence_mut().unwrap();
    vols.truncate(1);
    assert_eq!(&after, before);
}

#[test]
fn reinjecting_changes_nothing_byte_for_byte() {
    let all = [
        DEPLOYMENT.to_owned(),
        DEPLOYMENT.replace("kind: Deployment", "kind: StatefulSet"),
        DEPLOYMENT.replace("kind: Deployment", "kind: DaemonSet"),
        include_str!("testdata/kinds.yaml").to_owned(),
    ];
    for input in all {
        for flags in [
            &[][..],
            &["--svid-source", "csi"],
            &["--svid-source", "spire"],
        ] {
            let (once, _) = run_inject(&input, flags).unwrap();
            assert_ne!(once, input);
            let (twice, report) = run_inject(&once, flags).unwrap();
            assert_eq!(twice, once, "flags {flags:?}");
            assert!(
                report
                    .lines
                    .iter()
                    .all(|l| l.ends_with("unchanged") || l.contains("skipped")),
                "{:?}",
                report.lines
            );
        }
    }
}

#[test]
fn reinjecting_with_other_options_replaces_in_place() {
    let (once, _) = run_inject(DEPLOYMENT, &[]).unwrap();
    let (other, _) = run_inject(&once, &["--svid-source", "csi"]).unwrap();
    let spec = pod_spec(&docs(&other)[0]).clone();
    assert_eq!(
        init_names(&spec),
        ["docmesh-init", "docmesh-proxy", "wait-for-db"]
    );
    let vols = spec["volumes"].as_sequence().unwrap();
    assert_eq!(vols.len(), 3);
    assert_eq!(vols[2]["csi"]["driver"], "csi.spiffe.io");
    assert!(vols[2].get("secret").is_none());
    // And back: the same text as a fresh injection with the secret source.
    let (back, _) = run_inject(&other, &[]).unwrap();
    assert_eq!(back, once);
}

#[test]
fn every_workload_kind_and_lists_are_injected() {
    let (out, report) = run_inject(include_str!("testdata/kinds.yaml"), &[]).unwrap();
    let injected: Vec<&str> = report
        .lines
        .iter()
        .filter(|l| l.ends_with(": injected"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        injected,
        [
            "Pod/pod: injected",
            "Job/job: injected",
            "CronJob/cron: injected",
            "Deployment/in-list: injected",
        ]
    );
    let out_docs = docs(&out);
    // Pod spec directly; Job template; CronJob's jobTemplate; List items.
    assert_eq!(init_names(pod_spec(&out_docs[1]))[1], "docmesh-proxy");
    assert_eq!(init_names(pod_spec(&out_docs[2]))[1], "docmesh-proxy");
    assert_eq!(init_names(pod_spec(&out_docs[3]))[1], "docmesh-proxy");
    assert_eq!(
        init_names(pod_spec(&out_docs[6]["items"][0]))[0],
        "docmesh-init"
    );
    // A Pod's SVID secret follows its service account (here: none, `default`).
    assert_eq!(
        pod_spec(&out_docs[1])["volumes"][1]["secret"]["secretName"],
        "docmesh-svid-default"
    );
}

#[test]
fn unknown_documents_pass_through_byte_for_byte() {
    let input = include_str!("testdata/kinds.yaml");
    let (out, _) = run_inject(input, &[]).unwrap();
    let ins = documents::split(input);
    let outs = documents::split(&out);
    assert_eq!(ins.len(), outs.len());
    // 0: comments only; 4: Service; 5: a custom resource; 7: opted out; 8: hostNetwork.
    for i in [0, 4, 5, 7, 8] {
        assert_eq!(outs[i].original(), ins[i].original(), "document {i}");
    }
    assert!(ins[5].original().contains("# keep this comment"));
}

#[test]
fn opt_out_and_host_network_are_left_alone() {
    let (_, report) = run_inject(include_str!("testdata/kinds.yaml"), &[]).unwrap();
    assert!(report
        .lines
        .contains(&"Deployment/opted-out: skipped (docmesh.io/inject: false)".to_owned()));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("DaemonSet/node-agent: uses hostNetwork")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn svid_sources_by_flag_and_annotation() {
    let (out, _) = run_inject(DEPLOYMENT, &["--svid-source", "spire"]).unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    assert_eq!(
        spec["volumes"][2]["hostPath"]["path"],
        "/run/spire/agent-sockets"
    );
    let proxy = &spec["initContainers"][1];
    let env = serde_yaml_ng::to_string(&proxy["env"]).unwrap();
    assert!(env.contains("workload-api"), "{env}");
    assert!(
        env.contains("unix:///spiffe-workload-api/spire-agent.sock"),
        "{env}"
    );

    let annotated = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/svid-source: csi\n        docmesh.io/svid-secret: ignored-for-csi",
    );
    let (out, _) = run_inject(&annotated, &["--svid-source", "secret"]).unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    assert_eq!(spec["volumes"][2]["csi"]["driver"], "csi.spiffe.io");
    assert_eq!(spec["volumes"][2]["csi"]["readOnly"], true);

    let named = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/svid-secret: my-svid\n        docmesh.io/config-map: my-proxy",
    );
    let (out, _) = run_inject(&named, &[]).unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    assert_eq!(spec["volumes"][1]["configMap"]["name"], "my-proxy");
    assert_eq!(spec["volumes"][2]["secret"]["secretName"], "my-svid");
}

#[test]
fn bad_annotations_and_yaml_are_named() {
    let bad_cidr = DEPLOYMENT.replace("169.254.169.254/32", "169.254.169.254/33");
    let e = run_inject(&bad_cidr, &[]).unwrap_err().to_string();
    assert!(e.contains("Deployment/docservice"), "{e}");
    assert!(e.contains("exclude-outbound-cidrs"), "{e}");

    let bad_source = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/svid-source: vault",
    );
    let e = run_inject(&bad_source, &[]).unwrap_err().to_string();
    assert!(
        e.contains("docmesh.io/svid-source") && e.contains("vault"),
        "{e}"
    );

    let bad_name = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/svid-secret: Not_A_Name",
    );
    let e = run_inject(&bad_name, &[]).unwrap_err().to_string();
    assert!(e.contains("docmesh.io/svid-secret"), "{e}");

    let conflicting = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/exclude-inbound-ports: \"9090\"\n        docmesh.io/inbound-ports: \"8000,9090\"",
    );
    let e = run_inject(&conflicting, &[]).unwrap_err().to_string();
    assert!(
        e.contains("9090") && e.contains("Deployment/docservice"),
        "{e}"
    );

    let e = run_inject("a: 1\n---\nkind: [unclosed\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("document 2"), "{e}");
}

#[test]
fn flags_apply_to_every_workload_and_annotations_add_to_them() {
    let (out, _) = run_inject(
        DEPLOYMENT,
        &[
            "--exclude-outbound-cidrs",
            "10.96.0.1/32",
            "--inbound-port",
            "16006",
            "--proxy-image",
            "registry.local/docmesh-proxy:dev",
        ],
    )
    .unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    let init = serde_yaml_ng::to_string(&spec["initContainers"][0]["args"]).unwrap();
    assert!(
        init.contains("--exclude-outbound-cidrs=10.96.0.1/32,169.254.169.254/32"),
        "{init}"
    );
    assert!(init.contains("--inbound-port=16006"), "{init}");
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["image"], "registry.local/docmesh-proxy:dev");
    let env = serde_yaml_ng::to_string(&proxy["env"]).unwrap();
    assert!(env.contains("0.0.0.0:16006"), "{env}");
}

fn probed() -> String {
    DEPLOYMENT.replace(
        "        env:\n",
        "        startupProbe:\n          grpc: {port: 8000, service: docs}\n          timeoutSeconds: 3\n        readinessProbe:\n          httpGet: {path: /index.html, port: http}\n          periodSeconds: 7\n        livenessProbe:\n          tcpSocket: {port: 9090}\n        env:\n",
    )
}

#[test]
fn app_probes_on_captured_ports_go_to_the_sidecar_and_the_originals_are_kept() {
    let (out, report) = run_inject(&probed(), &[]).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let doc = &docs(&out)[0];
    let app = &pod_spec(doc)["containers"][0];
    let ready = &app["readinessProbe"];
    assert_eq!(ready["httpGet"]["path"], "/app-health/docservice/readiness");
    assert_eq!(ready["httpGet"]["port"], 15020);
    assert_eq!(ready["periodSeconds"], 7);
    let startup = &app["startupProbe"];
    assert!(startup.get("grpc").is_none(), "{startup:?}");
    assert_eq!(startup["httpGet"]["path"], "/app-health/docservice/startup");
    // 9090 is excluded from capture: the kubelet reaches it directly, left alone.
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 9090);
    let ann = doc["spec"]["template"]["metadata"]["annotations"]["docmesh.io/original-probes"]
        .as_str()
        .unwrap();
    let originals: serde_json::Value = serde_json::from_str(ann).unwrap();
    assert_eq!(
        originals,
        serde_json::json!({
            "docservice/readiness": {"httpGet": {"path": "/index.html", "port": 8000}},
            "docservice/startup": {"grpc": {"port": 8000, "service": "docs"}, "timeoutSeconds": 3},
        })
    );
    let env = &pod_spec(doc)["initContainers"][1]["env"];
    let var = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DOCMESH_APP_PROBES")
        .unwrap();
    assert_eq!(var["value"].as_str(), Some(ann));
    // Injecting the output again changes nothing.
    let (again, report) = run_inject(&out, &[]).unwrap();
    assert_eq!(again, out);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn probe_rewriting_can_be_turned_off_and_https_probes_are_warned_about() {
    let off = probed().replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/exclude-inbound-ports: \"9090\"\n        docmesh.io/rewrite-app-probes: \"false\"",
    );
    let (out, report) = run_inject(&off, &[]).unwrap();
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[1].contains("readinessProbe httpGet on port 8000"));
    assert!(!out.contains("/app-health/"), "{out}");
    assert!(!out.contains("DOCMESH_APP_PROBES"), "{out}");
    let https = probed().replace("path: /index.html,", "path: /index.html, scheme: HTTPS,");
    let (_, report) = run_inject(&https, &[]).unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("HTTPS"),
        "{:?}",
        report.warnings
    );
    let bad = probed().replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/rewrite-app-probes: \"no\"",
    );
    let e = run_inject(&bad, &[]).unwrap_err().to_string();
    assert!(e.contains("docmesh.io/rewrite-app-probes"), "{e}");
}

#[test]
fn jwt_secret_annotation_mounts_the_key_and_goes_away_with_it() {
    let with = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/jwt-secret: jwt",
    );
    let (out, _) = run_inject(&with, &[]).unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    let vol = &spec["volumes"][3];
    assert_eq!(vol["name"], "docmesh-jwt");
    assert_eq!(vol["secret"]["secretName"], "jwt");
    assert_eq!(vol["secret"]["items"][0]["key"], "JWT_SECRET");
    assert_eq!(vol["secret"]["items"][0]["path"], "secret");
    let mounts = serde_yaml_ng::to_string(&spec["initContainers"][1]["volumeMounts"]).unwrap();
    assert!(mounts.contains("/etc/docmesh/jwt"), "{mounts}");
    // Re-injected after the annotation was removed: the volume and the mount are gone.
    let removed = out.replace("docmesh.io/jwt-secret: jwt", "docmesh.io/other: x");
    let (again, _) = run_inject(&removed, &[]).unwrap();
    assert!(!again.contains("docmesh-jwt"), "{again}");
    let bad = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/jwt-secret: jwt/",
    );
    let e = run_inject(&bad, &[]).unwrap_err().to_string();
    assert!(e.contains("docmesh.io/jwt-secret"), "{e}");
}

#[test]
fn backend_and_ipv6_reach_the_init_container_only_when_set() {
    let (out, _) = run_inject(DEPLOYMENT, &["--backend", "legacy", "--ipv6", "off"]).unwrap();
    let args =
        serde_yaml_ng::to_string(&pod_spec(&docs(&out)[0])["initContainers"][0]["args"]).unwrap();
    assert!(args.contains("--backend=legacy"), "{args}");
    assert!(args.contains("--ipv6=off"), "{args}");
    let (out, _) = run_inject(DEPLOYMENT, &[]).unwrap();
    let args =
        serde_yaml_ng::to_string(&pod_spec(&docs(&out)[0])["initContainers"][0]["args"]).unwrap();
    assert!(
        !args.contains("--backend") && !args.contains("--ipv6"),
        "{args}"
    );
}

#[test]
fn kubernetes_versions_without_native_sidecars_are_refused_or_warned_about() {
    let (_, report) = run_inject(DEPLOYMENT, &["--kubernetes-version", "1.31"]).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let (_, report) = run_inject(DEPLOYMENT, &["--kubernetes-version", "v1.28"]).unwrap();
    assert!(
        report.warnings[0].contains("SidecarContainers"),
        "{:?}",
        report.warnings
    );
    for bad in ["1.27", "1", "one.two", ""] {
        let e = run_inject(DEPLOYMENT, &["--kubernetes-version", bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kubernetes-version"), "{bad}: {e}");
    }
}

#[test]
fn proxy_threads_follow_its_cpu_limit_and_containers_are_restricted() {
    let sized = DEPLOYMENT.replace(
        "docmesh.io/exclude-inbound-ports: \"9090\"",
        "docmesh.io/proxy-cpu-limit: 1500m\n        docmesh.io/proxy-memory-limit: 128Mi",
    );
    let (out, _) = run_inject(&sized, &[]).unwrap();
    let spec = pod_spec(&docs(&out)[0]).clone();
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["resources"]["limits"]["cpu"], "1500m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "50m");
    let threads = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "TOKIO_WORKER_THREADS")
        .unwrap();
    let field = &threads["valueFrom"]["resourceFieldRef"];
    assert_eq!(field["resource"], "limits.cpu");
    assert_eq!(field["containerName"], "docmesh-proxy");
    assert_eq!(field["divisor"], "1");
    for c in [&spec["initContainers"][0], proxy] {
        let sc = &c["securityContext"];
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{c:?}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{c:?}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c:?}");
    }
    for bad in ["-1", "0", "1.5.2", "2 cores", "5x"] {
        let input = DEPLOYMENT.replace(
            "docmesh.io/exclude-inbound-ports: \"9090\"",
            &format!("docmesh.io/proxy-cpu-limit: \"{bad}\""),
        );
        let e = run_inject(&input, &[]).unwrap_err().to_string();
        assert!(e.contains("docmesh.io/proxy-cpu-limit"), "{bad}: {e}");
    }
}
