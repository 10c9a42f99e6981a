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
use docmesh_tests::netns::sidecar::{self, init, Logs};
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

/// The Pod spec of workload `kind/name` in `docs`.
fn pod_spec<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let workload = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in the manifest"));
    &workload["spec"]["template"]["spec"]
}

/// Runs the injected Pod `spec` in `pod` as the kubelet would: the init container's command
/// and args, then the native sidecar with its env, its volumes at their mount paths (a private
/// mount namespace with a tmpfs on /etc, `hosts` as the cluster DNS) and its user. Returns the
/// sidecar's container and its process id.
fn run_injected_pod<'a>(
    pod: &Pod,
    spec: &'a Value,
    docs: &[Value],
    ca: &CertificateAuthority,
    root: &Path,
    hosts: &str,
    logs: &mut Logs,
) -> (&'a Value, u32) {
    let sa = spec["serviceAccountName"].as_str().unwrap();
    let inits = spec["initContainers"].as_sequence().unwrap();
    let root = root.join(&pod.name);
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // The init container: its command is docmesh-init, its args go to the real CLI.
    let init_c = &inits[0];
    assert!(strings(&init_c["command"])[0].ends_with("/docmesh-init"));
    let args = strings(&init_c["args"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    init(pod, &args);

    // The native sidecar, with its env, mounts and user.
    let proxy_c = &inits[1];
    assert_eq!(proxy_c["restartPolicy"], "Always");
    assert!(strings(&proxy_c["command"])[0].ends_with("/docmesh-proxy"));
    let proxy_args = strings(&proxy_c["args"]);
    assert_eq!(proxy_args[..2], ["run".to_owned(), "--config".to_owned()]);
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
        let dir = root.join(format!("vol{i}"));
        std::fs::create_dir(&dir).unwrap();
        for (file, text) in volume_files(volume, docs, ca, sa) {
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
    let log = root.join("proxy.log");
    logs.0.push(log.clone());
    let etc = root.join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{hosts}")).unwrap();
    std::fs::write(etc.join("resolv.conf"), "").unwrap();
    let script = format!(
        "{} && {mounts} exec setpriv --reuid {uid} --regid {gid} --clear-groups --inh-caps=-all \"$@\"",
        private_etc(&etc)
    );
    let mut argv: Vec<String> = ["unshare", "--mount", "sh", "-c", &script, "sh", "env", "-i"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push(bin.into());
    argv.push(proxy_args[2].clone());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let pid = pod.spawn_logged(None, &argv, &log).unwrap();
    (proxy_c, pid)
}

/// Shell commands that give the current (new) mount namespace a tmpfs on /etc holding the
/// files of `etc` (hosts, resolv.conf): the Pod's own view of the cluster DNS.
fn private_etc(etc: &Path) -> String {
    format!(
        "mount --make-rprivate / && mount -t tmpfs docmesh /etc && cp -a {}/. /etc/",
        etc.display()
    )
}

/// Whether process `pid` has ended (gone or a zombie waiting to be reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The app: every container port serves `index.html` (as docs-proxy, docservice and the
/// example do at their roots).
fn serve_app(pod: &Pod, spec: &Value, root: &Path) {
    let www = root.join(format!("www-{}", pod.name));
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "<html>docs</html>").unwrap();
    std::fs::set_permissions(&www, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for c in spec["containers"].as_sequence().unwrap() {
        for port in c["ports"].as_sequence().into_iter().flatten() {
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
            let log = root.join(format!("app-{}-{port}.log", pod.name));
            pod.spawn_logged(None, &serve, &log).unwrap();
        }
    }
}

/// `http://IP:PORT/PATH` of a probe's httpGet.
fn probe_url(ip: &str, c: &Value, probe: &str) -> String {
    let h = &c[probe]["httpGet"];
    format!(
        "http://{ip}:{}{}",
        h["port"].as_u64().unwrap(),
        h["path"].as_str().unwrap()
    )
}

fn dev_ca() -> CertificateAuthority {
    let td: TrustDomain = "onlyoffice.local".parse().unwrap();
    CertificateAuthority::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))
        .unwrap()
}

fn topology(names: &[&str]) -> Topology {
    Topology::new(names).unwrap_or_else(|e| panic!("cannot build the test topology: {e}"))
}

const SERVICES: &str = "10.77.0.99 integrator postgresql rabbitmq redis storage documentserver\n";

#[test]
fn docservice_pod_runs_as_its_manifest_says_and_the_kubelet_probes_pass() {
    let topo = topology(&["docservice", "kubelet"]);
    let (pod, kubelet) = (topo.pod("docservice"), topo.pod("kubelet"));
    let pod_ip = pod.ipv4.to_string();
    let docs = documents(&repo().join("examples/kubernetes/onlyoffice-docs.injected.yaml"));
    let spec = pod_spec(&docs, "Deployment", "docservice");
    let root = tempfile::tempdir().unwrap();
    let mut logs = Logs::default();
    let (proxy_c, _) = run_injected_pod(
        pod,
        spec,
        &docs,
        &dev_ca(),
        root.path(),
        SERVICES,
        &mut logs,
    );

    // The kubelet probes the sidecar at the Pod IP, as its own probes say.
    let ready = probe_url(&pod_ip, proxy_c, "startupProbe");
    wait_for("the sidecar's startup probe passes", || {
        probe(kubelet, &ready) == 200
    });

    // The app's probes, before the app is up: the sidecar performs them and they fail.
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
                app_probes.push(probe_url(&pod_ip, c, p));
            }
        }
    }
    assert_eq!(app_probes.len(), 3, "{app_probes:?}");
    for url in &app_probes {
        assert_eq!(probe(kubelet, url), 503, "{url} before the app listens");
    }
    serve_app(pod, spec, root.path());
    for url in &app_probes {
        wait_for(&format!("{url} passes"), || probe(kubelet, url) == 200);
    }

    // The original probes, sent as the kubelet would without the rewrite, are refused by
    // the strict inbound: the rewrite is what makes the Pod ready.
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "docservice")
        .unwrap();
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
}

/// The example (the chart's integrator) calls the document server through both sidecars:
/// mTLS with the SVIDs of their own ServiceAccounts, authorized by the document server's
/// policy, which allows only the integrator's ID on this path.
#[test]
fn two_injected_pods_talk_mtls_with_their_own_spiffe_ids() {
    let topo = topology(&["docservice", "example"]);
    let (ds, ex) = (topo.pod("docservice"), topo.pod("example"));
    let docs = documents(&repo().join("examples/kubernetes/onlyoffice-docs.injected.yaml"));
    let ds_spec = pod_spec(&docs, "Deployment", "docservice");
    let ex_spec = pod_spec(&docs, "StatefulSet", "example");
    let root = tempfile::tempdir().unwrap();
    let mut logs = Logs::default();
    let ca = dev_ca();
    let hosts = format!(
        "{} documentserver\n{} integrator\n10.77.0.99 postgresql rabbitmq redis storage\n",
        ds.ipv4, ex.ipv4
    );
    let (ds_proxy, _) = run_injected_pod(ds, ds_spec, &docs, &ca, root.path(), &hosts, &mut logs);
    let (ex_proxy, _) = run_injected_pod(ex, ex_spec, &docs, &ca, root.path(), &hosts, &mut logs);
    serve_app(ds, ds_spec, root.path());
    serve_app(ex, ex_spec, root.path());
    for (pod, c, app_port) in [(ds, ds_proxy, 8888), (ex, ex_proxy, 3000)] {
        let ready = probe_url("127.0.0.1", c, "readinessProbe");
        wait_for(&format!("{} ready", pod.name), || probe(pod, &ready) == 200);
        let app = format!("http://127.0.0.1:{app_port}/index.html");
        wait_for(&format!("{} app listening", pod.name), || {
            probe(pod, &app) == 200
        });
    }
    for (pod, sa) in [(ds, "documentserver"), (ex, "integrator")] {
        let certs = pod
            .stdout(&["curl", "-sS", "http://127.0.0.1:15020/certs"])
            .unwrap();
        let id = format!("spiffe://onlyoffice.local/ns/onlyoffice/sa/{sa}");
        assert!(certs.contains(&id), "{}: {certs}", pod.name);
    }
    let url = format!("http://{}:8888/index.html", ds.ipv4);
    let (status, text, _) = sidecar::curl(ex, &[&url]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("<html>docs</html>"), "{text}");
    // The document server's sidecar saw the integrator's SPIFFE ID on the inbound side.
    let log = root.path().join("docservice/proxy.log");
    wait_for(
        "the document server's inbound access log names the integrator",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("\"direction\":\"inbound\"")
                        && l.contains(
                            "\"source\":\"spiffe://onlyoffice.local/ns/onlyoffice/sa/integrator\"",
                        )
                        && l.contains("\"path\":\"/index.html\"")
                        && l.contains("\"status\":200")
                })
        },
    );
}

/// A Job of `jobs.injected.yaml`: its sidecar starts first, the job's own command (run as
/// the manifest says, with the Pod's DNS view) reaches the document server through the mesh
/// and exits 0; then the kubelet stops the sidecar with SIGTERM, as it does for native
/// sidecars once the main containers are done, and the sidecar ends, so the Job completes.
#[test]
fn a_jobs_app_exits_and_its_sidecar_ends() {
    let topo = topology(&["docservice", "job"]);
    let (ds, job) = (topo.pod("docservice"), topo.pod("job"));
    let ds_docs = documents(&repo().join("examples/kubernetes/onlyoffice-docs.injected.yaml"));
    let job_docs = documents(&repo().join("examples/kubernetes/jobs.injected.yaml"));
    let ds_spec = pod_spec(&ds_docs, "Deployment", "docservice");
    let job_spec = pod_spec(&job_docs, "Job", "healthcheck-once");
    let root = tempfile::tempdir().unwrap();
    let mut logs = Logs::default();
    let ca = dev_ca();
    let hosts = format!(
        "{} documentserver\n10.77.0.99 integrator postgresql rabbitmq redis storage\n",
        ds.ipv4
    );
    let (ds_proxy, _) =
        run_injected_pod(ds, ds_spec, &ds_docs, &ca, root.path(), &hosts, &mut logs);
    serve_app(ds, ds_spec, root.path());
    std::fs::write(root.path().join("www-docservice/healthcheck"), "true").unwrap();
    let (job_proxy, sidecar_pid) = run_injected_pod(
        job,
        job_spec,
        &job_docs,
        &ca,
        root.path(),
        &hosts,
        &mut logs,
    );
    for (pod, c) in [(ds, ds_proxy), (job, job_proxy)] {
        let ready = probe_url("127.0.0.1", c, "startupProbe");
        wait_for(&format!("{} sidecar started", pod.name), || {
            probe(pod, &ready) == 200
        });
    }
    let app_ready = "http://127.0.0.1:8888/healthcheck";
    wait_for("the document server's app listening", || {
        probe(ds, app_ready) == 200
    });

    // The job's container: its command as written, as an app user, with the Pod's DNS.
    let c = &job_spec["containers"][0];
    let command = strings(&c["command"]);
    assert!(c.get("args").is_none());
    let etc = root.path().join("job/etc");
    let script = format!(
        "{} && exec setpriv --reuid 1000 --regid 1000 --clear-groups \"$@\"",
        private_etc(&etc)
    );
    let mut argv = vec!["unshare", "--mount", "sh", "-c", &script, "sh"];
    argv.extend(command.iter().map(String::as_str));
    let out = job.exec(&argv);
    assert!(out.is_ok(), "the job's command failed: {out:?}");

    // The kubelet ends the sidecar; it drains and exits.
    assert!(
        !exited(sidecar_pid),
        "the sidecar ended before the job's container"
    );
    job.exec(&["kill", "-TERM", &sidecar_pid.to_string()])
        .unwrap();
    let grace = job_spec["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(grace);
    while !exited(sidecar_pid) {
        assert!(
            Instant::now() < deadline,
            "the sidecar outlived terminationGracePeriodSeconds ({grace} s)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
