//! The docker-compose examples (`examples/compose/`): each file is valid for `docker-compose
//! config` (Debian's docker-compose; no Docker engine is needed), every proxy config it mounts
//! passes `docmesh-proxy check` (the same loader), and the topology keeps its promises: a
//! sidecar per service sharing the service's network namespace, whose holder runs docmesh-init
//! with NET_ADMIN on every start (transparent variant only), apps started after a healthy
//! sidecar, a certs service that keeps renewing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

mod deploy_support;

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/compose")
}

/// `docker-compose -f FILE config`, parsed.
fn compose_config(file: &str) -> Value {
    let out = Command::new("docker-compose")
        .args(["-f", file, "config"])
        .current_dir(compose_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}): install Debian's docker-compose package \
                 (tests/scripts/install-deps.sh does)"
            )
        });
    assert!(
        out.status.success(),
        "docker-compose -f {file} config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::from_slice(&out.stdout).unwrap()
}

fn services(v: &Value) -> Vec<(String, Value)> {
    v["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(source, target)` of a service's volumes in `config`'s long or short form.
fn mounts(svc: &Value) -> Vec<(String, String)> {
    let Some(vols) = svc.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    vols.iter()
        .map(|v| match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                let src = parts.next().unwrap_or("").to_owned();
                let dst = parts.next().unwrap_or("").to_owned();
                (src, dst)
            }
            _ => (
                v["source"].as_str().unwrap_or("").to_owned(),
                v["target"].as_str().unwrap_or("").to_owned(),
            ),
        })
        .collect()
}

fn depends(svc: &Value, on: &str) -> Option<String> {
    let d = svc.get("depends_on")?;
    match d {
        Value::Sequence(s) => s.iter().any(|x| x.as_str() == Some(on)).then(String::new),
        Value::Mapping(m) => m
            .get(on)
            .map(|c| c["condition"].as_str().unwrap_or("").to_owned()),
        _ => None,
    }
}

/// Checks what both variants share; returns the mounted proxy configs.
fn check_topology(file: &str, transparent: bool) -> Vec<PathBuf> {
    let cfg = compose_config(file);
    let all = services(&cfg);
    let get = |name: &str| -> &Value {
        &all.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{file}: no service {name}"))
            .1
    };
    let mut configs = Vec::new();
    for svc in deploy_support::MESH {
        let proxy = get(&format!("{svc}-proxy"));
        assert_eq!(
            proxy["network_mode"],
            format!("service:{svc}"),
            "{file}: {svc}-proxy"
        );
        assert_eq!(proxy["user"], "1337:1337", "{file}: {svc}-proxy");
        let test = strings(&proxy["healthcheck"]["test"]);
        assert!(
            test.iter().any(|t| t.ends_with("docmesh-proxy")) && test.contains(&"await".into()),
            "{file}: {svc}-proxy health check {test:?}"
        );
        // The certs service stays up to renew; it is healthy once every SVID is issued.
        assert_eq!(
            depends(proxy, "certs").as_deref(),
            Some("service_healthy"),
            "{file}: {svc}-proxy must wait for its SVID"
        );
        let config = mounts(proxy)
            .into_iter()
            .find(|(_, dst)| dst == "/etc/docmesh/config/proxy.toml")
            .unwrap_or_else(|| panic!("{file}: {svc}-proxy mounts no config"));
        configs.push(PathBuf::from(config.0));
        // Every app container of the service joins the namespace and starts after the sidecar
        // (directly, or after an app that itself waits for it).
        let apps: Vec<&(String, Value)> = all
            .iter()
            .filter(|(n, v)| {
                v["network_mode"] == format!("service:{svc}")
                    && !n.ends_with("-proxy")
                    && !n.ends_with("-init")
            })
            .collect();
        assert!(!apps.is_empty(), "{file}: {svc} has no app");
        for (name, app) in apps {
            let waits = depends(app, &format!("{svc}-proxy")).as_deref() == Some("service_healthy")
                || all.iter().any(|(other, _)| {
                    other != name
                        && other.starts_with(svc)
                        && depends(app, other).as_deref() == Some("service_healthy")
                        && depends(get(other), &format!("{svc}-proxy")).as_deref()
                            == Some("service_healthy")
                });
            assert!(
                waits,
                "{file}: {name} does not wait for a healthy {svc}-proxy"
            );
        }
        // No separate init container: the namespace holder applies the redirects on every
        // start (a re-created namespace never runs without them) before it reports healthy.
        assert!(
            !all.iter().any(|(n, _)| n == &format!("{svc}-init")),
            "{file}: {svc}-init would not run again when {svc} restarts"
        );
        let netns = get(svc);
        let entry = strings(&netns["entrypoint"]).join(" ");
        if transparent {
            assert!(
                entry.contains("docmesh-init;") && entry.contains("sleep infinity"),
                "{file}: {svc} must run docmesh-init before holding the namespace: {entry}"
            );
            assert!(strings(&netns["cap_add"]).contains(&"NET_ADMIN".into()));
            assert_eq!(
                depends(proxy, svc).as_deref(),
                Some("service_healthy"),
                "{file}: {svc}-proxy must start after the redirects are installed"
            );
        } else {
            assert!(
                !entry.contains("docmesh-init"),
                "{file}: explicit mode runs no docmesh-init ({svc})"
            );
        }
    }
    if !transparent {
        for (name, svc) in &all {
            assert!(
                !strings(&svc["cap_add"]).contains(&"NET_ADMIN".into()),
                "{file}: {name} asks for NET_ADMIN in explicit mode"
            );
        }
    }
    // The certs service creates the CA, issues from the profile's SVID list and keeps renewing.
    let certs = get("certs");
    let script = strings(&certs["command"]).join("\n");
    assert!(script.contains("docmesh-certs init --trust-domain onlyoffice.local --out /certs/ca"));
    assert!(script.contains("docmesh-certs issue --ca /certs/ca --from /etc/docmesh/svids.list"));
    assert!(script.contains("docmesh-certs renew --ca /certs/ca --dir /certs"));
    assert_eq!(
        certs["restart"], "unless-stopped",
        "{file}: certs must keep renewing"
    );
    // PostgreSQL starts with OnlyOffice's schema.
    let pg = get("postgresql-app");
    assert!(
        mounts(pg)
            .iter()
            .any(|(_, dst)| dst == "/docker-entrypoint-initdb.d"),
        "{file}: postgresql-app gets no schema"
    );
    for (src, _) in mounts(certs) {
        if src.starts_with('/') {
            assert!(Path::new(&src).exists(), "{file}: {src} does not exist");
        }
    }
    configs
}

fn check_configs(configs: &[PathBuf]) {
    for path in configs {
        if let Err(e) = deploy_support::check(path) {
            panic!("{} does not pass docmesh-proxy check:\n{e}", path.display());
        }
    }
}

#[test]
fn transparent_compose_is_valid_and_ordered() {
    let configs = check_topology("docker-compose.yml", true);
    assert_eq!(configs.len(), deploy_support::MESH.len());
    assert!(configs
        .iter()
        .all(|p| p.to_string_lossy().contains("examples/onlyoffice/")));
    check_configs(&configs);
}

#[test]
fn explicit_compose_is_valid_without_net_admin() {
    let configs = check_topology("docker-compose.explicit.yml", false);
    assert_eq!(configs.len(), deploy_support::MESH.len());
    assert!(configs
        .iter()
        .all(|p| p.to_string_lossy().contains("compose/explicit/")));
    check_configs(&configs);
}

#[test]
fn a_broken_compose_file_is_reported() {
    // docker-compose config really validates: an unknown depends_on condition fails.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(compose_dir().join("docker-compose.yml"))
        .unwrap()
        .replacen("service_completed_successfully", "service_finished", 1);
    std::fs::write(dir.path().join("docker-compose.yml"), text).unwrap();
    std::fs::write(dir.path().join(".env"), "JWT_SECRET=x\n").unwrap();
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(dir.path())
        .output()
        .expect("docker-compose (Debian's docker-compose package) must be installed");
    assert!(!out.status.success(), "a bad condition was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service_finished"), "{err}");
}
