//! Pods emulated from the committed injected manifests themselves, in network namespaces:
//! the docservice Pod of `examples/kubernetes/onlyoffice-docs.injected.yaml` (the chart's
//! shape: docs-proxy and docservice containers, httpGet probes on 8888 and 8000) is run as
//! the YAML says. The init container's command and args install the real iptables rules; the
//! sidecar runs with the container's env (the downward API's `resourceFieldRef` filled in as
//! the kubelet does), its volumes mounted at the manifest's paths (a private mount namespace)
//! from the Secrets and ConfigMaps the quick start creates, as the UID its securityContext
//! names; then the app's ports are served. A "kubelet" namespace sends each probe the YAML
//! declares to the Pod IP, as the kubelet does: the rewritten probes pass once the app is up,
//! fail before, and the original plaintext probe would have been refused. Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use docmesh_certs::ca::{CertificateAuthority, KeyAlgorithm};
use docmesh_certs::spiffe_id::TrustDomain;
use docmesh_tests::netns::sidecar::{init, Logs};
use docmesh_tests::netns::{Pod, Topology};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Whole cores of a CPU quantity, rounded up, as the downward API gives `limits.cpu` with
/// divisor 1.
fn cores(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<u64>().unwrap().div_ceil(1000),
        None => quantity.parse::<f64>().unwrap().ceil() as u64,
    }
}

/// The container's env as the kubelet sets it.
fn container_env(c: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        if let Some(v) = e.get("value") {
            out.push((name, v.as_str().unwrap().to_owned()));
            continue;
        }
        let field = &e["valueFrom"]["resourceFieldRef"];
        assert_eq!(
            field["resource"], "limits.cpu",
            "{name}: unsupported valueFrom"
        );
        assert_eq!(field["divisor"], "1", "{name}");
        assert_eq!(field["containerName"], c["name"], "{name}");
        let limit = c["resources"]["limits"]["cpu"].as_str().unwrap();
        out.push((name, cores(limit).to_string()));
    }
    out
}

/// What a volume holds, from the objects the quick start creates: the ConfigMap's
/// `proxy.toml`, the SVID Secret (issued here by a dev CA for the ServiceAccount's ID), the
/// JWT Secret's selected key.
fn volume_files(
    volume: &Value,
    docs: &[Value],
    ca: &CertificateAuthority,
    sa: &str,
) -> Vec<(String, String)> {
    if let Some(cm) = volume.get("configMap") {
        let name = cm["name"].as_str().unwrap();
        let sa_of_cm = name.strip_prefix("docmesh-").unwrap();
        let toml =
            std::fs::read_to_string(repo().join(format!("examples/onlyoffice/{sa_of_cm}.toml")))
                .unwrap();
        return vec![("proxy.toml".into(), toml)];
    }
    let secret = &volume["secret"];
    let name = secret["secretName"].as_str().unwrap();
    if name == format!("docmesh-svid-{sa}") {
        let id = format!("spiffe://onlyoffice.local/ns/onlyoffice/sa/{sa}")
            .parse()
            .unwrap();
        let svid = ca.issue_svid(&id, Duration::from_secs(3600)).unwrap();
        return vec![
            ("svid.pem".into(), svid.cert_chain_pem.clone()),
            ("svid.key".into(), svid.key_pem.clone()),
            ("bundle.pem".into(), ca.root_cert_pem().to_owned()),
        ];
    }
    let object = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("Secret {name} is not in the manifest"));
    secret["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|item| {
            let key = item["key"].as_str().unwrap();
            let value = object["stringData"][key].as_str().unwrap();
            (item["path"].as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

/// `GET url` from the kubelet's namespace: the HTTP status, or 0 when no HTTP answer came.
fn probe(kubelet: &Pod, url: &str) -> u16 {
    let args = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
        url,
    ];
    match kubelet.exec(&args) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docservice_pod_runs_as_its_manifest_says_and_the_kubelet_probes_pass() {
    let topo = Topology::new(&["docservice", "kubelet"])
        .unwrap_or_else(|e| panic!("cannot build the test topology: {e}"));
    let (pod, kubelet) = (topo.pod("docservice"), topo.pod("kubelet"));
    let pod_ip = pod.ipv4.to_string();
    let docs = documents(&repo().join("examples/kubernetes/onlyoffice-docs.injected.yaml"));
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "docservice")
        .unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let sa = spec["serviceAccountName"].as_str().unwrap();
    let inits = spec["initContainers"].as_sequence().unwrap();

    // 1. The init container: its command is docmesh-init, its args go to the real CLI.
    let init_c = &inits[0];
    assert!(strings(&init_c["command"])[0].ends_with("/docmesh-init"));
    let args = strings(&init_c["args"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    init(pod, &args);

    // 2. The native sidecar, with its env, mounts and user.
    let proxy_c = &inits[1];
    assert_eq!(proxy_c["restartPolicy"], "Always");
    assert!(strings(&proxy_c["command"])[0].ends_with("/docmesh-proxy"));
    let proxy_args = strings(&proxy_c["args"]);
    assert_eq!(proxy_args[..2], ["run".to_owned(), "--config".to_owned()]);
    let td: TrustDomain = "onlyoffice.local".parse().unwrap();
    let ca =
        CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))
            .unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut mounts = String::new();
    for (i, m) in proxy_c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .enumerate()
    {
        let vname = m["name"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vname)
            .unwrap();
        let dir = root.path().join(format!("vol{i}"));
        std::fs::create_dir(&dir).unwrap();
        for (file, text) in volume_files(volume, &docs, &ca, sa) {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let target = m["mountPath"].as_str().unwrap();
        mounts.push_str(&format!(
            "mkdir -p {target} && mount --bind {} {target} && ",
            dir.display()
        ));
    }
    let sc = &proxy_c["securityContext"];
    let (uid, gid) = (
        sc["runAsUser"].as_u64().unwrap(),
        sc["runAsGroup"].as_u64().unwrap(),
    );
    let env = container_env(proxy_c);
    let threads = env
        .iter()
        .find(|(k, _)| k == "TOKIO_WORKER_THREADS")
        .unwrap();
    assert_eq!(threads.1, "1", "limits.cpu 1 gives one worker thread");
    let bin = env!("CARGO_BIN_EXE_docmesh-netns-proxy");
    let log = root.path().join("proxy.log");
    let mut logs = Logs::default();
    logs.0.push(log.clone());
    // A private mount namespace with a tmpfs on /etc: the volumes appear at the manifest's
    // own paths, nothing on the host changes.
    // The cluster's DNS, as far as this Pod needs it: the Services its config names resolve
    // (to an address where nothing answers; only readiness is tested here).
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let services = "127.0.0.1 localhost\n10.77.0.99 integrator postgresql rabbitmq redis storage\n";
    std::fs::write(etc.join("hosts"), services).unwrap();
    std::fs::write(etc.join("resolv.conf"), "").unwrap();
    let etc = etc.display();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs docmesh /etc && cp -a {etc}/. /etc/ && \
         {mounts} exec setpriv --reuid {uid} --regid {gid} --clear-groups --inh-caps=-all \"$@\""
    );
    let mut argv: Vec<String> = vec![
        "unshare".into(),
        "--mount".into(),
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        "env".into(),
        "-i".into(),
    ];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push(bin.into());
    argv.push(proxy_args[2].clone());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    pod.spawn_logged(None, &argv, &log).unwrap();

    // 3. The kubelet probes the sidecar at the Pod IP, as its own probes say.
    let admin = |c: &Value, probe: &str| {
        let h = &c[probe]["httpGet"];
        format!(
            "http://{pod_ip}:{}{}",
            h["port"].as_u64().unwrap(),
            h["path"].as_str().unwrap()
        )
    };
    let ready = admin(proxy_c, "startupProbe");
    wait_for("the sidecar's startup probe passes", || {
        probe(kubelet, &ready) == 200
    });

    // 4. The app's probes, before the app is up: the sidecar performs them and they fail.
    let containers = spec["containers"].as_sequence().unwrap();
    let mut app_probes = Vec::new();
    for c in containers {
        for p in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if c.get(p).is_some() {
                assert_eq!(
                    c[p]["httpGet"]["port"], 15020,
                    "{p} of {:?} not rewritten",
                    c["name"]
                );
                app_probes.push(admin(c, p));
            }
        }
    }
    assert_eq!(app_probes.len(), 3, "{app_probes:?}");
    for url in &app_probes {
        assert_eq!(probe(kubelet, url), 503, "{url} before the app listens");
    }

    // 5. The app: each container's ports serve /index.html (as docs-proxy and docservice do).
    let www = root.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "<html>docs</html>").unwrap();
    std::fs::set_permissions(&www, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for c in containers {
        for port in c["ports"].as_sequence().unwrap() {
            let port = port["containerPort"].as_u64().unwrap().to_string();
            let dir = www.display().to_string();
            let serve = [
                "python3",
                "-m",
                "http.server",
                &port,
                "--bind",
                "0.0.0.0",
                "--directory",
                &dir,
            ];
            pod.spawn(None, &serve).unwrap();
        }
    }
    for url in &app_probes {
        wait_for(&format!("{url} passes"), || probe(kubelet, url) == 200);
    }

    // 6. The original probes, sent as the kubelet would without the rewrite, are refused by
    // the strict inbound: the rewrite is what makes the Pod ready.
    let originals: serde_json::Value = serde_json::from_str(
        deployment["spec"]["template"]["metadata"]["annotations"]["docmesh.io/original-probes"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for (key, original) in originals.as_object().unwrap() {
        let h = &original["httpGet"];
        let url = format!(
            "http://{pod_ip}:{}{}",
            h["port"],
            h["path"].as_str().unwrap()
        );
        assert_ne!(
            probe(kubelet, &url),
            200,
            "{key}: {url} reached the app in plaintext"
        );
    }
    drop(logs);
}
