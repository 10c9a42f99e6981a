//! The containers and volumes `inject` adds to a Pod spec, and how they are merged in so that
//! re-injecting replaces them in place instead of adding copies.

use serde_yaml_ng::{Mapping, Number, Value};

use super::{SvidSource, ADMIN_PORT};

/// Name of the init container that installs the iptables redirects.
pub const INIT_NAME: &str = "docmesh-init";
/// Name of the proxy's native sidecar (an init container with `restartPolicy: Always`).
pub const PROXY_NAME: &str = "docmesh-proxy";
/// Volume holding the proxy's configuration (a ConfigMap with `proxy.toml`).
pub const CONFIG_VOLUME: &str = "docmesh-config";
/// Volume holding the SVID (Secret) or the Workload API socket (CSI driver or hostPath).
pub const SVID_VOLUME: &str = "docmesh-svid";
/// Volume holding the JWT secret the proxy verifies (`docmesh.io/jwt-secret`).
pub const JWT_VOLUME: &str = "docmesh-jwt";
/// Where the JWT secret is mounted: the file `secret` in it, as the OnlyOffice profile's
/// `authz.jwt.secret_file` expects.
pub const JWT_DIR: &str = "/etc/docmesh/jwt";
/// Where the ConfigMap is mounted in the proxy container.
pub const CONFIG_DIR: &str = "/etc/docmesh/config";
/// Where a Secret SVID is mounted (`svid.pem`, `svid.key`, `bundle.pem`, as `docmesh-certs
/// issue` writes them).
pub const SVID_DIR: &str = "/etc/docmesh/svid";
/// Where the Workload API socket directory is mounted (CSI driver or SPIRE hostPath).
pub const SOCKET_DIR: &str = "/spiffe-workload-api";
/// Where the binaries live in the images (see `examples/docker/Dockerfile`).
const BIN_DIR: &str = "/usr/local/bin";

/// The proxy container's requests and limits (Kubernetes quantities).
#[derive(Debug, Clone)]
pub struct ProxyResources {
    /// `requests.cpu`.
    pub cpu_request: String,
    /// `limits.cpu`; `TOKIO_WORKER_THREADS` follows it (rounded up by the downward API).
    pub cpu_limit: String,
    /// `requests.memory`.
    pub memory_request: String,
    /// `limits.memory`.
    pub memory_limit: String,
}

/// Everything the containers of one Pod depend on, resolved from flags and annotations.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// Proxy image.
    pub proxy_image: String,
    /// Init image.
    pub init_image: String,
    /// `imagePullPolicy` of both containers, when set.
    pub pull_policy: Option<String>,
    /// `docmesh-init` arguments (`--flag=value`).
    pub init_args: Vec<String>,
    /// Extra `DOCMESH_*` variables for the proxy (listener addresses when not default).
    pub proxy_env: Vec<(String, String)>,
    /// UID and GID the proxy runs as.
    pub proxy_uid: u32,
    /// GID the proxy runs as, when one is configured.
    pub proxy_gid: Option<u32>,
    /// Where the SVID comes from.
    pub svid: SvidSource,
    /// Secret name (Secret source).
    pub secret: String,
    /// Host directory of the SPIRE agent socket (SPIRE source).
    pub spire_host_dir: String,
    /// File name of the Workload API socket in its directory.
    pub socket_name: String,
    /// ConfigMap holding `proxy.toml`.
    pub config_map: String,
    /// Secret name and key of the JWT secret, mounted as `JWT_DIR/secret`.
    pub jwt: Option<(String, String)>,
    /// The app probes the sidecar performs (`DOCMESH_APP_PROBES`, JSON), when any.
    pub app_probes: Option<String>,
    /// Requests and limits of the proxy container.
    pub resources: ProxyResources,
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn n(v: u64) -> Value {
    Value::Number(Number::from(v))
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn list(items: Vec<Value>) -> Value {
    Value::Sequence(items)
}

fn env(vars: &[(String, String)]) -> Value {
    let mut out: Vec<Value> = vars
        .iter()
        .map(|(k, v)| map(vec![("name", s(k)), ("value", s(v))]))
        .collect();
    // One tokio worker per core of the CPU limit: the downward API rounds the limit up to
    // whole cores with divisor 1 (e.g. 500m gives 1).
    out.push(map(vec![
        ("name", s("TOKIO_WORKER_THREADS")),
        (
            "valueFrom",
            map(vec![(
                "resourceFieldRef",
                map(vec![
                    ("containerName", s(PROXY_NAME)),
                    ("resource", s("limits.cpu")),
                    ("divisor", s("1")),
                ]),
            )]),
        ),
    ]));
    list(out)
}

/// `seccompProfile: RuntimeDefault`, as the `restricted` Pod Security Standard asks.
fn runtime_default_seccomp() -> Value {
    map(vec![("type", s("RuntimeDefault"))])
}

fn http_probe(path: &str, period: u64, failures: u64) -> Value {
    map(vec![
        (
            "httpGet",
            map(vec![("path", s(path)), ("port", n(u64::from(ADMIN_PORT)))]),
        ),
        ("periodSeconds", n(period)),
        ("timeoutSeconds", n(1)),
        ("failureThreshold", n(failures)),
    ])
}

impl PodPlan {
    /// The `docmesh-init` init container: root with NET_ADMIN and NET_RAW only (what
    /// iptables-restore needs), everything else dropped.
    pub fn init_container(&self) -> Value {
        let mut c = vec![("name", s(INIT_NAME)), ("image", s(&self.init_image))];
        if let Some(p) = &self.pull_policy {
            c.push(("imagePullPolicy", s(p)));
        }
        c.push(("command", list(vec![s(&format!("{BIN_DIR}/docmesh-init"))])));
        c.push(("args", list(self.init_args.iter().map(|a| s(a)).collect())));
        c.push((
            "securityContext",
            map(vec![
                ("runAsUser", n(0)),
                ("runAsGroup", n(0)),
                ("runAsNonRoot", Value::Bool(false)),
                ("privileged", Value::Bool(false)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("seccompProfile", runtime_default_seccomp()),
                (
                    "capabilities",
                    map(vec![
                        ("add", list(vec![s("NET_ADMIN"), s("NET_RAW")])),
                        ("drop", list(vec![s("ALL")])),
                    ]),
                ),
            ]),
        ));
        c.push((
            "resources",
            map(vec![
                (
                    "requests",
                    map(vec![("cpu", s("10m")), ("memory", s("16Mi"))]),
                ),
                (
                    "limits",
                    map(vec![("cpu", s("100m")), ("memory", s("64Mi"))]),
                ),
            ]),
        ));
        map(c)
    }

    /// The proxy as a native sidecar: it starts before the app's containers (its startup probe
    /// on `/ready` must pass first), keeps running beside them, and stops after them, so Jobs
    /// complete.
    pub fn proxy_container(&self) -> Value {
        let mut vars: Vec<(String, String)> = vec![(
            "DOCMESH_ADMIN__LISTEN".into(),
            format!("0.0.0.0:{ADMIN_PORT}"),
        )];
        vars.extend(self.proxy_env.iter().cloned());
        if let Some(probes) = &self.app_probes {
            vars.push(("DOCMESH_APP_PROBES".into(), probes.clone()));
        }
        let mut mounts = vec![map(vec![
            ("name", s(CONFIG_VOLUME)),
            ("mountPath", s(CONFIG_DIR)),
            ("readOnly", Value::Bool(true)),
        ])];
        match self.svid {
            SvidSource::Secret => {
                for (field, file) in [
                    ("CERT", "svid.pem"),
                    ("KEY", "svid.key"),
                    ("BUNDLE", "bundle.pem"),
                ] {
                    vars.push((
                        format!("DOCMESH_IDENTITY__{field}"),
                        format!("{SVID_DIR}/{file}"),
                    ));
                }
                vars.push(("DOCMESH_IDENTITY__SOURCE".into(), "files".into()));
                mounts.push(map(vec![
                    ("name", s(SVID_VOLUME)),
                    ("mountPath", s(SVID_DIR)),
                    ("readOnly", Value::Bool(true)),
                ]));
            }
            SvidSource::Csi | SvidSource::Spire => {
                vars.push(("DOCMESH_IDENTITY__SOURCE".into(), "workload-api".into()));
                vars.push((
                    "DOCMESH_IDENTITY__WORKLOAD_API_SOCKET".into(),
                    format!("unix://{SOCKET_DIR}/{}", self.socket_name),
                ));
                mounts.push(map(vec![
                    ("name", s(SVID_VOLUME)),
                    ("mountPath", s(SOCKET_DIR)),
                    ("readOnly", Value::Bool(true)),
                ]));
            }
        }
        if self.jwt.is_some() {
            mounts.push(map(vec![
                ("name", s(JWT_VOLUME)),
                ("mountPath", s(JWT_DIR)),
                ("readOnly", Value::Bool(true)),
            ]));
        }
        let mut security = vec![
            ("runAsUser", n(u64::from(self.proxy_uid))),
            ("runAsNonRoot", Value::Bool(true)),
            ("allowPrivilegeEscalation", Value::Bool(false)),
            ("readOnlyRootFilesystem", Value::Bool(true)),
            ("seccompProfile", runtime_default_seccomp()),
            ("capabilities", map(vec![("drop", list(vec![s("ALL")]))])),
        ];
        if let Some(gid) = self.proxy_gid {
            security.insert(1, ("runAsGroup", n(u64::from(gid))));
        }
        let mut c = vec![("name", s(PROXY_NAME)), ("image", s(&self.proxy_image))];
        if let Some(p) = &self.pull_policy {
            c.push(("imagePullPolicy", s(p)));
        }
        c.extend([
            ("restartPolicy", s("Always")),
            (
                "command",
                list(vec![s(&format!("{BIN_DIR}/docmesh-proxy"))]),
            ),
            (
                "args",
                list(vec![
                    s("run"),
                    s("--config"),
                    s(&format!("{CONFIG_DIR}/proxy.toml")),
                ]),
            ),
            ("env", env(&vars)),
            (
                "ports",
                list(vec![map(vec![
                    ("name", s("docmesh-admin")),
                    ("containerPort", n(u64::from(ADMIN_PORT))),
                    ("protocol", s("TCP")),
                ])]),
            ),
            // Up to 60 s for the first SVID and the listeners before the app may start.
            ("startupProbe", http_probe("/ready", 1, 60)),
            ("readinessProbe", http_probe("/ready", 5, 3)),
            ("livenessProbe", http_probe("/live", 10, 3)),
            ("securityContext", map(security)),
            (
                "resources",
                map(vec![
                    (
                        "requests",
                        map(vec![
                            ("cpu", s(&self.resources.cpu_request)),
                            ("memory", s(&self.resources.memory_request)),
                        ]),
                    ),
                    (
                        "limits",
                        map(vec![
                            ("cpu", s(&self.resources.cpu_limit)),
                            ("memory", s(&self.resources.memory_limit)),
                        ]),
                    ),
                ]),
            ),
            ("volumeMounts", list(mounts)),
        ]);
        map(c)
    }

    /// The volumes the proxy mounts.
    pub fn volumes(&self) -> Vec<Value> {
        let config = map(vec![
            ("name", s(CONFIG_VOLUME)),
            ("configMap", map(vec![("name", s(&self.config_map))])),
        ]);
        let svid = match self.svid {
            // 0444: the volume is mounted only into the proxy, which runs as a non-root UID
            // that does not own the files.
            SvidSource::Secret => map(vec![
                ("name", s(SVID_VOLUME)),
                (
                    "secret",
                    map(vec![
                        ("secretName", s(&self.secret)),
                        ("defaultMode", n(0o444)),
                    ]),
                ),
            ]),
            SvidSource::Csi => map(vec![
                ("name", s(SVID_VOLUME)),
                (
                    "csi",
                    map(vec![
                        ("driver", s("csi.spiffe.io")),
                        ("readOnly", Value::Bool(true)),
                    ]),
                ),
            ]),
            SvidSource::Spire => map(vec![
                ("name", s(SVID_VOLUME)),
                (
                    "hostPath",
                    map(vec![
                        ("path", s(&self.spire_host_dir)),
                        ("type", s("Directory")),
                    ]),
                ),
            ]),
        };
        let mut out = vec![config, svid];
        if let Some((secret, key)) = &self.jwt {
            out.push(map(vec![
                ("name", s(JWT_VOLUME)),
                (
                    "secret",
                    map(vec![
                        ("secretName", s(secret)),
                        (
                            "items",
                            list(vec![map(vec![("key", s(key)), ("path", s("secret"))])]),
                        ),
                        ("defaultMode", n(0o444)),
                    ]),
                ),
            ]));
        }
        out
    }

    /// Merges the containers and volumes into a Pod spec: docmesh's init containers first (so
    /// the app's own init containers already run through the mesh), earlier docmesh containers
    /// and volumes replaced, everything else kept as it was.
    pub fn apply(&self, spec: &mut Mapping) {
        let mut inits = take_list(spec, "initContainers");
        inits.retain(|c| !matches!(name(c), Some(INIT_NAME | PROXY_NAME)));
        inits.insert(0, self.proxy_container());
        inits.insert(0, self.init_container());
        spec.insert(s("initContainers"), Value::Sequence(inits));
        let mut volumes = take_list(spec, "volumes");
        let new = self.volumes();
        // A docmesh volume this plan no longer uses (e.g. the JWT secret) goes away.
        volumes.retain(|v| match name(v) {
            Some(n @ (CONFIG_VOLUME | SVID_VOLUME | JWT_VOLUME)) => {
                new.iter().any(|x| name(x) == Some(n))
            }
            _ => true,
        });
        for v in new {
            let vname = name(&v).map(str::to_owned);
            match volumes.iter_mut().find(|x| name(x) == vname.as_deref()) {
                Some(slot) => *slot = v,
                None => volumes.push(v),
            }
        }
        spec.insert(s("volumes"), Value::Sequence(volumes));
    }
}

/// `name` of a container or volume.
pub fn name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// The items of the sequence at `key` (empty when missing or not a sequence); the key stays
/// where it is, so inserting the result back keeps the key order.
fn take_list(spec: &mut Mapping, key: &str) -> Vec<Value> {
    match spec.get_mut(key) {
        Some(Value::Sequence(seq)) => std::mem::take(seq),
        _ => Vec::new(),
    }
}
