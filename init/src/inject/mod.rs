//! `docmesh-init inject`: adds docmesh to Kubernetes manifests.
//!
//! Reads Kubernetes YAML (one or many documents; Pod, Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, ReplicationController, Job, CronJob, and `List`s of them) and adds to every Pod
//! template:
//! - the `docmesh-init` init container (NET_ADMIN, installs the iptables redirects);
//! - the proxy as a native sidecar (an init container with `restartPolicy: Always`), running as
//!   UID 1337, with startup/readiness probes on the admin port's `/ready` and a liveness probe
//!   on `/live`;
//! - its config (a ConfigMap with `proxy.toml`) and its SVID: a Secret (`svid.pem`, `svid.key`,
//!   `bundle.pem`), the SPIFFE CSI driver (`csi.spiffe.io`) or a SPIRE agent socket (hostPath).
//!
//! Re-injecting replaces docmesh's containers and volumes in place; when nothing changes the
//! document is written back byte for byte, as is every document that holds no Pod template,
//! that opts out (`docmesh.io/inject: "false"`) or that uses `hostNetwork`.
//! Annotations (on the workload or its Pod template; the template wins) adjust each workload:
//! see [`annotations`]. The flags of `docmesh-init` (`--exclude-outbound-cidrs`, ...) apply to
//! every workload; annotation lists are added to them.

mod documents;
pub mod probes;
mod sidecar;
mod workload;

#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_yaml_ng::Value;

use crate::args::RuleArgs;
use crate::backend::BackendChoice;
use crate::install::Ipv6Mode;
use crate::options::{RawOptions, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT};

pub use sidecar::{INIT_NAME, PROXY_NAME};

/// The proxy's admin port (`/live`, `/ready`, `/metrics`); probes go there, so it is always
/// excluded from inbound capture.
pub const ADMIN_PORT: u16 = 15020;

/// The annotations `inject` reads.
pub mod annotations {
    /// `"false"` leaves the workload alone.
    pub const INJECT: &str = "docmesh.io/inject";
    /// `secret`, `csi` or `spire` (overrides `--svid-source`).
    pub const SVID_SOURCE: &str = "docmesh.io/svid-source";
    /// Secret holding the SVID (default `docmesh-svid-<serviceAccountName>`).
    pub const SVID_SECRET: &str = "docmesh.io/svid-secret";
    /// ConfigMap holding `proxy.toml` (default `--config-map`, else
    /// `docmesh-<serviceAccountName>`).
    pub const CONFIG_MAP: &str = "docmesh.io/config-map";
    /// Secret with the JWT secret the proxy verifies: `name` or `name/key` (default key
    /// `JWT_SECRET`, as in OnlyOffice's `jwt` Secret); mounted as `/etc/docmesh/jwt/secret`.
    pub const JWT_SECRET: &str = "docmesh.io/jwt-secret";
    /// Inbound ports to capture (`*`, a list, or empty); replaces `--inbound-ports`.
    pub const INBOUND_PORTS: &str = "docmesh.io/inbound-ports";
    /// Inbound ports never captured; added to `--exclude-inbound-ports` and the admin port.
    pub const EXCLUDE_INBOUND_PORTS: &str = "docmesh.io/exclude-inbound-ports";
    /// Outbound ports never captured; added to `--exclude-outbound-ports`.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "docmesh.io/exclude-outbound-ports";
    /// Outbound networks never captured; added to `--exclude-outbound-cidrs`.
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "docmesh.io/exclude-outbound-cidrs";
    /// Only these outbound networks are captured; added to `--include-outbound-cidrs`.
    pub const INCLUDE_OUTBOUND_CIDRS: &str = "docmesh.io/include-outbound-cidrs";
    /// `"false"` keeps the app's probes as they are (they are then refused on captured
    /// ports); by default they are rewritten to the sidecar's `/app-health/...`.
    pub const REWRITE_APP_PROBES: &str = "docmesh.io/rewrite-app-probes";
    /// CPU request of the proxy (default `50m`).
    pub const PROXY_CPU_REQUEST: &str = "docmesh.io/proxy-cpu-request";
    /// CPU limit of the proxy (default `1`); its tokio worker threads follow it, rounded up.
    pub const PROXY_CPU_LIMIT: &str = "docmesh.io/proxy-cpu-limit";
    /// Memory request of the proxy (default `64Mi`).
    pub const PROXY_MEMORY_REQUEST: &str = "docmesh.io/proxy-memory-request";
    /// Memory limit of the proxy (default `256Mi`).
    pub const PROXY_MEMORY_LIMIT: &str = "docmesh.io/proxy-memory-limit";
    /// Set by `inject`: the app's original probes, JSON (see [`super::probes`]).
    pub const ORIGINAL_PROBES: &str = super::probes::ORIGINAL_PROBES;
}

/// Where the proxy's SVID comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SvidSource {
    /// A Kubernetes Secret with `svid.pem`, `svid.key`, `bundle.pem` (e.g. from
    /// `docmesh-certs issue`), reloaded when the Secret changes.
    Secret,
    /// The SPIFFE CSI driver (`csi.spiffe.io`) mounting the Workload API socket.
    Csi,
    /// A SPIRE agent socket directory on the node (hostPath).
    Spire,
}

impl SvidSource {
    fn parse(s: &str) -> Option<SvidSource> {
        match s.trim() {
            "secret" => Some(SvidSource::Secret),
            "csi" => Some(SvidSource::Csi),
            "spire" => Some(SvidSource::Spire),
            _ => None,
        }
    }
}

/// Why injection failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input could not be read or the output not written.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("document {doc} (counting from 1) is not valid YAML: {message}")]
    Yaml {
        /// Index of the document, from 1.
        doc: usize,
        /// The parser's message (with line and column inside that document).
        message: String,
    },
    /// The YAML writer failed.
    #[error("document {doc}: cannot write YAML: {message}")]
    Write {
        /// Index of the document, from 1.
        doc: usize,
        /// The writer's message.
        message: String,
    },
    /// An annotation has a value `inject` cannot use.
    #[error("{workload}: annotation {annotation}={value:?}: {reason}")]
    Annotation {
        /// `Kind/name`.
        workload: String,
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// `--kubernetes-version` is not `MAJOR.MINOR` or is older than native sidecars allow.
    #[error("--kubernetes-version {value:?}: {reason}")]
    KubernetesVersion {
        /// The flag's value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The capture options (flags plus annotations) are invalid for a workload.
    #[error("{workload}: {source} (from the flags and the docmesh.io/* annotations)")]
    Options {
        /// `Kind/name`.
        workload: String,
        /// The init options' own error.
        source: crate::options::OptionsError,
    },
}

/// `inject` options that are not capture rules.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// Manifest file to read (`-` for stdin).
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// Write the result here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Proxy image.
    #[arg(long, env = "DOCMESH_INJECT_PROXY_IMAGE", default_value = concat!("docmesh/proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// Init image (docmesh-init with iptables).
    #[arg(long, env = "DOCMESH_INJECT_INIT_IMAGE", default_value = concat!("docmesh/init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,
    /// `imagePullPolicy` of docmesh's containers (unset: the cluster's default).
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// Where the SVID comes from (annotation `docmesh.io/svid-source` overrides).
    #[arg(long, value_enum, default_value_t = SvidSource::Secret)]
    pub svid_source: SvidSource,
    /// ConfigMap with `proxy.toml` for every workload (annotation `docmesh.io/config-map`
    /// overrides; default `docmesh-<serviceAccountName>`).
    #[arg(long)]
    pub config_map: Option<String>,
    /// Node directory holding the SPIRE agent socket (`--svid-source spire`).
    #[arg(long, default_value = "/run/spire/agent-sockets")]
    pub spire_socket_dir: String,
    /// File name of the Workload API socket inside the CSI or SPIRE directory.
    #[arg(long, default_value = "spire-agent.sock")]
    pub workload_api_socket: String,
    /// Kubernetes version of the target cluster (`MAJOR.MINOR`). The proxy runs as a native
    /// sidecar (an init container with `restartPolicy: Always`): on by default from 1.29,
    /// behind the `SidecarContainers` feature gate in 1.28, unknown before.
    #[arg(
        long,
        env = "DOCMESH_INJECT_KUBERNETES_VERSION",
        default_value = "1.29"
    )]
    pub kubernetes_version: String,
}

/// The first Kubernetes minor version with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Checks `--kubernetes-version`: `Ok(Some(warning))` for 1.28 (feature gate needed), an error
/// for older versions, whose API server drops or rejects `restartPolicy` on init containers.
pub fn check_kubernetes_version(value: &str) -> Result<Option<String>, InjectError> {
    let bad = |reason: &str| InjectError::KubernetesVersion {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let v = value.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        return Err(bad("expected MAJOR.MINOR, e.g. 1.29"));
    };
    let minor = minor.trim_end_matches('+');
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Err(bad("expected MAJOR.MINOR, e.g. 1.29"));
    };
    match (major, minor) {
        (1, m) if m >= NATIVE_SIDECAR_MINOR => Ok(None),
        (1, 28) => Ok(Some(
            "Kubernetes 1.28: native sidecars need the SidecarContainers feature gate on the API server and every kubelet; without it Pods stay in Init:1/2".to_owned(),
        )),
        (1, _) => Err(bad(
            "native sidecars (init containers with restartPolicy: Always) need Kubernetes 1.29 or later (1.28 with the SidecarContainers feature gate); older API servers drop the field and Pods hang in Init",
        )),
        (m, _) if m > 1 => Ok(None),
        _ => Err(bad("expected a Kubernetes version such as 1.29")),
    }
}

/// What `inject` did with each document, for the operator (written to stderr by the CLI).
#[derive(Debug, Default)]
pub struct Report {
    /// One line per workload: injected, unchanged, or skipped and why.
    pub lines: Vec<String>,
    /// Things that will probably not work as the manifest stands.
    pub warnings: Vec<String>,
}

/// Injects every Pod template in `text`; returns the new text and the report.
pub fn inject(
    text: &str,
    args: &InjectArgs,
    rules: &RuleArgs,
) -> Result<(String, Report), InjectError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut report = Report::default();
    if let Some(w) = check_kubernetes_version(&args.kubernetes_version)? {
        report.warnings.push(w);
    }
    for (i, doc) in documents::split(text).iter().enumerate() {
        let parsed: Value =
            serde_yaml_ng::from_str(&doc.parse_text()).map_err(|e| InjectError::Yaml {
                doc: i + 1,
                message: e.to_string(),
            })?;
        let mut value = parsed.clone();
        inject_value(&mut value, args, rules, &mut report)?;
        if value == parsed {
            out.push_str(&doc.original());
        } else {
            if doc.marker.is_some() || !out.is_empty() {
                out.push_str("---\n");
            }
            let yaml = serde_yaml_ng::to_string(&value).map_err(|e| InjectError::Write {
                doc: i + 1,
                message: e.to_string(),
            })?;
            out.push_str(&yaml);
        }
    }
    Ok((out, report))
}

/// Injects one object (a Pod, a workload or a `List`) in place, as `inject` does each
/// document; the admission webhook calls this.
pub fn inject_object(
    value: &mut Value,
    args: &InjectArgs,
    rules: &RuleArgs,
) -> Result<Report, InjectError> {
    let mut report = Report::default();
    if let Some(w) = check_kubernetes_version(&args.kubernetes_version)? {
        report.warnings.push(w);
    }
    inject_value(value, args, rules, &mut report)?;
    Ok(report)
}

/// Injects one parsed document (recursing into `List` items).
fn inject_value(
    value: &mut Value,
    args: &InjectArgs,
    rules: &RuleArgs,
    report: &mut Report,
) -> Result<(), InjectError> {
    let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(());
    };
    if kind == "List" || kind.ends_with("List") {
        if let Some(Value::Sequence(items)) = value.get_mut("items") {
            for item in items {
                inject_value(item, args, rules, report)?;
            }
        }
        return Ok(());
    }
    let Some(path) = workload::template_path(&kind) else {
        return Ok(());
    };
    let workload = format!("{kind}/{}", workload::name_of(value));
    let root = value.clone();
    let Some(template) = workload::walk_mut(value, path) else {
        report
            .warnings
            .push(format!("{workload}: no Pod template found; left unchanged"));
        return Ok(());
    };
    let annotations = workload::annotations(&root, template);
    if lookup(&annotations, annotations::INJECT).is_some_and(|v| v.trim() == "false") {
        report.lines.push(format!(
            "{workload}: skipped ({}: false)",
            annotations::INJECT
        ));
        return Ok(());
    }
    let Some(spec) = template.get_mut("spec").and_then(Value::as_mapping_mut) else {
        report
            .warnings
            .push(format!("{workload}: no Pod spec found; left unchanged"));
        return Ok(());
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        report.warnings.push(format!(
            "{workload}: uses hostNetwork; iptables rules would change the node's network, so it was left unchanged"
        ));
        return Ok(());
    }
    let sa = workload::get_str(spec, "serviceAccountName")
        .or_else(|| workload::get_str(spec, "serviceAccount"))
        .unwrap_or("default")
        .to_owned();
    let (mut pod, options) = plan(&workload, &sa, args, rules, &annotations)?;
    let before = template.clone();
    let rewrite = match lookup(&annotations, annotations::REWRITE_APP_PROBES).map(str::trim) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(InjectError::Annotation {
                workload,
                annotation: annotations::REWRITE_APP_PROBES,
                value: v.to_owned(),
                reason: "expected `true` or `false`".to_owned(),
            })
        }
    };
    let previous = lookup(&annotations, annotations::ORIGINAL_PROBES).map(str::to_owned);
    let Some(spec) = template.get_mut("spec").and_then(Value::as_mapping_mut) else {
        return Ok(());
    };
    let rewritten = probes::rewrite(&workload, spec, &options, previous.as_deref(), rewrite);
    report.warnings.extend(rewritten.warnings.iter().cloned());
    pod.app_probes = rewritten.json();
    pod.apply(spec);
    workload::set_annotation(
        template,
        annotations::ORIGINAL_PROBES,
        pod.app_probes.clone(),
    );
    report.lines.push(if *template == before {
        format!("{workload}: already injected, unchanged")
    } else {
        format!("{workload}: injected")
    });
    Ok(())
}

/// Builds the Pod plan from the flags and annotations; also returns the validated capture
/// options (for the probe warnings).
fn plan(
    workload: &str,
    sa: &str,
    args: &InjectArgs,
    rules: &RuleArgs,
    annotations: &[(String, String)],
) -> Result<(sidecar::PodPlan, crate::options::Options), InjectError> {
    let ann = |key: &str| lookup(annotations, key);
    let joined = |flag: &str, key: &str| {
        let mut items: Vec<String> = Vec::new();
        for part in [Some(flag), ann(key)].into_iter().flatten() {
            for item in part.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                if !items.iter().any(|x| x == item) {
                    items.push(item.to_owned());
                }
            }
        }
        items.join(",")
    };
    let admin = ADMIN_PORT.to_string();
    let raw = RawOptions {
        inbound_port: rules.inbound_port,
        outbound_port: rules.outbound_port,
        inbound_ports: ann(annotations::INBOUND_PORTS)
            .unwrap_or(&rules.inbound_ports)
            .trim()
            .to_owned(),
        exclude_inbound_ports: joined(
            &format!("{admin},{}", rules.exclude_inbound_ports),
            annotations::EXCLUDE_INBOUND_PORTS,
        ),
        exclude_outbound_ports: joined(
            &rules.exclude_outbound_ports,
            annotations::EXCLUDE_OUTBOUND_PORTS,
        ),
        exclude_outbound_cidrs: joined(
            &rules.exclude_outbound_cidrs,
            annotations::EXCLUDE_OUTBOUND_CIDRS,
        ),
        include_outbound_cidrs: joined(
            &rules.include_outbound_cidrs,
            annotations::INCLUDE_OUTBOUND_CIDRS,
        ),
        proxy_uid: rules.proxy_uid.clone(),
        proxy_gid: rules.proxy_gid.clone(),
    };
    let options = raw.parse().map_err(|source| InjectError::Options {
        workload: workload.to_owned(),
        source,
    })?;
    let Some(&proxy_uid) = options.proxy_uids.first() else {
        return Err(InjectError::Options {
            workload: workload.to_owned(),
            source: crate::options::OptionsError::NoProxyIdentity,
        });
    };
    let mut init_args = Vec::new();
    let mut proxy_env = Vec::new();
    if raw.inbound_port != DEFAULT_INBOUND_PORT {
        init_args.push(format!("--inbound-port={}", raw.inbound_port));
        proxy_env.push((
            "DOCMESH_INBOUND__LISTEN".to_owned(),
            format!("0.0.0.0:{}", raw.inbound_port),
        ));
    }
    if raw.outbound_port != DEFAULT_OUTBOUND_PORT {
        init_args.push(format!("--outbound-port={}", raw.outbound_port));
        proxy_env.push((
            "DOCMESH_OUTBOUND__LISTEN".to_owned(),
            format!("127.0.0.1:{}", raw.outbound_port),
        ));
    }
    if raw.inbound_ports != "*" {
        init_args.push(format!("--inbound-ports={}", raw.inbound_ports));
    }
    init_args.push(format!(
        "--exclude-inbound-ports={}",
        raw.exclude_inbound_ports
    ));
    for (flag, v) in [
        ("exclude-outbound-ports", &raw.exclude_outbound_ports),
        ("exclude-outbound-cidrs", &raw.exclude_outbound_cidrs),
        ("include-outbound-cidrs", &raw.include_outbound_cidrs),
    ] {
        if !v.is_empty() {
            init_args.push(format!("--{flag}={v}"));
        }
    }
    for (flag, v, default) in [
        (
            "backend",
            rules.backend.to_possible_value(),
            BackendChoice::default().to_possible_value(),
        ),
        (
            "ipv6",
            rules.ipv6.to_possible_value(),
            Ipv6Mode::default().to_possible_value(),
        ),
    ] {
        if let Some(v) = v.filter(|v| Some(v.get_name()) != default.as_ref().map(|d| d.get_name()))
        {
            init_args.push(format!("--{flag}={}", v.get_name()));
        }
    }
    for (flag, v) in [("proxy-uid", &raw.proxy_uid), ("proxy-gid", &raw.proxy_gid)] {
        if v.trim() != "1337" {
            init_args.push(format!("--{flag}={v}"));
        }
    }
    let svid = match ann(annotations::SVID_SOURCE) {
        None => args.svid_source,
        Some(v) => SvidSource::parse(v).ok_or_else(|| InjectError::Annotation {
            workload: workload.to_owned(),
            annotation: annotations::SVID_SOURCE,
            value: v.to_owned(),
            reason: "expected `secret`, `csi` or `spire`".to_owned(),
        })?,
    };
    let name_ann = |key: &'static str, default: String| -> Result<String, InjectError> {
        match ann(key) {
            None => Ok(default),
            Some(v) if is_dns_name(v.trim()) => Ok(v.trim().to_owned()),
            Some(v) => Err(InjectError::Annotation {
                workload: workload.to_owned(),
                annotation: key,
                value: v.to_owned(),
                reason: "not a Kubernetes object name (lower-case letters, digits, `-` and `.`, at most 253 characters)".to_owned(),
            }),
        }
    };
    let jwt = match ann(annotations::JWT_SECRET).map(str::trim) {
        None | Some("") => None,
        Some(v) => {
            let (secret, key) = v.split_once('/').unwrap_or((v, "JWT_SECRET"));
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !is_dns_name(secret) || !key_ok {
                return Err(InjectError::Annotation {
                    workload: workload.to_owned(),
                    annotation: annotations::JWT_SECRET,
                    value: v.to_owned(),
                    reason: "expected `secret-name` or `secret-name/key`".to_owned(),
                });
            }
            Some((secret.to_owned(), key.to_owned()))
        }
    };
    let plan = sidecar::PodPlan {
        jwt,
        proxy_image: args.proxy_image.clone(),
        init_image: args.init_image.clone(),
        pull_policy: args.image_pull_policy.clone(),
        init_args,
        proxy_env,
        proxy_uid,
        proxy_gid: options.proxy_gids.first().copied(),
        svid,
        secret: name_ann(annotations::SVID_SECRET, format!("docmesh-svid-{sa}"))?,
        spire_host_dir: args.spire_socket_dir.clone(),
        socket_name: args.workload_api_socket.clone(),
        config_map: name_ann(
            annotations::CONFIG_MAP,
            args.config_map
                .clone()
                .unwrap_or_else(|| format!("docmesh-{sa}")),
        )?,
        app_probes: None,
        resources: sidecar::ProxyResources {
            cpu_request: quantity(workload, &ann, annotations::PROXY_CPU_REQUEST, "50m")?,
            cpu_limit: quantity(workload, &ann, annotations::PROXY_CPU_LIMIT, "1")?,
            memory_request: quantity(workload, &ann, annotations::PROXY_MEMORY_REQUEST, "64Mi")?,
            memory_limit: quantity(workload, &ann, annotations::PROXY_MEMORY_LIMIT, "256Mi")?,
        },
    };
    Ok((plan, options))
}

/// A resource quantity annotation (`500m`, `1`, `128Mi`, ...) or its default.
fn quantity<'a>(
    workload: &str,
    ann: &dyn Fn(&str) -> Option<&'a str>,
    key: &'static str,
    default: &str,
) -> Result<String, InjectError> {
    let Some(v) = ann(key) else {
        return Ok(default.to_owned());
    };
    let t = v.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &t[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.split('.').count() <= 2
        && digits
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if number_ok && suffix_ok && digits.bytes().any(|b| b != b'0' && b != b'.') {
        Ok(t.to_owned())
    } else {
        Err(InjectError::Annotation {
            workload: workload.to_owned(),
            annotation: key,
            value: v.to_owned(),
            reason: "not a positive Kubernetes quantity such as 500m, 2 or 128Mi".to_owned(),
        })
    }
}

/// The value of annotation `key`.
fn lookup<'a>(annotations: &'a [(String, String)], key: &str) -> Option<&'a str> {
    annotations
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A DNS-1123 subdomain, as Kubernetes requires for Secret and ConfigMap names.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Runs `docmesh-init inject`: reads the file (or stdin), writes the result to `--output` or
/// `out`, and the report to stderr.
pub fn run(args: &InjectArgs, rules: &RuleArgs, out: &mut dyn Write) -> Result<(), InjectError> {
    let input = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| InjectError::Io {
                what: "cannot read the manifest from stdin".to_owned(),
                source,
            })?;
        s
    } else {
        std::fs::read_to_string(&args.file).map_err(|source| InjectError::Io {
            what: format!("cannot read {}", args.file.display()),
            source,
        })?
    };
    let (text, report) = inject(&input, args, rules)?;
    for line in &report.lines {
        eprintln!("docmesh-init inject: {line}");
    }
    for w in &report.warnings {
        eprintln!("docmesh-init inject: warning: {w}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|source| InjectError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        }),
        None => out
            .write_all(text.as_bytes())
            .map_err(|source| InjectError::Io {
                what: "cannot write to stdout".to_owned(),
                source,
            }),
    }
}
